"""The engine under hostile and careless use: exit while generating, model files
rewritten while they load, FIFOs, symlinks out of the model's folder, non-finite
weights and scores, requests larger than the memory left.

What could crash, hang or abort runs in a subprocess with a timeout, so that a
regression fails the test instead of taking the suite down with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pali_engine
from pali_engine import Engine, ModelFileError, _native, default_model_path

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "shapes.png")


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter, outside the source tree (so the installed package is used)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())


def rewritten_model(tmp_path: Path, name: str, change, dtype=np.float32) -> str:
    """A copy of the bundled model, weights stored as ``dtype``, with ``change(arrays by name)`` applied."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(default_model_path())
    tensors = {t.name: t for t in model.graph.initializer}
    arrays = {n: numpy_helper.to_array(t).astype(dtype) for n, t in tensors.items()}
    change(arrays)
    for n, t in tensors.items():
        t.CopyFrom(numpy_helper.from_array(arrays[n], n))
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def engine():
    return Engine.load()


# ---------------------------------------------------------------- exit


EXIT_SCRIPTS = {
    "break out of a stream as the last statement": """
        from pali_engine import Engine
        engine = Engine.load()
        for piece in engine.stream({image!r}, "caption en", max_new_tokens=64):
            break
    """,
    "a daemon thread inside generate() at exit": """
        import threading, time
        from pali_engine import Engine
        engine = Engine.load()
        def work():
            while True:
                engine.generate({image!r}, "caption en", num_beams=4, max_new_tokens=64)
        threading.Thread(target=work, daemon=True).start()
        time.sleep(0.2)
    """,
    "a daemon thread streaming at exit": """
        import threading, time
        from pali_engine import Engine
        engine = Engine.load()
        def work():
            while True:
                for piece in engine.stream({image!r}, "caption en", max_new_tokens=64):
                    pass
        threading.Thread(target=work, daemon=True).start()
        time.sleep(0.2)
    """,
    "a daemon thread tokenizing at exit": """
        import threading, time
        from pali_engine import Engine
        engine = Engine.load()
        def work():
            while True:
                engine.tokenizer.decode(engine.tokenizer.encode("caption en " * 50))
        threading.Thread(target=work, daemon=True).start()
        time.sleep(0.2)
    """,
    "a daemon thread on the onnxruntime backend at exit": """
        import threading, time
        from pali_engine import Engine
        engine = Engine.load(backend="onnxruntime")
        def work():
            while True:
                engine.generate({image!r}, "caption en", max_new_tokens=8)
        threading.Thread(target=work, daemon=True).start()
        time.sleep(0.5)
    """,
    "a daemon thread loading a model at exit": """
        import threading, time
        from pali_engine import Engine
        def work():
            while True:
                Engine.load(dtype="int8")
        threading.Thread(target=work, daemon=True).start()
        time.sleep(0.2)
    """,
}


@pytest.mark.parametrize("case", sorted(EXIT_SCRIPTS))
def test_exit_while_the_engine_works_is_clean(case):
    # Each of these aborted (exit 134, "terminate called without an active
    # exception") in most runs before; several runs catch the race.
    for attempt in range(4):
        done = run_python(EXIT_SCRIPTS[case].format(image=EXAMPLE))
        assert done.returncode == 0, f"run {attempt}: exit {done.returncode}\n{done.stderr[-2000:]}"
        assert "terminate" not in done.stderr


def _engine_threads() -> int:
    return sum(1 for t in threading.enumerate() if t is not threading.main_thread() and t.daemon)


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_a_stream_left_early_stops_its_search(backend):
    pytest.importorskip("onnxruntime")
    engine = Engine.load(backend=backend)
    before = _engine_threads()
    seen = []
    start = time.perf_counter()
    for piece in engine.stream(EXAMPLE, "caption en", max_new_tokens=200, min_new_tokens=200):
        seen.append(piece)
        break
    # The worker has been told to stop and joined: nothing runs on behind the consumer.
    assert _engine_threads() == before
    full = engine.generate(EXAMPLE, "caption en", max_new_tokens=200, min_new_tokens=200)
    assert len(full.tokens) == 200
    assert seen and full.text.startswith(seen[0])
    assert time.perf_counter() - start < 60


def test_a_stream_dropped_without_closing_stops_its_search(engine):
    before = _engine_threads()
    pieces = engine.stream(EXAMPLE, "caption en", max_new_tokens=200, min_new_tokens=200)
    next(pieces)
    del pieces
    assert _engine_threads() == before


def test_on_token_returning_false_stops_the_numpy_search():
    from pali_engine import generation

    options = generation.parse_options({"max_new_tokens": 10}, {"max_new_tokens": 10})
    vocab = 7

    def step(seqs):
        scores = np.zeros((seqs.shape[0], vocab))
        scores[:, 3] = 1.0
        return scores

    calls = []

    def on_token(row, token):
        calls.append(token)
        return len(calls) < 3

    [[hyp]] = generation.greedy(step, 1, options, start_id=0, eos_id=1, pad_id=0, on_token=on_token)
    assert hyp.tokens == [3, 3, 3]
    assert len(calls) == 3


# ---------------------------------------------------------------- files changing under the reader


def test_a_file_truncated_after_mapping_is_an_error_not_sigbus(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(Path(default_model_path()).read_bytes())
    done = run_python(f"""
        import os
        import numpy as np
        from pali_engine import ModelFileError, _native
        path = {str(model)!r}
        f = _native._core.OnnxFile(path)
        os.truncate(path, os.path.getsize(path) // 3)
        copies = [np.array(f.tensor(name)) for name in f.tensor_names]  # reads pages truncated away
        try:
            f.check_unchanged()
        except ModelFileError as error:
            print("refused:", error)
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "changed while it was being read" in done.stdout


def test_a_model_truncated_while_its_weights_load_is_refused(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(Path(default_model_path()).read_bytes())
    done = run_python(f"""
        import os
        from pali_engine import ModelFileError, _native, model_spec
        path = {str(model)!r}
        config, _ = model_spec.check_model_file(path)
        f = _native._core.OnnxFile(path)
        os.truncate(path, os.path.getsize(path) // 2)
        try:
            _native._core.load_model(f, "f32", 1, config)
        except ModelFileError as error:
            print("refused:", error)
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "changed while it was being read" in done.stdout


def test_loading_while_cp_rewrites_the_file_never_crashes(tmp_path):
    source = default_model_path()
    model = tmp_path / "m.onnx"
    model.write_bytes(Path(source).read_bytes())
    done = run_python(f"""
        import shutil, threading
        from pali_engine import Engine, ModelFileError, load_tensor
        source, path = {source!r}, {str(model)!r}
        stop = threading.Event()
        def rewrite():
            while not stop.is_set():
                shutil.copyfile(source, path)   # truncates, then writes: what cp does
        writer = threading.Thread(target=rewrite)
        writer.start()
        outcomes = {{"loaded": 0, "refused": 0}}
        try:
            for _ in range(60):
                try:
                    Engine.load(path)
                    load_tensor(path, "shared.weight")
                    outcomes["loaded"] += 1
                except ModelFileError:
                    outcomes["refused"] += 1
        finally:
            stop.set()
            writer.join()
        print(outcomes)
    """, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-2000:]}"
    assert "refused" in done.stdout


# ---------------------------------------------------------------- FIFOs


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_without_blocking(fifo):
    done = run_python(f"""
        import pali_engine
        for call in (pali_engine.inspect, lambda p: pali_engine.load_tensor(p, "w"), pali_engine.Engine.load):
            try:
                call({str(fifo)!r})
            except pali_engine.ModelFileError as error:
                print("refused:", error)
    """, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("refused:") == 3


def test_external_data_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    from onnx_fixtures import write_model

    model = tmp_path / "m.onnx"
    write_model(model, {"w": np.ones((32, 32), np.float32)}, external=True)
    data = tmp_path / "m.onnx.data"
    data.unlink()
    os.mkfifo(data)
    done = run_python(f"""
        import pali_engine
        try:
            pali_engine.inspect({str(model)!r})
        except pali_engine.ModelFileError as error:
            print("refused:", error)
    """, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "not a regular file" in done.stdout


# ---------------------------------------------------------------- symlinks


def _external_model(folder: Path, data_name: str) -> Path:
    """A model whose one tensor lies in external data named ``data_name``."""
    import onnx
    from onnx import helper, numpy_helper

    tensor = numpy_helper.from_array(np.arange(6, dtype=np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=data_name)
    tensor.external_data.add(key="length", value="24")
    graph = helper.make_graph([], "weights", [], [], initializer=[tensor])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(np.arange(6, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pw").symlink_to(secret)
    model = _external_model(folder, "pw")
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        pali_engine.load_tensor(model, "w")


def test_external_data_through_a_symlinked_directory_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    model = _external_model(folder, "sub/data")
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        pali_engine.inspect(model)


def test_a_symlinked_model_may_take_its_data_beside_the_file_it_points_to(tmp_path):
    # The layout of Hugging Face's cache: snapshot/ holds symlinks into blobs/.
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "data-blob").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    model_blob = _external_model(blobs, "data").rename(blobs / "model-blob")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "m.onnx").symlink_to(model_blob)
    (snapshot / "data").symlink_to(blobs / "data-blob")
    np.testing.assert_array_equal(pali_engine.load_tensor(snapshot / "m.onnx", "w"), np.arange(6, dtype=np.float32))


# ---------------------------------------------------------------- non-finite weights and scores


@pytest.mark.parametrize("storage", [np.float32, np.float16])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("tensor", ["shared.weight", "vision.blocks.0.attn.q.weight", "encoder.final_norm.weight"])
def test_non_finite_weights_are_refused_at_load(tmp_path, tensor, value, storage):
    def spoil(arrays):
        arrays[tensor].reshape(-1)[arrays[tensor].size // 2] = value

    path = rewritten_model(tmp_path, "bad.onnx", spoil, storage)
    for dtype in ("float32", "int8"):
        with pytest.raises(ModelFileError, match=rf"{tensor}.*non-finite") as caught:
            Engine.load(path, dtype=dtype)
        assert path in str(caught.value)


def test_logits_that_overflow_are_refused_not_decoded(tmp_path):
    # Finite weights whose product overflows float32: the head gives +-inf logits.
    def blow_up(arrays):
        arrays["decoder.final_norm.weight"][:] = 3e38

    engine = Engine.load(rewritten_model(tmp_path, "overflow.onnx", blow_up))
    for options in ({}, {"num_beams": 3}, {"do_sample": True, "seed": 1}):
        with pytest.raises(RuntimeError, match="not finite"):
            engine.generate(EXAMPLE, "caption en", **options)
    assert Engine.load().generate(EXAMPLE, "caption en").text == "a blue circle and a red star"


@pytest.mark.parametrize("temperature", [1e-38, 5e-39])
def test_a_temperature_that_overflows_the_scores_is_refused(engine, temperature):
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(EXAMPLE, "caption en", do_sample=True, temperature=temperature, seed=0)
    assert engine.generate(EXAMPLE, "caption en").text == "a blue circle and a red star"


def test_a_small_but_safe_temperature_samples_the_greedy_answer(engine):
    sampled = engine.generate(EXAMPLE, "caption en", do_sample=True, temperature=1e-3, seed=0)
    assert sampled.text == engine.generate(EXAMPLE, "caption en").text


# ---------------------------------------------------------------- memory guards


def test_available_memory_is_what_the_machine_has_left():
    core = _native._core
    available = core.available_memory_bytes()
    with open("/proc/meminfo") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    assert 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available <= fields["MemAvailable"] * 1.25 + (1 << 30)


def _cache_bytes_per_token(config) -> int:
    return 4 * 2 * config["num_heads"] * config["d_kv"] * config["decoder_layers"]


def test_caches_larger_than_the_available_memory_are_refused(engine):
    available = _native._core.available_memory_bytes()
    per_token = _cache_bytes_per_token(engine.config)
    tokens = int(available * 1.05 / per_token) + 1
    with pytest.raises(MemoryError, match="available"):
        engine.generate(EXAMPLE, "caption en", max_new_tokens=tokens, min_new_tokens=tokens)
    assert engine.generate(EXAMPLE, "caption en").text == "a blue circle and a red star"


def test_caches_that_fit_in_the_available_memory_are_not_refused(engine):
    # Just under the guard: a short answer allocates only what it touches.
    available = _native._core.available_memory_bytes()
    per_token = _cache_bytes_per_token(engine.config)
    tokens = max(1, int(available * 0.02 / per_token))
    result = engine.generate(EXAMPLE, "caption en", max_new_tokens=tokens)
    assert result.text == "a blue circle and a red star"


def test_beam_search_ranks_candidates_with_64_bit_indices():
    values, indices = _native._core.ops.topk(np.arange(10, dtype=np.float32)[None], 3)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, [[9, 8, 7]])

"""The benchmark harness (its --quick path on the tiny model, with whatever peers are installed),
the mapping of the text model onto transformers' T5, and the full-size PaliGemma benchmark on a tiny
PaliGemma 2 checkpoint."""

from __future__ import annotations

import glob
import json
import os
import re
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export_fixtures import tiny_model  # noqa: E402
from paligemma_fixtures import build_checkpoint, tokenizer_path  # noqa: E402,F401 (a fixture)

from pali_engine.export import hf_t5  # noqa: E402


def _native_engine_available() -> bool:
    try:
        from pali_engine import _native

        _native.core_for("cpu")
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------
# the harness

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from pali_engine.benchmarks import harness

    tmp = tmp_path_factory.mktemp("bench")
    out_dir = tmp / "out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = harness.main(["--quick", "--sizes", "tiny", "--new-tokens", "8", "--repeats", "2",
                           "--peers", "engine,pytorch,transformers,onnxruntime,ctranslate2",
                           "--work-dir", str(tmp / "work"), "--out-dir", str(out_dir)])
    files = sorted(glob.glob(str(out_dir / "cpu-*.json")))
    return rc, buf.getvalue(), files, out_dir


def test_quick_run_prints_a_table_and_writes_json(quick_run):
    rc, text, files, out_dir = quick_run
    assert rc == 0
    assert "| peer | vision ms | encoder ms | TTFT ms | ms/step | tokens/s | peak RSS MB" in text
    assert "| floor |" in text
    assert len(files) == 1
    result = json.load(open(files[0]))
    for key in ("format", "date", "machine", "packages", "threads", "floors_measured", "sizes", "table_markdown"):
        assert key in result, key
    assert result["floors_measured"]["read_bandwidth_gb_s"] > 0
    assert result["floors_measured"]["sgemm_gflop_s"] > 0
    size = result["sizes"][0]
    assert size["size"] == "tiny"
    case = size["cases"]["b1-greedy"]
    assert case["batch"] == 1 and case["beams"] == 1 and case["new_tokens"] == 8
    assert case["failed"] == {}, case["failed"]
    assert case["floor"]["step_ms"]["f32"] > 0
    # every peer either ran or is reported as skipped with a reason
    names = set(case["peers"]) | set(size["skipped"])
    for expected in ("engine f32", "engine int8", "pytorch", "transformers", "onnxruntime",
                     "ctranslate2 f32", "ctranslate2 int8"):
        assert expected in names, expected
    for why in size["skipped"].values():
        assert why
    assert "pytorch" in case["peers"]
    for name, row in case["peers"].items():
        assert name in text
        for metric in ("ttft_ms", "step_ms", "total_ms", "tokens_per_s"):
            s = row[metric]
            assert s["min"] <= s["median"] <= s["max"], (name, metric)
            assert s["n"] == 2
        assert row["steps"] == 8
        assert row["agreement"]["rows"] == 1


def test_quick_run_peers_agree_with_pytorch(quick_run):
    _, _, files, _ = quick_run
    size = json.load(open(files[0]))["sizes"][0]
    peers = size["cases"]["b1-greedy"]["peers"]
    for name in ("engine f32", "onnxruntime", "transformers", "ctranslate2 f32"):
        if name in peers:
            assert peers[name]["agreement"]["rows_equal"] == 1, name
    if _native_engine_available():
        assert "engine f32" in peers
    checks = size.get("checks", {})
    if "transformers" in peers:
        assert checks["transformers"]["max_abs_diff"] < 1e-4
    if "ctranslate2 f32" in peers:
        assert checks["ctranslate2 f32"]["max_abs_diff"] < 1e-4  # no stray output scale


def test_quick_run_pairs_rounds_with_the_engine(quick_run):
    _, text, files, _ = quick_run
    case = json.load(open(files[0]))["sizes"][0]["cases"]["b1-greedy"]
    if "engine f32" not in case["peers"]:
        pytest.skip("the native engine is not built")
    pairs = case["paired"]["step_ms"]
    assert "pytorch" in pairs and "engine f32" not in pairs
    for q in pairs.values():
        assert q["n"] == 2 and 0 <= q["reference_faster"] <= 2 and q["median"] > 0
    assert "ms/step, round by round, peer / engine f32" in text


def test_median_interval_is_the_binomial_order_statistics():
    from pali_engine.benchmarks.harness import median_interval, paired

    assert median_interval([5.0] * 5) is None  # 2 * 0.5**5 > 0.05: no 95% interval from 5 values
    rng = np.random.default_rng()
    for n, k in ((6, 1), (9, 2), (20, 6), (50, 18)):  # k: 1-based rank of the lower bound
        xs = rng.permutation(np.arange(n, dtype=float))
        q = median_interval(list(xs))
        assert (q["low"], q["high"]) == (k - 1, n - k), n
        assert q["median"] == np.median(xs) and 0.95 <= q["confidence"] < 0.99
    runs = {"engine f32": [{"step_ms": 2.0}, {"step_ms": 4.0}],
            "peer": [{"step_ms": 3.0}, {"step_ms": 2.0}],
            "lost a run": [{"step_ms": 3.0}],
            "no metric": [{"step_ms": None}, {"step_ms": None}]}
    assert paired(runs, "engine f32", "step_ms") == {"peer": {"median": 1.0, "n": 2, "reference_faster": 1}}


def test_quick_run_plot(quick_run):
    pytest.importorskip("matplotlib")
    _, _, _, out_dir = quick_run
    pngs = glob.glob(str(out_dir / "cpu-*.png"))
    assert len(pngs) == 1 and os.path.getsize(pngs[0]) > 1000


def test_quick_runs_the_fast_peers_unless_told(monkeypatch, tmp_path):
    from pali_engine.benchmarks import harness

    chosen = []

    def stop_after_choosing(args):
        chosen.append(args.peers)
        raise ValueError("stop here")

    monkeypatch.setattr(harness, "select_peers", stop_after_choosing)
    assert harness.main(["--quick", "--work-dir", str(tmp_path)]) == 2
    assert harness.main(["--quick", "--peers", "ctranslate2", "--work-dir", str(tmp_path)]) == 2
    assert harness.main(["--sizes", "tiny", "--work-dir", str(tmp_path)]) == 2
    assert chosen == ["engine,pytorch,onnxruntime", "ctranslate2", None]


def test_bad_arguments_fail_cleanly(tmp_path, capsys):
    from pali_engine.benchmarks import harness

    assert harness.main(["--quick", "--sizes", "huge", "--work-dir", str(tmp_path)]) == 2
    assert harness.main(["--quick", "--peers", "nonsense", "--work-dir", str(tmp_path)]) == 2
    assert "unknown" in capsys.readouterr().err


def test_parameter_counts_match_the_model():
    from pali_engine.benchmarks import models

    model = tiny_model()
    counts = models.parameter_counts(model.config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # a decode step reads: the decoder without the cross-attention k/v, the final norm, the head
    dec = sum(p.numel() for n, p in model.named_parameters()
              if n.startswith("decoder.") and "relative_attention_bias" not in n
              and ".cross_attn.k." not in n and ".cross_attn.v." not in n)
    D = model.config.d_model
    assert counts["decode_step"] == dec + model.lm_head.weight.numel() + D


def test_prompt_of_exact_length():
    from pali_engine.benchmarks import models
    from pali_engine.tokenizer import Tokenizer

    tok = Tokenizer(models.fallback_tokenizer_bytes(32128))
    text = models.make_prompt(tok, 20)
    assert len(tok.encode(text)) == 20


# --------------------------------------------------------------------------
# the HF T5 mapping

def _text_names(model):
    return [n for n in model.state_dict() if hf_t5.is_text_parameter(n)]


def test_name_mapping_round_trips():
    model = tiny_model()
    names = _text_names(model)
    hf_names = [hf_t5.ours_to_hf_name(n) for n in names]
    assert len(set(hf_names)) == len(names)
    assert [hf_t5.hf_to_ours_name(n) for n in hf_names] == names
    with pytest.raises(KeyError):
        hf_t5.ours_to_hf_name("vision.blocks.0.attn.q.weight")
    with pytest.raises(KeyError):  # T5 v1.0's ungated FFN has no counterpart
        hf_t5.hf_to_ours_name("encoder.block.0.layer.1.DenseReluDense.wi.weight")
    assert hf_t5.hf_to_ours_name("decoder.embed_tokens.weight") is None


@pytest.mark.parametrize("tied", [False, True])
def test_hf_t5_logits_equal_ours(tied):
    pytest.importorskip("transformers")
    model = tiny_model(tie_word_embeddings=tied)
    hf = hf_t5.build_hf_t5(model.config, model.state_dict())
    # the head is what the config says, whatever transformers does by default
    assert (hf.lm_head.weight.data_ptr() == hf.shared.weight.data_ptr()) == tied
    assert hf.config.tie_word_embeddings == tied
    assert getattr(hf.config, "scale_decoder_outputs", tied) == tied
    g = torch.Generator().manual_seed(0)
    B, M = 2, 9
    x = torch.randn(B, M, model.config.d_model, generator=g)
    mask = torch.ones(B, M, dtype=torch.long)
    mask[1, 6:] = 0
    dec = torch.randint(3, model.config.vocab_size, (B, 6), generator=g)
    dec[:, 0] = model.config.decoder_start_token_id
    with torch.no_grad():
        ours = model.decode(dec, model.encoder(x, mask), mask)
        theirs = hf(inputs_embeds=x, attention_mask=mask, decoder_input_ids=dec).logits
    assert float((ours - theirs).abs().max()) < 1e-4
    # and back: HF's state_dict under our names equals ours
    back = hf_t5.hf_state_dict_to_text(hf.state_dict())
    sd = {k: v for k, v in model.state_dict().items() if hf_t5.is_text_parameter(k)}
    if tied:  # our unused lm_head comes back as the shared embedding
        sd["lm_head.weight"] = sd["shared.weight"]
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_hf_config_fields_round_trip():
    pytest.importorskip("transformers")
    model = tiny_model(feed_forward_proj="gated-silu")
    fields = hf_t5.pali_text_fields_from_hf(hf_t5.hf_config_from_pali(model.config))
    for k, v in fields.items():
        assert getattr(model.config, k) == v, k


def test_build_hf_t5_rejects_misshapen_weights():
    pytest.importorskip("transformers")
    model = tiny_model()
    sd = dict(model.state_dict())
    sd["decoder.blocks.0.ffn.wo.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="wo"):
        hf_t5.build_hf_t5(model.config, sd)


# --------------------------------------------------------------------------
# another build as a peer (--baseline): the worker protocol on a stub package, then a real run

STUB_FILES = {
    "__init__.py": '__version__ = "stub"\nfrom .engine import Engine\n',
    "_core.py": "",
    "generation.py": (
        "import types\n\n\n"
        "def parse_options(options, config):\n"
        "    return types.SimpleNamespace(**options)\n"),
    "native_backend.py": (
        "import os\n"
        "import types\n\n\n"
        "class NativeBackend:\n"
        "    def __init__(self, path, *, dtype='float32', threads=None):\n"
        "        if dtype == 'broken':\n"
        "            raise ValueError('the stub refuses this dtype')\n"
        "        self.config = {'eos_token_id': 1}\n\n"
        "    def _search(self, pixel_values, input_ids, attention_mask, options, on_token):\n"
        "        print('noise on stdout that must not reach the pipe')\n"
        "        hyps = [[types.SimpleNamespace(tokens=list(row) + [options.num_beams], score=float(px.sum()))]\n"
        "                for row, px in zip(input_ids.tolist(), pixel_values)]\n"
        "        return hyps, {'vision_ms': 1.0, 'encoder_ms': 2.0, 'first_token_ms': 3.0, 'decode_ms': 10.0,\n"
        "                      'steps': options.max_new_tokens}\n"),
    "engine.py": (
        "import types\n\n\n"
        "class Engine:\n"
        "    @classmethod\n"
        "    def load(cls, path, dtype='float32', threads=None):\n"
        "        return cls()\n\n"
        "    def generate(self, images, prompts, **options):\n"
        "        t = {'vision_ms': 1.0, 'encoder_ms': 2.0, 'first_token_ms': 3.0, 'decode_ms': 10.0,\n"
        "             'steps': options['max_new_tokens'], 'generate_ms': 20.0}\n"
        "        return [types.SimpleNamespace(tokens=[len(p)], score=-1.0, timings=t) for p in prompts]\n"),
}


def _stub_package(folder, with_search: bool = True):
    package = folder / "pali_engine"
    package.mkdir(parents=True)
    for name, text in STUB_FILES.items():
        if name == "native_backend.py" and not with_search:
            text = text.replace("def _search(", "def _other_search(")
        (package / name).write_text(text)
    return folder


def _stub_inputs(batch: int):
    return {"pixel_values": np.ones((batch, 3, 4, 4), np.float32), "input_ids": np.arange(2 * batch).reshape(batch, 2),
            "attention_mask": np.ones((batch, 2), np.int64), "images": [None] * batch,
            "prompts": ["abc"] * batch}


def _artifacts(model_path):
    from types import SimpleNamespace

    return SimpleNamespace(onnx_path=str(model_path))


def test_baseline_worker_runs_the_stub_package(tmp_path):
    from pali_engine.benchmarks.baseline import Baseline, BaselineError, BaselinePeer
    from pali_engine.benchmarks.peers import Case

    folder = _stub_package(tmp_path / "stub")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    peer = BaselinePeer(Baseline(str(folder), str(folder)), "int8")
    assert peer.name == "engine-baseline int8" and peer.pairs_with == "engine int8" and peer.missing() is None
    peer.load(_artifacts(model), {}, 2)
    try:
        assert peer.load_info == {"call": "NativeBackend._search on prepared arrays", "version": "stub"}
        for _ in range(2):  # one worker, several calls
            r = peer.run(_stub_inputs(2), Case(2, 4, 8))
            assert r == {"vision_ms": 1.0, "encoder_ms": 2.0, "ttft_ms": pytest.approx(r["total_ms"] - 7.0),
                         "total_ms": r["total_ms"], "steps": 8, "tokens": [[0, 1, 4], [2, 3, 4]],
                         "scores": [48.0, 48.0]}
        pid = peer.worker.proc.pid
        with pytest.raises(BaselineError, match="the stub refuses this dtype"):  # errors come back, the worker stays
            peer.worker.call({"op": "load", "model": str(model), "dtype": "broken", "threads": 1})
        assert peer.worker.call({"op": "unload", "handle": 99}) == {"ok": True}
        worker = peer.worker
    finally:
        peer.close()
    assert worker.proc.returncode == 0 and peer.worker is None and pid > 0


def test_baseline_worker_falls_back_to_engine_generate(tmp_path):
    from pali_engine.benchmarks.baseline import Baseline, BaselinePeer
    from pali_engine.benchmarks.peers import Case

    folder = _stub_package(tmp_path / "stub", with_search=False)
    peer = BaselinePeer(Baseline(str(folder), str(folder)), "float32")
    peer.load(_artifacts(tmp_path / "model.onnx"), {}, 1)
    try:
        assert peer.load_info["call"] == "Engine.generate on images and prompts"
        r = peer.run(_stub_inputs(1), Case(1, 1, 5))
        assert r["tokens"] == [[3]] and r["total_ms"] == 20.0 and r["ttft_ms"] == 13.0 and r["steps"] == 5
    finally:
        peer.close()


def test_baseline_package_folder_and_refs(tmp_path):
    from pali_engine.benchmarks import baseline

    folder = _stub_package(tmp_path / "stub")
    assert baseline.package_folder(str(folder)) == str(folder)
    assert baseline.package_folder(str(folder / "pali_engine")) == str(folder)
    (folder / "pali_engine" / "_core.py").unlink()  # a source folder: no native module
    assert baseline.package_folder(str(folder)) is None
    with pytest.raises(baseline.BaselineError, match="no built pali_engine"):
        baseline.resolve(str(folder), str(tmp_path / "work"), print)
    with pytest.raises(baseline.BaselineError, match="neither a folder"):
        baseline.resolve("no-such-ref-anywhere", str(tmp_path / "work"), print)


def test_baseline_ref_reuses_the_cache_of_its_full_commit(tmp_path):
    import subprocess

    from pali_engine.benchmarks import baseline

    try:
        repo, commit = baseline.resolve_commit("HEAD")
    except baseline.BaselineError:
        pytest.skip("not in a git checkout")
    cached = tmp_path / "work" / "baselines" / commit
    _stub_package(cached / "site")
    (cached / "build.json").write_text(json.dumps({"build_s": 1.5}))
    # The repository the harness found (an installed package lies outside it).
    short = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=repo).stdout.strip()
    logs = []
    found = baseline.resolve(short, str(tmp_path / "work"), logs.append)
    assert found.package_dir == str(cached / "site") and found.commit == commit
    assert found.describe()["cached"] is True and found.describe()["given"] == short
    assert "cached" in logs[0]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line.split()[1] for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def _ends_soon(pid: int, seconds: float = 10.0) -> bool:
    import time

    deadline = time.time() + seconds
    while time.time() < deadline:
        if _state(pid) in ("gone", "Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", ["exception", "ctrl-c", "killed"])
def test_baseline_worker_ends_with_the_harness(tmp_path, how):
    import signal
    import subprocess
    import sys

    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    folder = _stub_package(tmp_path / "stub")
    script = (
        "import sys, time\n"
        "from pali_engine.benchmarks.baseline import BaselineWorker\n"
        f"worker = BaselineWorker({str(folder)!r})\n"
        "print(worker.proc.pid, flush=True)\n"
        f"if {how!r} == 'exception':\n"
        "    raise RuntimeError('the harness fails')\n"
        "time.sleep(60)\n")
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        worker_pid = int(harness.stdout.readline())
        if how == "ctrl-c":
            harness.send_signal(signal.SIGINT)
        elif how == "killed":
            harness.kill()
        harness.wait(30)
        assert _ends_soon(worker_pid), f"the worker outlived the harness ({how})"
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()


def test_round_order_alternates_each_pair():
    from types import SimpleNamespace

    from pali_engine.benchmarks.baseline import round_order

    peers = [SimpleNamespace(name="engine f32"), SimpleNamespace(name="engine-baseline f32", pairs_with="engine f32"),
             SimpleNamespace(name="pytorch")]
    assert [p.name for p in round_order(peers, 0)] == ["engine f32", "engine-baseline f32", "pytorch"]
    assert [p.name for p in round_order(peers, 1)] == ["engine-baseline f32", "engine f32", "pytorch"]


def test_against_baseline_ratios_and_tokens():
    from pali_engine.benchmarks.harness import against_baseline

    runs = {"engine f32": [{"tokens": [[1, 2]], "scores": [-1.0]}] * 6,
            "engine-baseline f32": [{"tokens": [[1, 2]], "scores": [-1.25]}] * 5 + [{"tokens": [[1, 3]], "scores": [0.0]}]}
    interleaved = {"engine f32": [{"total_ms": 9.0, "step_ms": 1.0, "ttft_ms": 2.0, "vision_ms": None}] * 6,
                   "engine-baseline f32": [{"total_ms": 10.0, "step_ms": 1.0, "ttft_ms": 1.0, "vision_ms": None}] * 6}
    v = against_baseline("engine f32", "engine-baseline f32", runs, interleaved)
    assert v["ratios"]["total_ms"]["median"] == pytest.approx(0.9) and v["ratios"]["total_ms"]["current_faster"] == 6
    assert v["ratios"]["ttft_ms"]["median"] == 2.0 and v["ratios"]["ttft_ms"]["current_faster"] == 0
    assert "low" in v["ratios"]["step_ms"] and "vision_ms" not in v["ratios"]
    assert v["tokens"] == {"identical": False, "rows_equal": 5, "rows": 6, "max_score_diff": 1.0}


def _current_build_folder(tmp_path):
    """A package folder of the build under test: its Python files and its native module, copied
    (the editable install keeps them in two folders)."""
    import shutil

    import pali_engine
    from pali_engine import _native

    package = tmp_path / "current" / "pali_engine"
    package.mkdir(parents=True)
    for name in os.listdir(os.path.dirname(pali_engine.__file__)):
        if name.endswith(".py"):
            shutil.copy(os.path.join(os.path.dirname(pali_engine.__file__), name), package / name)
    shutil.copy(_native._core.__file__, package / os.path.basename(_native._core.__file__))
    return package.parent


def _workers_of_this_process():
    mine = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"baseline_worker.py" in cmd and _state(int(pid)) not in ("Z", "X"):
            mine.append(pid)
    return mine


def test_quick_run_with_the_current_build_as_baseline(tmp_path, capsys):
    if not _native_engine_available():
        pytest.skip("the native engine is not built")
    from pali_engine.benchmarks import harness

    folder = _current_build_folder(tmp_path)
    out_dir = tmp_path / "out"
    rc = harness.main(["--quick", "--sizes", "tiny", "--new-tokens", "4", "--repeats", "2", "--peers", "engine",
                       "--engine-dtypes", "float32", "--no-plot", "--baseline", str(folder),
                       "--work-dir", str(tmp_path / "work"), "--out-dir", str(out_dir)])
    text = capsys.readouterr().out
    assert rc == 0
    result = json.load(open(glob.glob(str(out_dir / "cpu-*.json"))[0]))
    assert result["baseline"]["given"] == "current" and result["baseline"]["commit"] is None
    size = result["sizes"][0]
    assert size["baseline_load"]["engine-baseline f32"]["call"] == "NativeBackend._search on prepared arrays"
    case = size["cases"]["b1-greedy"]
    assert list(case["peers"]) == ["engine f32", "engine-baseline f32"], (case["peers"].keys(), case["failed"])
    versus = case["versus_baseline"]["engine-baseline f32"]
    assert versus["tokens"] == {"identical": True, "rows_equal": 2, "rows": 2, "max_score_diff": 0.0}
    assert versus["ratios"]["total_ms"]["n"] == 2 and versus["ratios"]["total_ms"]["median"] > 0
    assert case["peers"]["engine-baseline f32"]["agreement"]["rows_equal"] == 1  # PyTorch's tokens too
    assert "engine f32 / engine-baseline f32, round by round" in text
    assert "| tiny | b1-greedy | f32 |" in text
    assert _workers_of_this_process() == []


def test_bad_baseline_fails_cleanly(tmp_path, capsys):
    from pali_engine.benchmarks import harness

    assert harness.main(["--quick", "--sizes", "tiny", "--baseline", "no-such-ref-anywhere",
                         "--work-dir", str(tmp_path)]) == 2
    assert "--baseline no-such-ref-anywhere" in capsys.readouterr().err


def test_concurrency_benchmark_counts_every_request_once():
    from pali_engine.benchmarks import concurrency

    seen = []
    lock = threading.Lock()

    def fn(i, image, prompt):
        with lock:
            seen.append(i)

    run = concurrency.run_callers(fn, [(None, "p")] * 37, callers=5)
    assert sorted(seen) == list(range(37)) and len(run["latencies_ms"]) == 37
    row = concurrency.summary([run, run])
    assert row["requests_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"]


def test_concurrency_benchmark_runs_the_engine_from_several_callers():
    from pali_engine.benchmarks import concurrency

    result = concurrency.measure(callers=(1, 3), n=6, repeats=1, threads=1, peers=("engine",))
    assert set(result["rows"]) == {"engine float32", "engine int8"}
    assert result["rows"]["engine float32"]["1"]["throughput_over_one_caller"] == 1.0
    assert "| engine int8 | 3 |" in concurrency.table(result)


def test_http_load_benchmark_loses_no_request():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from pali_engine.benchmarks import http_load

    result = http_load.measure(clients=6, per_client=2, sequential=4, threads=1, block=2)
    load = result["load"]
    assert load["completed"] == load["requests"] == 12 and load["failures"] == {} and load["server_errors"] == 0
    for layout in ("blocks", "alternated"):
        assert all(result["sequential"][layout][f"{kind}_p50_ms"] > 0 for kind in http_load.SEQUENTIAL_KINDS)
    assert "12 completed" in http_load.table(result)


def test_contention_benchmark_runs_every_condition(tmp_path, capsys):
    from pali_engine.benchmarks import contention

    out = tmp_path / "contention.json"
    assert contention.main(["--threads", "1", "--n", "2", "--rounds", "1", "--peers", "engine",
                            "--conditions", "quiet,thread,busy", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m pali_engine.benchmarks.contention --threads 1")
    assert "| engine int8 | 1 |" in capsys.readouterr().out


# --------------------------------------------------------------------------
# the full-size PaliGemma benchmark, on a tiny PaliGemma 2 checkpoint

FULL_SIZE_SUMMARY_KEYS = {"model", "peer", "precision", "case", "ms_per_token", "floor_ms_per_token", "ttft_ms",
                          "floor_ttft_ms", "peak_rss_mb", "weights_mb"}


@pytest.fixture(scope="module")
def full_size_run(tmp_path_factory, tokenizer_path):  # noqa: F811 (the fixture imported above)
    pytest.importorskip("transformers")
    if not _native_engine_available():
        pytest.skip("the native engine is not built")
    import contextlib
    import io

    from pali_engine.benchmarks import paligemma_full_size

    root = tmp_path_factory.mktemp("full-size")
    model, _ = build_checkpoint(2, str(root / "hf"), tokenizer_path)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = paligemma_full_size.main([str(root / "hf"), "--threads", "2", "--cases", "b1-greedy,b2-beam2",
                                       "--new-tokens", "4", "--repeats", "1", "--warmup", "1", "--warmup-once",
                                       "--engine-dtypes", "float32,bfloat16,int8,int4",
                                       "--transformers-dtypes", "float32", "--quick-floors",
                                       "--out-dir", str(root / "out")])
    files = sorted(glob.glob(str(root / "out" / "paligemma-full-size-*.json")))
    return rc, buf.getvalue(), files, root, model


def test_full_size_run_converts_and_reports_every_peer(full_size_run):
    rc, text, files, root, _ = full_size_run
    assert rc == 0
    assert os.path.isfile(root / "hf.onnx")  # converted, since it was missing
    assert len(files) == 1
    result = json.load(open(files[0]))
    assert result["command"].startswith("python -m pali_engine.benchmarks.paligemma_full_size hf --threads 2")
    assert "cpu_flags" in result["machine"] and result["versions"]["pali-engine"]
    assert set(result["peers"]) == {"engine float32", "engine bfloat16", "engine int8", "engine int4",
                                    "transformers float32", "onnxruntime float32", "onnxruntime int8"}
    assert os.path.isfile(root / "hf-split" / "decoder.onnx") and os.path.isfile(root / "hf-split-int8" /
                                                                                  "decoder.onnx")
    for name, peer in result["peers"].items():
        assert peer["failed"] == {} and peer["not_run"] == {}, name
        assert peer["load_s"] > 0 and peer["peak_rss_mb"] >= peer["rss_after_load_mb"] > 0, name
        for case in ("b1-greedy", "b2-beam2"):
            stats = peer["cases"][case]
            assert stats["steps"] == 4, (name, case)
            for metric in ("vision_ms", "ttft_ms", "ms_per_token", "total_ms", "tokens_per_s"):
                assert 0 < stats[metric]["min"] <= stats[metric]["median"] <= stats[metric]["max"], (name, metric)
            assert stats["ttft_ms"]["median"] < stats["total_ms"]["median"]
    assert result["not_run"] == {}
    assert len(result["summary"]) == 2 * 7
    for row in result["summary"]:
        assert set(row) == FULL_SIZE_SUMMARY_KEYS
        assert row["model"] == result["model"]["name"]
        assert row["floor_ms_per_token"] > 0 and row["floor_ttft_ms"] > 0 and row["weights_mb"] > 0
    assert "| engine | int4 | b2-beam2 |" in text and "| transformers | float32 | b1-greedy |" in text
    assert "| onnxruntime | int8 | b2-beam2 |" in text
    assert not glob.glob(str(root / "out" / "*.npz"))  # the inputs file is removed


def test_full_size_engine_answers_as_transformers(full_size_run):
    _, _, files, _, _ = full_size_run
    agreement = json.load(open(files[0]))["agreement"]
    assert agreement["reference"] == "transformers float32"
    assert agreement["cases"]["b1-greedy"]["engine float32"] == "1/1"
    assert agreement["cases"]["b2-beam2"]["engine float32"] == "2/2"
    assert agreement["cases"]["b1-greedy"]["onnxruntime float32"] == "1/1"
    assert agreement["cases"]["b2-beam2"]["onnxruntime float32"] == "2/2"


def test_full_size_plot(full_size_run):
    pytest.importorskip("matplotlib")
    _, _, files, _, _ = full_size_run
    png = files[0][:-len(".json")] + ".png"
    assert os.path.getsize(png) > 1000


def test_full_size_parameter_counts_and_weight_bytes(full_size_run):
    from pali_engine._core import ops
    from pali_engine.benchmarks import paligemma_full_size as full_size
    from pali_engine.export.paligemma.checkpoint import read_config

    _, _, _, root, model = full_size_run
    sizes = full_size.model_sizes(read_config(str(root / "hf")))
    assert sizes["parameters"] == sum(p.numel() for p in model.parameters())  # the tied head counted once
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    conv = model.model.vision_tower.embeddings.patch_embedding.weight.numel()
    assert sizes["vision_matmul"] + sizes["language_matmul"] + np.prod(sizes["head"]) == linear + conv
    # the packed weights the engine streams: the formula without its scales
    n, k = 64, 256
    weight = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32)
    for precision, fmt, scale_bytes in (("float32", "f32", 0), ("bfloat16", "bf16", 0), ("int8", "i8", 4 * n),
                                        ("int4", "i4", 2 * n * k // 32), ("int4_g128", "i4_g128", 2 * n * k // 128)):
        packed = ops.prepare_linear(weight, None, fmt).weight_bytes
        assert full_size.bytes_per_parameter(precision, k) * n * k == packed + scale_bytes, precision


def test_full_size_rounds_alternate_and_merge(full_size_run, tmp_path):
    """--rounds 2: every peer runs twice, the second round in reverse order, and its figures cover both."""
    import contextlib
    import io

    from pali_engine.benchmarks import paligemma_full_size

    _, _, _, root, _ = full_size_run
    buf, log = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(log):
        rc = paligemma_full_size.main([str(root / "hf"), "--onnx", str(root / "hf.onnx"), "--threads", "1",
                                       "--cases", "b1-greedy", "--new-tokens", "2", "--repeats", "1",
                                       "--warmup", "0", "--rounds", "2", "--engine-dtypes", "float32,int8",
                                       "--transformers-dtypes", "", "--ort-dtypes", "", "--quick-floors",
                                       "--no-plot", "--out-dir", str(tmp_path)])
    assert rc == 0
    result = json.load(open(glob.glob(str(tmp_path / "paligemma-full-size-*.json"))[0]))
    assert result["rounds"] == 2 and set(result["peers"]) == {"engine float32", "engine int8"}
    for name, peer in result["peers"].items():
        assert peer["rounds"] == 2 and len(peer["load_s_rounds"]) == 2, name
        assert [r["round"] for r in peer["runs"]["b1-greedy"]] == [1, 2], name
        assert peer["cases"]["b1-greedy"]["ttft_ms"]["n"] == 2, name
    order = re.findall(r"\[(engine \w+)\] round (\d)/2", log.getvalue())
    assert order == [("engine float32", "1"), ("engine int8", "1"), ("engine int8", "2"), ("engine float32", "2")]


def test_full_size_bad_arguments_fail_cleanly(tmp_path, capsys):
    from pali_engine.benchmarks import paligemma_full_size

    assert paligemma_full_size.main([str(tmp_path), "--cases", "b1-sampling"]) == 2
    assert paligemma_full_size.main([str(tmp_path), "--engine-dtypes", "float64"]) == 2
    assert paligemma_full_size.main([]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_full_size_worker_stopped_reports_the_cases_it_finished(full_size_run, tmp_path):
    import signal
    import subprocess
    import sys

    from pali_engine.benchmarks import paligemma_full_size as full_size
    from pali_engine.export.paligemma.checkpoint import read_config, read_tokenizer

    _, _, _, root, _ = full_size_run
    hf_dir = str(root / "hf")
    inputs = str(tmp_path / "inputs.npz")
    full_size.prepare_inputs(read_config(hf_dir), read_tokenizer(hf_dir), 2, 0, inputs)
    spec = {"peer": "engine", "dtype": "float32", "label": "engine float32", "onnx": str(root / "hf.onnx"),
            "hf_dir": hf_dir, "inputs": inputs, "threads": 1, "cases": [[1, 1], [2, 2], [2, 1]],
            "new_tokens": 4, "warmup": 0, "warmup_once": True, "repeats": 50, "budget_s": None}
    # b1-greedy finishes; b2-beam2 is stopped after its first run, long before its 50th
    worker = subprocess.Popen([sys.executable, "-m", "pali_engine.benchmarks.paligemma_full_size", "--worker",
                               json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in worker.stderr:
        if "b2-beam2 run 1/" in line:
            worker.send_signal(signal.SIGTERM)
            break
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert list(report["cases"]) == ["b1-greedy"] and len(report["cases"]["b1-greedy"]) == 50
    assert set(report["not_run"]) == {"b2-beam2", "b2-greedy"}
    assert all("stopped (SIGTERM)" in why for why in report["not_run"].values())

"""The ONNX reader fuzz target's seed corpus, replayed through the Python API.

Every file in tests/fuzz/corpus (the seeds .ci/fuzz starts from) and in
tests/fuzz/regressions (inputs the fuzzer once crashed on, kept as tests) is
read in the folder layout the fuzz target gives it (onnx_reader_fuzzer.cc):
it reads or raises ModelFileError, nothing else, and the seeds that are meant
to read, or to be refused, still are. So the committed corpus is checked on
every test run, and clang is not needed for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import pali_engine

FUZZ = Path(__file__).resolve().parent / "fuzz"
INPUTS = sorted(p for folder in ("corpus", "regressions") for p in (FUZZ / folder).glob("*") if p.is_file())
WEIGHTS = bytes((i * 7) % 256 for i in range(4096))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """The fuzz target's scratch folder: what external data may point at."""
    outside = tmp_path_factory.mktemp("fuzz")
    folder = outside / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(WEIGHTS)
    (folder / "sub" / "weights.bin").write_bytes(WEIGHTS[:64])
    (folder / "empty.bin").write_bytes(b"")
    os.mkfifo(folder / "fifo.bin")
    (outside / "secret.bin").write_bytes(WEIGHTS)
    (folder / "outside.bin").symlink_to("../secret.bin")
    return folder


def read_everything(path):
    info = pali_engine.inspect(path)
    return info, {name: pali_engine.load_tensor(path, name) for name in info["tensors"]}


def test_the_corpus_is_there():
    assert len(INPUTS) >= 10


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_input_reads_or_raises_model_file_error(model_folder, source):
    path = model_folder / "model.onnx"
    path.write_bytes(source.read_bytes())
    try:
        read_everything(path)
    except pali_engine.ModelFileError:
        pass


def corpus_file(model_folder, name):
    path = model_folder / "model.onnx"
    path.write_bytes((FUZZ / "corpus" / name).read_bytes())
    return path


@pytest.mark.parametrize("name", ["raw_every_dtype.onnx", "typed_every_dtype.onnx", "typed_bfloat16.onnx",
                                  "typed_unpacked.onnx"])
def test_valid_seeds_read(model_folder, name):
    info, values = read_everything(corpus_file(model_folder, name))
    assert values and all(v.shape == tuple(info["tensors"][n][1]) for n, v in values.items())


def test_raw_and_typed_seeds_hold_the_same_values(model_folder):
    _, raw = read_everything(corpus_file(model_folder, "raw_every_dtype.onnx"))
    _, typed = read_everything(corpus_file(model_folder, "typed_every_dtype.onnx"))
    assert raw.keys() == typed.keys()
    for name in raw:
        np.testing.assert_array_equal(raw[name], typed[name])


def test_external_seed_reads_the_scratch_files(model_folder):
    info, values = read_everything(corpus_file(model_folder, "external_weights.onnx"))
    weights = np.frombuffer(WEIGHTS, np.uint8)
    np.testing.assert_array_equal(values["whole"].view(np.uint8), weights)
    np.testing.assert_array_equal(values["middle"].view(np.uint8).reshape(-1), weights[100:124])
    np.testing.assert_array_equal(values["tail"], weights[4000:])
    np.testing.assert_array_equal(values["sub"].view(np.uint8), weights[:64])
    assert values["nothing"].shape == (0,)
    assert info["metadata"] == {"pali.config": "{}"}


@pytest.mark.parametrize("name, message", [
    ("external_outside_link.onnx", "outside the model's folder"),
    ("external_fifo.onnx", "not a regular file"),
    ("external_folder.onnx", "not a regular file"),
    ("external_missing.onnx", "missing or unreadable"),
    ("external_parent.onnx", "relative path inside"),
    ("external_absolute.onnx", "relative path inside"),
    ("external_past_end.onnx", "past the end"),
    ("duplicate_metadata.onnx", "appears twice"),
    ("segmented.onnx", "segmented"),
    ("hostile_graph_length.onnx", "corrupted or truncated"),
    ("hostile_negative_dim.onnx", "invalid dimension"),
])
def test_hostile_seeds_are_refused(model_folder, name, message):
    with pytest.raises(pali_engine.ModelFileError, match=message):
        read_everything(corpus_file(model_folder, name))

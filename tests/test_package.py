"""The installed package: imports, version, command line, and the CUDA module's absence handled."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import pali_engine
from pali_engine import _native


def run_cli(*args):
    # Outside the source folder, so that the installed package (with its compiled module) is imported.
    return subprocess.run(
        [sys.executable, "-m", "pali_engine.cli", *args], capture_output=True, text=True, timeout=120,
        cwd=tempfile.gettempdir(),
    )


def test_version_matches_native_module():
    assert pali_engine.__version__ == pali_engine._native._core.__version__


def test_cli_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("inspect", "run", "train", "eval"):
        assert command in result.stdout
    result = run_cli("--version")
    assert result.returncode == 0 and pali_engine.__version__ in result.stdout


def test_cli_unknown_command_fails_cleanly():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_cli_inspect(tmp_path):
    pytest.importorskip("onnx")
    from onnx_fixtures import write_model

    path = tmp_path / "m.onnx"
    config = {"architecture": "pali", "d_model": 8}
    write_model(path, {"lm_head.weight": np.zeros((5, 8), np.float32)}, metadata={"pali.config": json.dumps(config)})
    result = run_cli("inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "d_model" in result.stdout and "lm_head.weight" in result.stdout and "5x8" in result.stdout
    result = run_cli("inspect", "--json", str(path))
    assert json.loads(result.stdout)["tensors"]["lm_head.weight"] == ["float32", [5, 8]]


def test_cli_inspect_broken_file_has_no_traceback(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x3a\xff\xff")
    result = run_cli("inspect", str(path))
    assert result.returncode == 1
    assert "broken.onnx" in result.stderr and "Traceback" not in result.stderr


def test_cuda_request_without_cuda_module_is_a_clear_error():
    if pali_engine._native._core.built_with_cuda:
        pytest.skip("this build has CUDA")
    try:
        module = _native.core_for("cuda")
    except RuntimeError as error:
        assert "CUDA" in str(error)
    else:
        assert module.built_with_cuda
    with pytest.raises(ValueError, match="unknown device"):
        _native.core_for("tpu")


def test_engine_load_errors(tmp_path):
    with pytest.raises(pali_engine.ModelFileError, match="no such model file"):
        pali_engine.Engine.load(tmp_path / "missing.onnx")
    pytest.importorskip("onnx")
    from onnx_fixtures import write_model

    path = tmp_path / "plain.onnx"
    write_model(path, {"w": np.zeros(2, np.float32)})
    with pytest.raises(pali_engine.ModelFileError, match="pali.config"):
        pali_engine.Engine.load(path)

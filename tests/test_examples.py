"""The scripts in examples/ run from the repository root, as README says."""

from __future__ import annotations

import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPOSITORY, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_quickstart_runs_every_task():
    out = _run("examples/quickstart.py")
    assert "caption en" in out and "a blue circle and a red star" in out and "<loc" in out


def test_limits_measures_every_limit():
    out = _run("examples/limits.py", "--n", "3")
    for question in ("3 identical object", "a shape not in the image", "without a word", "bitmap font",
                     "resize='pad'", "transparent background", "1x1"):
        assert question in out, question

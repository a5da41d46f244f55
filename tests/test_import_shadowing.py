"""Python started in a source checkout finds the ``pali_engine`` source folder, which
has no compiled module, before the installed package: the import must then use the
installed copy, or, with none installed, say what happened and how to fix it
(pali_engine/__init__.py, pali_engine/_native.py).

Each case runs in a child ``python -S`` (no site hooks, so no editable-install
finder) with a folder laid out like a checkout as its working directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import numpy

import pali_engine
from pali_engine import _native

PACKAGE_SOURCE = os.path.dirname(os.path.abspath(pali_engine.__file__))
# Where numpy, pillow and sentencepiece are installed, without running its .pth files.
SITE_PACKAGES = os.path.dirname(os.path.dirname(os.path.abspath(numpy.__file__)))


def _copy_python_files(destination: str) -> None:
    os.makedirs(destination)
    for path in glob.glob(os.path.join(PACKAGE_SOURCE, "*.py")):
        shutil.copy(path, destination)


def _import_in_checkout(checkout: str, python_path: list[str]) -> subprocess.CompletedProcess:
    code = "import pali_engine; print(pali_engine._native._core.__file__)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(python_path))
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_installed_copy_is_used_when_the_source_folder_shadows_it(tmp_path):
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    _copy_python_files(str(checkout / "pali_engine"))
    _copy_python_files(str(site / "pali_engine"))
    shutil.copy(_native._core.__file__, site / "pali_engine")
    done = _import_in_checkout(str(checkout), [str(site), SITE_PACKAGES])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(site / "pali_engine")), done.stdout
    assert "source folder without the compiled module" in done.stderr
    assert str(site / "pali_engine") in done.stderr


def _dependencies_only(folder) -> str:
    """A folder with the runtime's dependencies (links into site-packages) and no pali_engine,
    which site-packages itself holds after a non-editable install."""
    os.makedirs(folder)
    for name in os.listdir(SITE_PACKAGES):
        if name.split(".")[0].lower() in ("numpy", "pil", "pillow", "sentencepiece") or name.endswith(".libs"):
            os.symlink(os.path.join(SITE_PACKAGES, name), os.path.join(folder, name))
    return str(folder)


def test_a_source_folder_with_nothing_installed_explains_itself(tmp_path):
    checkout = tmp_path / "checkout"
    _copy_python_files(str(checkout / "pali_engine"))
    done = _import_in_checkout(str(checkout), [_dependencies_only(tmp_path / "dependencies")])
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: pali_engine in ") and "has no compiled module _core" in last_line
    assert "pip install ." in last_line
    assert "circular import" not in done.stderr


def test_the_installed_package_imports_without_a_warning(tmp_path):
    done = subprocess.run([sys.executable, "-W", "error", "-c", "import pali_engine"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

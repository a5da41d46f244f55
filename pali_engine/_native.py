"""Loads the native modules: ``_core`` (CPU) always, ``_core_cuda`` on request.

The CPU code is built for x86-64-v3 (AVX2, FMA, F16C), so the CPU is checked
first: an older processor gets an ImportError that says why instead of a crash.
The CUDA module is imported only when a CUDA device is asked for, so a machine
without CUDA libraries can still ``import pali_engine``. A source folder without
the compiled module (Python started in the repository, nothing installed) gets
an ImportError that says so and how to install, not Python's "circular import".
"""

from __future__ import annotations

import os
import platform

_REQUIRED_X86_FLAGS = ("avx2", "fma", "f16c")


def _check_cpu() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    missing = [flag for flag in _REQUIRED_X86_FLAGS if flag not in flags]
                    if missing:
                        raise ImportError(
                            "pali-engine needs an x86-64 CPU with AVX2, FMA and F16C; "
                            f"this one lacks {', '.join(missing)}"
                        )
                    return
    except OSError:
        return


_check_cpu()


def _import_core():
    import importlib.util

    try:
        from . import _core
    except ImportError as error:
        if importlib.util.find_spec(__package__ + "._core") is not None:
            raise  # the module is there but does not load: its own error says why
        folder = os.path.dirname(os.path.abspath(__file__))
        raise ImportError(
            f"pali_engine in {folder} has no compiled module _core: it is a source folder (Python "
            "started in the repository finds it first) and no installed pali-engine was found; install "
            "it from the repository root with: pip install .", name=error.name
        ) from None
    return _core


_core = _import_core()

_cuda_module = None


def core_for(device: str):
    """The native module that serves ``device`` ("cpu" or "cuda")."""
    global _cuda_module
    if device == "cpu":
        return _core
    if device != "cuda":
        raise ValueError(f"unknown device {device!r} (expected 'cpu' or 'cuda')")
    if _cuda_module is None:
        try:
            from . import _core_cuda
        except ImportError as error:
            raise RuntimeError(
                "device 'cuda' requested but the CUDA module is not available: "
                f"{error}. Build it from the repository root, with nvcc on PATH: pip install "
                "scikit-build-core pybind11 ninja cmake nvidia-cublas && PALI_ENGINE_CUDA=ON pip install "
                "--no-build-isolation . (it holds the CUDA ops only: no model runs on CUDA yet)"
            ) from error
        _cuda_module = _core_cuda
    return _cuda_module

"""Loads the native modules: ``_core`` (CPU) always, ``_core_cuda`` on request.

The CPU code is built for x86-64-v3 (AVX2, FMA, F16C), so the CPU is checked
first: an older processor gets an ImportError that says why instead of a crash.
The CUDA module is imported only when a CUDA device is asked for, so a machine
without CUDA libraries can still ``import pali_engine``.
"""

from __future__ import annotations

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

from . import _core  # noqa: E402

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
                f"{error}. Build with PALI_ENGINE_CUDA=ON on a machine with the CUDA toolkit "
                "and install nvidia-cublas."
            ) from error
        _cuda_module = _core_cuda
    return _cuda_module

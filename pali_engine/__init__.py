"""pali-engine: fast inference for PaLI-family vision-language models.

    from pali_engine import Engine
    engine = Engine.load()                 # the bundled default model, or Engine.load("model.onnx")
    print(engine.generate("examples/shapes.png", "caption en").text)
"""


def _use_the_installed_copy_when_shadowed() -> None:
    """Python started in a source checkout finds its ``pali_engine`` folder, which has no
    compiled module, before the installed package. Then the whole package is loaded from
    the installed copy instead (with a warning), so that the import works and the Python
    files match their compiled module. Without an installed copy, ``_native`` explains."""
    import importlib.machinery
    import importlib.util
    import os
    import sys
    import warnings

    if importlib.util.find_spec(__name__ + "._core") is not None:
        return
    here = os.path.realpath(os.path.dirname(__file__))
    for entry in sys.path:
        candidate = os.path.realpath(os.path.join(entry or os.getcwd(), __name__))
        if candidate == here or not os.path.isfile(os.path.join(candidate, "__init__.py")):
            continue
        try:
            names = os.listdir(candidate)
        except OSError:
            continue
        if any(n.startswith("_core.") and n.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
               for n in names):
            __path__[:] = [candidate]
            warnings.warn(f"{here} is a source folder without the compiled module (Python started in the "
                          f"repository finds it first); using the installed pali_engine in {candidate}",
                          stacklevel=2)
            return


_use_the_installed_copy_when_shadowed()

from ._version import __version__  # noqa: E402
from .engine import Engine, default_model_path  # noqa: E402
from .errors import ModelFileError  # noqa: E402
from .model_file import inspect, load_tensor  # noqa: E402

__all__ = ["Engine", "ModelFileError", "default_model_path", "inspect", "load_tensor", "__version__"]

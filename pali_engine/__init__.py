"""pali-engine: fast inference for PaLI-family vision-language models.

    from pali_engine import Engine
    engine = Engine.load("pali.onnx")
    print(engine.generate("photo.png", "caption en").text)
"""

from ._version import __version__
from .engine import Engine, default_model_path
from .errors import ModelFileError
from .model_file import inspect, load_tensor

__all__ = ["Engine", "ModelFileError", "default_model_path", "inspect", "load_tensor", "__version__"]

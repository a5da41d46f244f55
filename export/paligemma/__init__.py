"""PaliGemma 1 and 2: Hugging Face checkpoints converted to the pali-engine ONNX format.

    pali-engine convert HF_DIR -o paligemma.onnx [--dtype float32|bfloat16|float16]
    python -m pali_engine.export.paligemma HF_DIR -o paligemma.onnx

One concept per module: ``checkpoint`` reads and checks the Hugging Face
directory (locating the weights, not loading them), ``graph`` builds the
teacher-forced graph from the config, ``writer`` streams the weights into the
file, ``convert`` drives and checks the conversion, and ``model`` is the
teacher-forced PyTorch module the converted file is checked against.  The runtime side (prompts and
pixels as transformers' PaliGemmaProcessor makes them) is
``pali_engine.paligemma_processor``.  See docs/paligemma.md.
"""

from .checkpoint import CheckpointError, read_checkpoint
from .convert import LOGITS_TOLERANCE, add_arguments, convert, main, run

__all__ = ["CheckpointError", "read_checkpoint", "convert", "main", "run", "add_arguments", "LOGITS_TOLERANCE"]

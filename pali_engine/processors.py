"""The processor of each architecture: ``processor_for(config, tokenizer_bytes)``.

A processor turns prompts and images into the arrays its architecture's models
take and reads their answers (``encode_prompts``, ``pixel_values``,
``parse_objects``, ``check_logits_inputs``, ``tokenizer``, ``resize``); every
backend of the architecture holds the same one. The table names classes as
"module:Class", imported only when a file of that architecture is opened.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

#: architecture -> its processor class.
PROCESSORS: Dict[str, str] = {
    "pali": "pali_engine.pali_processor:PaliProcessor",
    "paligemma": "pali_engine.paligemma_processor:PaliGemmaProcessor",
}


def processor_class(architecture: str):
    module, name = PROCESSORS[architecture].split(":")
    return getattr(importlib.import_module(module), name)


def processor_for(config: Dict[str, Any], tokenizer_bytes: bytes):
    """The processor of a checked config's architecture; ValueError when the tokenizer or the
    image settings do not fit the config."""
    cls = processor_class(config["architecture"])
    if hasattr(cls, "for_engine"):
        return cls.for_engine(config, tokenizer_bytes)
    return cls(config, tokenizer_bytes)

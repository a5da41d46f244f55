"""What a "paligemma" model file must contain, from its config alone (no torch).

Why: the runtime (``model_spec.check_model_file``), the native engine and the
converter find PaliGemma's weights under transformers 5's
``PaliGemmaForConditionalGeneration.state_dict()`` names; this is that list,
with shapes, for the config as the converter writes it into ``pali.config``
(``vision_config`` and ``text_config`` nested, spelled as in config.json).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

Shape = Tuple[int, ...]


def expected_parameter_shapes(config: Dict[str, Any]) -> Dict[str, Shape]:
    """Every parameter of a "paligemma" model: {state_dict name: shape}, from the C++ model."""
    from .model_spec import expected_parameter_shapes as expected

    return expected(config)


#: Generation length when the caller gives none (PaliGemma's configs set no default).
DEFAULT_MAX_NEW_TOKENS = 64


def check_paligemma_file(path: str, info: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], bytes]:
    """Checks a "paligemma" file's metadata and every tensor; returns (config, tokenizer bytes).

    ``info``: the file as ``pali_engine.inspect`` describes it, when the caller has read it already.
    Raises ModelFileError naming the file and the field or tensor.
    """
    from .errors import ModelFileError
    from .model_spec import check_model_file

    config, tokenizer = check_model_file(path, info)
    if config["architecture"] != "paligemma":
        raise ModelFileError(f"{path}: not a 'paligemma' model file (architecture {config['architecture']!r})")
    return config, tokenizer

"""The text side of the PaLI model as transformers' T5ForConditionalGeneration.

Why: the text model of ``export.model.Pali`` is T5 v1.1 / mT5 / UL2 (RMSNorm,
unscaled attention, shared relative position bias, gated FFN, untied head), so
its weights map one to one onto transformers' T5.  This module holds that map
in both directions: the benchmarks build an HF T5 (and from it a CTranslate2
model) on exactly the weights the engine runs, and an importer of public
T5/mT5/UL2 checkpoints can use the reverse direction.

    ours                                       transformers T5ForConditionalGeneration
    shared.weight                              shared.weight (+ encoder/decoder.embed_tokens, tied)
    encoder.relative_attention_bias.weight     encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
    encoder.blocks.{i}.attn_norm.weight        encoder.block.{i}.layer.0.layer_norm.weight
    encoder.blocks.{i}.attn.{q,k,v,o}.weight   encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight
    encoder.blocks.{i}.ffn_norm.weight         encoder.block.{i}.layer.1.layer_norm.weight
    encoder.blocks.{i}.ffn.{wi_0,wi_1,wo}      encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}
    encoder.final_norm.weight                  encoder.final_layer_norm.weight
    decoder.relative_attention_bias.weight     decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
    decoder.blocks.{i}.self_attn_norm          decoder.block.{i}.layer.0.layer_norm
    decoder.blocks.{i}.self_attn.{q,k,v,o}     decoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}
    decoder.blocks.{i}.cross_attn_norm         decoder.block.{i}.layer.1.layer_norm
    decoder.blocks.{i}.cross_attn.{q,k,v,o}    decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}
    decoder.blocks.{i}.ffn_norm                decoder.block.{i}.layer.2.layer_norm
    decoder.blocks.{i}.ffn.{wi_0,wi_1,wo}      decoder.block.{i}.layer.2.DenseReluDense.{wi_0,wi_1,wo}
    decoder.final_norm.weight                  decoder.final_layer_norm.weight
    lm_head.weight                             lm_head.weight

Vision weights (``vision.*``, ``projector.*``) have no T5 counterpart: the HF
model takes the encoder input as ``inputs_embeds`` (visual tokens followed by
the prompt's embeddings).

Pitfall: transformers 5.x forces ``T5Config.tie_word_embeddings = True`` and
ties ``lm_head`` to ``shared`` in a freshly built model; whether the decoder
output is scaled by d_model^-0.5 is decided by ``scale_decoder_outputs``
instead.  ``build_hf_t5`` therefore unties the head explicitly, sets the
config back to untied (converters such as CTranslate2's read
``config.tie_word_embeddings`` to decide on that scale) and checks the result.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional

from .config import PaliConfig

#: Per-block names: (ours, HF) with {i} for the block index, encoder then decoder.
_ENCODER_BLOCK = (
    ("attn_norm.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("ffn_norm.weight", "layer.1.layer_norm.weight"),
    ("ffn.wi_0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.wi_1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.wo.weight", "layer.1.DenseReluDense.wo.weight"),
)
_DECODER_BLOCK = (
    ("self_attn_norm.weight", "layer.0.layer_norm.weight"),
    ("self_attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("self_attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("self_attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("self_attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("cross_attn_norm.weight", "layer.1.layer_norm.weight"),
    ("cross_attn.q.weight", "layer.1.EncDecAttention.q.weight"),
    ("cross_attn.k.weight", "layer.1.EncDecAttention.k.weight"),
    ("cross_attn.v.weight", "layer.1.EncDecAttention.v.weight"),
    ("cross_attn.o.weight", "layer.1.EncDecAttention.o.weight"),
    ("ffn_norm.weight", "layer.2.layer_norm.weight"),
    ("ffn.wi_0.weight", "layer.2.DenseReluDense.wi_0.weight"),
    ("ffn.wi_1.weight", "layer.2.DenseReluDense.wi_1.weight"),
    ("ffn.wo.weight", "layer.2.DenseReluDense.wo.weight"),
)
_GLOBAL = (
    ("shared.weight", "shared.weight"),
    ("encoder.relative_attention_bias.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("encoder.final_norm.weight", "encoder.final_layer_norm.weight"),
    ("decoder.relative_attention_bias.weight", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("decoder.final_norm.weight", "decoder.final_layer_norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)
#: HF names that are tied copies of ``shared.weight`` (dropped on import when equal).
HF_TIED_EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

_OURS_TO_HF = {a: b for a, b in _GLOBAL}
_HF_TO_OURS = {b: a for a, b in _GLOBAL}
_OURS_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.(.+)$")


def ours_to_hf_name(name: str) -> str:
    """HF T5 name of one of our text parameters; KeyError for a name with no counterpart (vision, projector)."""
    if name in _OURS_TO_HF:
        return _OURS_TO_HF[name]
    m = _OURS_BLOCK.match(name)
    if m:
        stack, i, rest = m.groups()
        for ours, hf in (_ENCODER_BLOCK if stack == "encoder" else _DECODER_BLOCK):
            if rest == ours:
                return f"{stack}.block.{i}.{hf}"
    raise KeyError(f"{name!r} is not a parameter of the T5 text model")


def hf_to_ours_name(name: str) -> Optional[str]:
    """Our name for an HF T5 parameter; None for the tied embedding copies; KeyError for the rest
    (e.g. the non-gated ``DenseReluDense.wi`` of T5 v1.0, which this architecture does not have)."""
    if name in HF_TIED_EMBEDDINGS:
        return None
    if name in _HF_TO_OURS:
        return _HF_TO_OURS[name]
    m = _HF_BLOCK.match(name)
    if m:
        stack, i, rest = m.groups()
        for ours, hf in (_ENCODER_BLOCK if stack == "encoder" else _DECODER_BLOCK):
            if rest == hf:
                return f"{stack}.blocks.{i}.{ours}"
    raise KeyError(f"{name!r}: no counterpart in the pali text model (gated T5 v1.1 / mT5 / UL2 only)")


def is_text_parameter(name: str) -> bool:
    """True for the parameters of the T5 text model (everything except vision.* and projector.*)."""
    return not (name.startswith("vision.") or name.startswith("projector."))


def text_state_dict_to_hf(state_dict: Mapping[str, "object"], tie_word_embeddings: bool = False) -> Dict[str, "object"]:
    """Our state_dict (whole model or text part) -> HF T5 names; vision/projector dropped.

    The tied embedding copies are added (HF expects them); with tied embeddings
    (``tie_word_embeddings``) there is no ``lm_head.weight`` in ours and HF's is ``shared``.
    """
    out = {ours_to_hf_name(k): v for k, v in state_dict.items() if is_text_parameter(k)}
    for name in HF_TIED_EMBEDDINGS:
        out[name] = out["shared.weight"]
    if tie_word_embeddings:
        out["lm_head.weight"] = out["shared.weight"]
    return out


def hf_state_dict_to_text(state_dict: Mapping[str, "object"]) -> Dict[str, "object"]:
    """HF T5 state_dict -> our text parameter names.  The tied embedding copies must equal
    ``shared.weight`` (ValueError otherwise); a missing ``lm_head.weight`` means a tied head
    (set ``tie_word_embeddings`` in the config and keep it absent here)."""
    import torch

    out = {}
    shared = state_dict.get("shared.weight")
    for k, v in state_dict.items():
        name = hf_to_ours_name(k)
        if name is None:
            if shared is not None and not torch.equal(torch.as_tensor(v), torch.as_tensor(shared)):
                raise ValueError(f"{k} differs from shared.weight: untied input embeddings are not supported")
            continue
        out[name] = v
    return out


def hf_config_from_pali(cfg: PaliConfig):
    """A transformers T5Config for the text side of ``cfg`` (dropout 0)."""
    from transformers import T5Config

    return T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.encoder_layers, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=0.0, layer_norm_epsilon=cfg.layer_norm_epsilon,
        feed_forward_proj=cfg.feed_forward_proj, tie_word_embeddings=cfg.tie_word_embeddings,
        is_encoder_decoder=True, use_cache=True,
        pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id,
        decoder_start_token_id=cfg.decoder_start_token_id,
    )


def pali_text_fields_from_hf(hf_config) -> dict:
    """The PaliConfig text fields of a transformers T5Config (for importing checkpoints).

    A tied head is recognised by ``scale_decoder_outputs`` where the config has it
    (transformers 5.x), else by ``tie_word_embeddings``.
    """
    proj = hf_config.feed_forward_proj
    if proj not in ("gated-gelu", "gated-silu"):
        raise ValueError(f"feed_forward_proj {proj!r}: only gated-gelu and gated-silu T5 models are supported")
    tied = getattr(hf_config, "scale_decoder_outputs", None)
    if tied is None:
        tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    return dict(
        d_model=hf_config.d_model, d_kv=hf_config.d_kv, num_heads=hf_config.num_heads, d_ff=hf_config.d_ff,
        encoder_layers=hf_config.num_layers, decoder_layers=hf_config.num_decoder_layers,
        feed_forward_proj=proj, layer_norm_epsilon=hf_config.layer_norm_epsilon,
        relative_attention_num_buckets=hf_config.relative_attention_num_buckets,
        relative_attention_max_distance=hf_config.relative_attention_max_distance,
        vocab_size=hf_config.vocab_size, tie_word_embeddings=bool(tied),
        pad_token_id=hf_config.pad_token_id, eos_token_id=hf_config.eos_token_id,
        decoder_start_token_id=hf_config.decoder_start_token_id,
    )


def build_hf_t5(cfg: PaliConfig, state_dict: Optional[Mapping[str, "object"]] = None):
    """A transformers T5ForConditionalGeneration (eval mode, float32) for the text side of ``cfg``.

    With ``state_dict`` (our names; the whole Pali state_dict is fine) the model is built
    without initialising weights and takes those tensors as they are (float32 tensors are
    shared, not copied: a state_dict loaded with ``mmap=True`` stays mapped).  Without it,
    the weights are transformers' random initialisation.

    An untied config gets an untied head, whatever transformers does by default; checked:
    the head is its own tensor, the decoder output is not scaled, every parameter is set and,
    with ``state_dict``, equals ours.  Raises RuntimeError when a check fails.
    """
    import torch
    from transformers import T5ForConditionalGeneration

    hf_cfg = hf_config_from_pali(cfg)
    tied = bool(cfg.tie_word_embeddings)
    if state_dict is None:
        model = T5ForConditionalGeneration(hf_cfg)
        if not tied and model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
            model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    else:
        with torch.device("meta"):
            model = T5ForConditionalGeneration(hf_cfg)
        hf_sd = {k: torch.as_tensor(v).to(torch.float32)
                 for k, v in text_state_dict_to_hf(state_dict, tie_word_embeddings=tied).items()}
        params = dict(model.named_parameters(remove_duplicate=False))
        unknown = sorted(set(hf_sd) - set(params))
        if unknown:
            raise RuntimeError(f"not parameters of the HF T5 model: {unknown[:5]}")
        for name, value in hf_sd.items():
            if tuple(params[name].shape) != tuple(value.shape):
                raise RuntimeError(f"{name}: HF shape {tuple(params[name].shape)} != ours {tuple(value.shape)}")
        model.load_state_dict(hf_sd, strict=False, assign=True)
        if tied:  # one tensor for the embedding and the head, as transformers ties them
            model.lm_head.weight = model.shared.weight
        left = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
        left += [n for n, b in model.named_buffers() if b.is_meta]
        if left:
            raise RuntimeError(f"HF T5 parameters without a source weight: {left[:5]}")
    # transformers 5.x reads these two: keep them saying what the head is
    model.config.tie_word_embeddings = tied
    if hasattr(model.config, "scale_decoder_outputs"):
        model.config.scale_decoder_outputs = tied
    model.eval()
    check_hf_head(model, tied)
    if state_dict is not None:
        hf_params = dict(model.named_parameters(remove_duplicate=False))
        for name, value in text_state_dict_to_hf(state_dict, tie_word_embeddings=tied).items():
            if not torch.equal(hf_params[name].detach(), torch.as_tensor(value).to(torch.float32)):
                raise RuntimeError(f"{name}: HF weight differs from ours after loading")
    return model


def check_hf_head(model, tied: bool) -> None:
    """RuntimeError unless the HF model's head is tied/scaled exactly when ``tied`` says so."""
    same = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    scaled = getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings)
    if tied != same or tied != bool(scaled) or bool(model.config.tie_word_embeddings) != tied:
        raise RuntimeError(
            f"HF T5 head: expected {'tied and scaled' if tied else 'untied and unscaled'}, got "
            f"lm_head {'shared' if same else 'own'} tensor, scale_decoder_outputs={scaled}, "
            f"tie_word_embeddings={model.config.tie_word_embeddings}")

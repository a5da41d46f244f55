"""What a "paligemma" model file must contain, from its config alone (no torch).

Why: the runtime (``model_spec.check_model_file``), the native engine and the
converter find PaliGemma's weights under transformers 5's
``PaliGemmaForConditionalGeneration.state_dict()`` names; this is that list,
with shapes, for the config as the converter writes it into ``pali.config``
(``vision_config`` and ``text_config`` nested, spelled as in config.json).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

Shape = Tuple[int, ...]


def expected_parameter_shapes(config: Dict[str, Any]) -> Dict[str, Shape]:
    """Every parameter of a "paligemma" model: {state_dict name: shape}, in state_dict order."""
    v, t = config["vision_config"], config["text_config"]
    W, M, C, P = v["hidden_size"], v["intermediate_size"], v["num_channels"], v["patch_size"]
    N = (v["image_size"] // P) ** 2
    D, F_, V = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    H, KV, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    shapes: Dict[str, Shape] = {}
    p = "model.vision_tower."
    shapes[p + "embeddings.patch_embedding.weight"] = (W, C, P, P)
    shapes[p + "embeddings.patch_embedding.bias"] = (W,)
    shapes[p + "embeddings.position_embedding.weight"] = (N, W)
    for i in range(v["num_hidden_layers"]):
        q = f"{p}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[q + norm + ".weight"] = (W,)
            shapes[q + norm + ".bias"] = (W,)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[q + f"self_attn.{proj}.weight"] = (W, W)
            shapes[q + f"self_attn.{proj}.bias"] = (W,)
        shapes[q + "mlp.fc1.weight"] = (M, W)
        shapes[q + "mlp.fc1.bias"] = (M,)
        shapes[q + "mlp.fc2.weight"] = (W, M)
        shapes[q + "mlp.fc2.bias"] = (W,)
    shapes[p + "post_layernorm.weight"] = (W,)
    shapes[p + "post_layernorm.bias"] = (W,)
    shapes["model.multi_modal_projector.linear.weight"] = (config["projection_dim"], W)
    shapes["model.multi_modal_projector.linear.bias"] = (config["projection_dim"],)
    p = "model.language_model."
    shapes[p + "embed_tokens.weight"] = (V, D)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if t["model_type"] == "gemma2":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(t["num_hidden_layers"]):
        q = f"{p}layers.{i}."
        shapes[q + "self_attn.q_proj.weight"] = (H * hd, D)
        shapes[q + "self_attn.k_proj.weight"] = (KV * hd, D)
        shapes[q + "self_attn.v_proj.weight"] = (KV * hd, D)
        shapes[q + "self_attn.o_proj.weight"] = (D, H * hd)
        shapes[q + "mlp.gate_proj.weight"] = (F_, D)
        shapes[q + "mlp.up_proj.weight"] = (F_, D)
        shapes[q + "mlp.down_proj.weight"] = (D, F_)
        for norm in norms:
            shapes[q + norm + ".weight"] = (D,)
    shapes[p + "norm.weight"] = (D,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, D)
    return shapes

"""PaliGemma 1 and 2 as one teacher-forced PyTorch module: the converter's reference.

Why a module of our own rather than transformers' model: the converter checks
the graph it builds (graph.py) against it with the file's own weights loaded
by name, and it takes the same inputs and the prefix-LM mask from
``token_type_ids`` as plain tensor ops (the graph was first traced from it,
and still computes op for op what it does).  The parameter names are those of
transformers 5's ``PaliGemmaForConditionalGeneration.state_dict()``, so each
weight of the file is found under its Hugging Face name; the computation
follows transformers 5 step by step (tests compare the logits):

* SigLIP: patch conv with bias, learned position embedding, pre-LN blocks
  (GELU as the config says), post-LN, no pooling head; a linear projector.
* Text embeddings are multiplied by sqrt(hidden) (float32); image features
  replace the ``<image>`` tokens' embeddings unscaled (transformers 4 divided
  them by sqrt(hidden) before the same multiplication: the same values).
* Gemma decoder: RMSNorm with (1 + w), RoPE at positions 1..L (transformers'
  PaliGemma counts from 1, padding included), multi-query / grouped-query
  attention, GeGLU, tied head. Gemma 2 adds post-attention and pre/post
  feed-forward norms, ``query_pre_attn_scalar``, attention and final logit
  soft-capping, and sliding-window attention on the layers ``layer_types``
  names.
* Mask (transformers' ``create_causal_mask`` with ``block_sequence_ids``):
  a query attends a key when (key <= query [and, on sliding layers,
  key > query - window]) or both are prefix tokens (token_type_ids 0), and the
  key is not padding. The prefix is bidirectional even beyond the window.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from pali_engine.paligemma_spec import expected_parameter_shapes


def _activation(name: str):
    if name == "gelu":
        return lambda x: F.gelu(x)
    return lambda x: F.gelu(x, approximate="tanh")


def _module(**children: nn.Module) -> nn.Module:
    """A plain container, so that parameter names follow the attribute names given."""
    m = nn.Module()
    for name, child in children.items():
        setattr(m, name, child)
    return m


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by (1 + weight)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * (1.0 + self.weight.float())


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _range_in_graph(n: int, like: torch.Tensor) -> torch.Tensor:
    """float32 ``arange(n)``, counted from a shape of ``like`` so that the tracer records a Range op:
    a constant table of head_dim / 2 frequencies would be a large constant in the file."""
    start = like.shape[-1] - like.shape[-1]
    return torch.arange(start, start + n, dtype=torch.float32, device=like.device)


class SiglipLayer(nn.Module):
    def __init__(self, v: Dict[str, Any]):
        super().__init__()
        W, M = v["hidden_size"], v["intermediate_size"]
        self.heads = v["num_attention_heads"]
        self.layer_norm1 = nn.LayerNorm(W, eps=v["layer_norm_eps"])
        self.self_attn = _module(k_proj=nn.Linear(W, W), v_proj=nn.Linear(W, W), q_proj=nn.Linear(W, W),
                                 out_proj=nn.Linear(W, W))
        self.layer_norm2 = nn.LayerNorm(W, eps=v["layer_norm_eps"])
        self.mlp = _module(fc1=nn.Linear(W, M), fc2=nn.Linear(M, W))
        self.act = _activation(v["hidden_act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        hd = w // self.heads
        h = self.layer_norm1(x)
        a = self.self_attn

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, hd).transpose(1, 2)

        q, k, v = split(a.q_proj(h)), split(a.k_proj(h)), split(a.v_proj(h))
        probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5, dim=-1, dtype=torch.float32)
        h = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, w)
        x = x + a.out_proj(h)
        h = self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))
        return x + h


class GemmaLayer(nn.Module):
    def __init__(self, t: Dict[str, Any], index: int):
        super().__init__()
        D, F_ = t["hidden_size"], t["intermediate_size"]
        self.heads, self.kv_heads, self.head_dim = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
        self.gemma2 = t["model_type"] == "gemma2"
        self.self_attn = _module(
            q_proj=nn.Linear(D, self.heads * self.head_dim, bias=False),
            k_proj=nn.Linear(D, self.kv_heads * self.head_dim, bias=False),
            v_proj=nn.Linear(D, self.kv_heads * self.head_dim, bias=False),
            o_proj=nn.Linear(self.heads * self.head_dim, D, bias=False),
        )
        self.mlp = _module(gate_proj=nn.Linear(D, F_, bias=False), up_proj=nn.Linear(D, F_, bias=False),
                           down_proj=nn.Linear(F_, D, bias=False))
        eps = t["rms_norm_eps"]
        self.input_layernorm = RMSNorm(D, eps)
        self.post_attention_layernorm = RMSNorm(D, eps)
        if self.gemma2:
            self.pre_feedforward_layernorm = RMSNorm(D, eps)
            self.post_feedforward_layernorm = RMSNorm(D, eps)
            self.scaling = t["query_pre_attn_scalar"] ** -0.5
            self.softcap = t["attn_logit_softcapping"]
            self.sliding = t["layer_types"][index] == "sliding_attention"
            self.act = _activation(t["hidden_activation"])
        else:
            self.scaling = self.head_dim ** -0.5
            self.softcap = None
            self.sliding = False
            self.act = _activation(t["hidden_act"])

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor):
        b, n, _ = x.shape
        a = self.self_attn
        q = a.q_proj(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = a.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = a.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        if groups > 1:
            k = k[:, :, None].expand(b, self.kv_heads, groups, n, self.head_dim).reshape(b, self.heads, n, self.head_dim)
            v = v[:, :, None].expand(b, self.kv_heads, groups, n, self.head_dim).reshape(b, self.heads, n, self.head_dim)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        # Replacing (not adding) the finite minimum keeps a row with no allowed key finite (a padding query).
        scores = torch.where(allowed, scores, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        h = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return a.o_proj(h)

    def forward(self, x, cos, sin, full_mask, sliding_mask):
        allowed = sliding_mask if self.sliding else full_mask
        h = self.attention(self.input_layernorm(x), cos, sin, allowed)
        if self.gemma2:
            x = x + self.post_attention_layernorm(h)
            h = self.pre_feedforward_layernorm(x)
            h = self.mlp.down_proj(self.act(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))
            return x + self.post_feedforward_layernorm(h)
        x = x + h
        h = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(self.act(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))


class PaliGemma(nn.Module):
    """forward(pixel_values, input_ids, attention_mask, token_type_ids) -> float32 logits [B, L, V]."""

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        self.config = config
        v, t = config["vision_config"], config["text_config"]
        W, P, N = v["hidden_size"], v["patch_size"], config["num_image_tokens"]
        self.model = _module(
            vision_tower=_module(
                embeddings=_module(patch_embedding=nn.Conv2d(v["num_channels"], W, P, stride=P),
                                   position_embedding=nn.Embedding(N, W)),
                encoder=_module(layers=nn.ModuleList(SiglipLayer(v) for _ in range(v["num_hidden_layers"]))),
                post_layernorm=nn.LayerNorm(W, eps=v["layer_norm_eps"]),
            ),
            multi_modal_projector=_module(linear=nn.Linear(W, config["projection_dim"])),
            language_model=_module(
                embed_tokens=nn.Embedding(t["vocab_size"], t["hidden_size"]),
                layers=nn.ModuleList(GemmaLayer(t, i) for i in range(t["num_hidden_layers"])),
                norm=RMSNorm(t["hidden_size"], t["rms_norm_eps"]),
            ),
        )
        if not config["tie_word_embeddings"]:
            self.lm_head = nn.Linear(t["hidden_size"], t["vocab_size"], bias=False)
        # transformers holds sqrt(hidden) as a float32 tensor: the same rounding here (on the CPU, so that
        # the module can be built on the meta device).
        self.embed_scale = float(torch.tensor(t["hidden_size"] ** 0.5, dtype=torch.float32, device="cpu"))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vt = self.model.vision_tower
        x = vt.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        x = x + vt.embeddings.position_embedding.weight[None]
        for layer in vt.encoder.layers:
            x = layer(x)
        return self.model.multi_modal_projector.linear(vt.post_layernorm(x))

    def rope(self, length: torch.Tensor, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t = self.config["text_config"]
        hd = t["head_dim"]
        inv_freq = 1.0 / (t["rope_theta"] ** (_range_in_graph(hd // 2, like) * 2.0 / hd))
        positions = torch.arange(length, dtype=torch.float32, device=like.device) + 1.0
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def masks(self, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        """(full, sliding) bool [B, 1, L, L]: True where a query (row) may attend a key (column)."""
        n = attention_mask.shape[1]
        index = torch.arange(n, device=attention_mask.device)
        query, key = index[:, None], index[None, :]
        prefix = token_type_ids == 0
        both_prefix = prefix[:, :, None] & prefix[:, None, :]
        not_padding = (attention_mask != 0)[:, None, :]
        causal = key <= query
        full = ((causal[None] | both_prefix) & not_padding)[:, None]
        window = self.config["text_config"].get("sliding_window")
        if window is None:
            return full, full
        local = causal & (key > query - window)
        return full, ((local[None] | both_prefix) & not_padding)[:, None]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        c, t = self.config, self.config["text_config"]
        lm = self.model.language_model
        is_image = input_ids == c["image_token_index"]
        ids = input_ids
        if c["image_token_index"] >= t["vocab_size"]:
            ids = torch.where(is_image, torch.zeros_like(input_ids), input_ids)
        x = lm.embed_tokens(ids) * self.embed_scale
        features = self.image_features(pixel_values).to(x.dtype)
        # The k-th <image> token of a row takes the row's k-th image feature.
        slot = (torch.cumsum(is_image.long(), dim=1) - 1).clamp(0, c["num_image_tokens"] - 1)
        gathered = torch.gather(features, 1, slot[:, :, None].expand(-1, -1, x.shape[-1]))
        x = torch.where(is_image[:, :, None], gathered, x)
        cos, sin = self.rope(input_ids.shape[1], x)
        full, sliding = self.masks(attention_mask, token_type_ids)
        for layer in lm.layers:
            x = layer(x, cos, sin, full, sliding)
        x = lm.norm(x)
        weight = lm.embed_tokens.weight if c["tie_word_embeddings"] else self.lm_head.weight
        logits = torch.matmul(x, weight.t())
        cap = t.get("final_logit_softcapping")
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()

    @torch.no_grad()
    def load_weights(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Copies the checkpoint's tensors (any float dtype) into the float32 parameters, by name."""
        params = dict(self.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(torch.float32))


def check_names(model: PaliGemma) -> None:
    """The module's parameters are exactly ``expected_parameter_shapes`` (names, order, shapes)."""
    got = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    want = list(expected_parameter_shapes(model.config).items())
    if sorted(got) != sorted(want):
        extra = sorted(set(got) - set(want))
        missing = sorted(set(want) - set(got))
        raise AssertionError(f"parameters differ from expected_parameter_shapes: extra {extra}, missing {missing}")


__all__ = ["PaliGemma", "expected_parameter_shapes", "check_names"]

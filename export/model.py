"""The PaLI model in PyTorch: the reference the C++ engine is checked against.

Why: this is the definition that is trained (export/train.py), exported to
ONNX and re-implemented by the engine, so parameter names (the ``state_dict``
keys) and the math are a contract; docs/model.md lists every weight.

Architecture "pali" (DESIGN section 2)::

    pixel_values f32[B,C,S,S] -> ViT (patch conv + learned pos emb, pre-LN blocks,
        MHA with biases, tanh-GELU MLP, final LN) -> f32[B,N,W]
    -> projector Linear(W -> D) -> visual tokens f32[B,N,D]
    input_ids i64[B,L] -> shared embedding -> f32[B,L,D]
    concat -> T5 v1.1 encoder (RMSNorm, unscaled attention with shared bucketed
        relative bias, gated FFN) -> memory f32[B,N+L,D]
    decoder_input_ids i64[B,T] -> T5 decoder (causal self-attn with relative bias,
        cross-attn, gated FFN) -> lm_head (untied) -> logits f32[B,T,V]

Generation (greedy and beam search) uses a KV cache: the self-attention cache
grows by one position per step; cross-attention K/V are computed once.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import PaliConfig

NEG_INF = -1e9  # additive mask value for masked attention positions


# --------------------------------------------------------------------------
# vision encoder (ViT)

class ViTAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: f32[B,N,W] -> f32[B,N,W]; full (unmasked) attention, scaled by 1/sqrt(head_dim)."""
        B, N, W = x.shape
        q = self.q(x).view(B, N, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, N, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, N, self.heads, self.head_dim).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        att = att.softmax(dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, N, W)
        return self.out(y)


class ViTMLP(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ViTBlock(nn.Module):
    def __init__(self, cfg: PaliConfig):
        super().__init__()
        W = cfg.vision_width
        self.norm1 = nn.LayerNorm(W, eps=cfg.vision_layer_norm_eps)
        self.attn = ViTAttention(W, cfg.vision_heads)
        self.norm2 = nn.LayerNorm(W, eps=cfg.vision_layer_norm_eps)
        self.mlp = ViTMLP(W, cfg.vision_mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def checkpoint_config(ckpt: dict) -> PaliConfig:
    """The config of a loaded checkpoint (``save``'s model.pt or train.py's last.pt), stored as
    JSON text or as a dict."""
    cfg = ckpt["config"]
    return PaliConfig.from_json(cfg) if isinstance(cfg, str) else PaliConfig.from_dict(cfg)


def float_weights(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A checkpoint's tensors with floating ones in float32 (fp16 storage comes back as fp32)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def sincos_position_embedding(grid: int, width: int) -> torch.Tensor:
    """f32[1, grid*grid, width]: 2-D sine-cosine position codes (MAE / big_vision "sincos2d").

    The initial value of the learned position embedding.  Why: with a small random
    start the position signal stays far below the patch content (std ~0.04 vs ~2
    after training), and the model cannot tell where objects are; sine-cosine
    codes start with every patch's row and column at the content's scale.
    Width not divisible by 4: a normal(0.02) start instead.
    """
    if width % 4:
        return torch.randn(1, grid * grid, width) * 0.02
    quarter = width // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    ay = ys.reshape(-1, 1) * omega[None]
    ax = xs.reshape(-1, 1) * omega[None]
    emb = torch.cat([torch.sin(ay), torch.cos(ay), torch.sin(ax), torch.cos(ax)], dim=1)
    return emb.float().unsqueeze(0)


class VisionEncoder(nn.Module):
    """ViT without CLS token or pooling: every patch is an output token."""

    def __init__(self, cfg: PaliConfig):
        super().__init__()
        W, P = cfg.vision_width, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.num_channels, W, kernel_size=P, stride=P, bias=True)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, W))
        self.blocks = nn.ModuleList([ViTBlock(cfg) for _ in range(cfg.vision_depth)])
        self.norm = nn.LayerNorm(W, eps=cfg.vision_layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: f32[B,C,S,S] in [-1,1] -> f32[B,N,W], N = (S/P)^2, patches row-major."""
        x = self.patch_embed(pixel_values)  # [B,W,S/P,S/P]
        x = x.flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --------------------------------------------------------------------------
# T5 v1.1 / mT5 text encoder-decoder

class RMSNorm(nn.Module):
    """T5 layer norm: no mean subtraction, no bias; computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        var = xf.pow(2).mean(-1, keepdim=True)
        return (xf * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bucketing of (key position - query position), as in T5/mT5.

    Bidirectional (encoder): half the buckets for positive offsets.  Unidirectional
    (decoder): only offsets <= 0 are distinguished.  Within a direction, offsets
    below num_buckets/2 (of that half) get their own bucket, larger ones are
    log-spaced up to max_distance.
    """
    ret = torch.zeros_like(relative_position)
    n = num_buckets
    if bidirectional:
        n = n // 2
        ret = ret + (relative_position > 0).to(torch.long) * n
        rp = torch.abs(relative_position)
    else:
        rp = -torch.clamp(relative_position, max=0)
    max_exact = n // 2
    is_small = rp < max_exact
    rp_f = torch.clamp(rp, min=1).float()
    large = max_exact + (torch.log(rp_f / max_exact) / math.log(max_distance / max_exact)
                         * (n - max_exact)).to(torch.long)
    large = torch.clamp(large, max=n - 1)
    return ret + torch.where(is_small, rp, large)


class T5Attention(nn.Module):
    """Multi-head attention without biases and without 1/sqrt(d) scaling."""

    def __init__(self, d_model: int, heads: int, d_kv: int):
        super().__init__()
        self.heads, self.d_kv = heads, d_kv
        inner = heads * d_kv
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.heads, self.d_kv).transpose(1, 2)  # [B,H,L,dk]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        """q f32[B,H,Tq,dk], k/v f32[B,H,Tk,dk], bias broadcastable to [B,H,Tq,Tk] -> f32[B,Tq,H*dk]."""
        scores = torch.matmul(q, k.transpose(-1, -2))
        if bias is not None:
            scores = scores + bias
        att = scores.float().softmax(dim=-1).to(q.dtype)
        y = torch.matmul(att, v)
        B, H, Tq, dk = y.shape
        return y.transpose(1, 2).reshape(B, Tq, H * dk)

    def forward(self, x: torch.Tensor, kv: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        src = x if kv is None else kv
        y = self.attend(self.split(self.q(x)), self.split(self.k(src)), self.split(self.v(src)), bias)
        return self.o(y)


class GatedFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, act: str):
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.wi_0(x)
        g = F.gelu(g, approximate="tanh") if self.act == "gated-gelu" else F.silu(g)
        return self.wo(g * self.wi_1(x))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: PaliConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.attn = T5Attention(cfg.d_model, cfg.num_heads, cfg.d_kv)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.ffn = GatedFFN(cfg.d_model, cfg.d_ff, cfg.feed_forward_proj)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), bias=bias)
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: PaliConfig):
        super().__init__()
        self.cfg = cfg
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.blocks = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.encoder_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def position_bias(self, length: int, device) -> torch.Tensor:
        """f32[1,H,L,L]: bias[h, i, j] = table[bucket(j - i, bidirectional), h]."""
        pos = torch.arange(length, device=device)
        rel = pos[None, :] - pos[:, None]
        buckets = relative_position_bucket(rel, True, self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x f32[B,M,D], mask i64[B,M] (1 = attend) -> f32[B,M,D]."""
        bias = self.position_bias(x.shape[1], x.device).to(x.dtype)
        bias = bias + (1.0 - mask[:, None, None, :].to(x.dtype)) * NEG_INF
        for blk in self.blocks:
            x = blk(x, bias)
        return self.final_norm(x)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: PaliConfig):
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.self_attn = T5Attention(cfg.d_model, cfg.num_heads, cfg.d_kv)
        self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.cross_attn = T5Attention(cfg.d_model, cfg.num_heads, cfg.d_kv)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.ffn = GatedFFN(cfg.d_model, cfg.d_ff, cfg.feed_forward_proj)


class Decoder(nn.Module):
    def __init__(self, cfg: PaliConfig):
        super().__init__()
        self.cfg = cfg
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.decoder_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def position_bias(self, q_pos: torch.Tensor, k_len: int) -> torch.Tensor:
        """f32[1,H,Tq,Tk] for query positions q_pos i64[Tq] and keys 0..k_len-1 (unidirectional)."""
        k_pos = torch.arange(k_len, device=q_pos.device)
        rel = k_pos[None, :] - q_pos[:, None]
        buckets = relative_position_bucket(rel, False, self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: x f32[B,T,D] (embedded decoder inputs), memory f32[B,M,D],
        memory_mask i64[B,M] -> f32[B,T,D] (after the final norm)."""
        T = x.shape[1]
        pos = torch.arange(T, device=x.device)
        causal = (pos[None, :] > pos[:, None]).to(x.dtype) * NEG_INF  # [T,T]
        self_bias = self.position_bias(pos, T).to(x.dtype) + causal
        cross_bias = ((1.0 - memory_mask[:, None, None, :].to(x.dtype)) * NEG_INF)
        for blk in self.blocks:
            x = x + blk.self_attn(blk.self_attn_norm(x), bias=self_bias)
            x = x + blk.cross_attn(blk.cross_attn_norm(x), kv=memory, bias=cross_bias)
            x = x + blk.ffn(blk.ffn_norm(x))
        return self.final_norm(x)


# --------------------------------------------------------------------------
# the whole model

class Pali(nn.Module):
    """PaLI: ViT + projector + T5 encoder-decoder.  See the module docstring."""

    def __init__(self, cfg: PaliConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.vision = VisionEncoder(cfg)
        self.projector = nn.Linear(cfg.vision_width, cfg.d_model)
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    # ---- initialisation (T5 / ViT conventions) ----
    @torch.no_grad()
    def reset_parameters(self):
        cfg = self.config
        for m in self.vision.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        fan_in = cfg.num_channels * cfg.patch_size ** 2
        nn.init.trunc_normal_(self.vision.patch_embed.weight, std=1.0 / math.sqrt(fan_in))
        nn.init.zeros_(self.vision.patch_embed.bias)
        self.vision.pos_embed.copy_(sincos_position_embedding(cfg.image_size // cfg.patch_size, cfg.vision_width))
        nn.init.normal_(self.projector.weight, std=cfg.vision_width ** -0.5)
        nn.init.zeros_(self.projector.bias)
        nn.init.normal_(self.shared.weight, std=1.0)
        D, H, dk = cfg.d_model, cfg.num_heads, cfg.d_kv
        for m in list(self.encoder.modules()) + list(self.decoder.modules()):
            if isinstance(m, T5Attention):
                nn.init.normal_(m.q.weight, std=(D * dk) ** -0.5)
                nn.init.normal_(m.k.weight, std=D ** -0.5)
                nn.init.normal_(m.v.weight, std=D ** -0.5)
                nn.init.normal_(m.o.weight, std=(H * dk) ** -0.5)
            elif isinstance(m, GatedFFN):
                nn.init.normal_(m.wi_0.weight, std=D ** -0.5)
                nn.init.normal_(m.wi_1.weight, std=D ** -0.5)
                nn.init.normal_(m.wo.weight, std=cfg.d_ff ** -0.5)
        nn.init.normal_(self.encoder.relative_attention_bias.weight, std=D ** -0.5)
        nn.init.normal_(self.decoder.relative_attention_bias.weight, std=D ** -0.5)
        nn.init.normal_(self.lm_head.weight, std=D ** -0.5)

    # ---- pieces ----
    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return F.linear(h * (self.config.d_model ** -0.5), self.shared.weight)
        return self.lm_head(h)

    def encode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run ViT, projector and the T5 encoder.

        Args:
          pixel_values: f32[B,C,S,S], normalised to [-1, 1].
          input_ids: i64[B,L] prompt tokens (eos-terminated, right-padded with pad=0).
          attention_mask: i64[B,L], 1 for real prompt tokens, 0 for padding.
        Returns:
          memory f32[B,N+L,D] and memory_mask i64[B,N+L] (1 for the N image tokens).
        """
        vis = self.projector(self.vision(pixel_values))  # [B,N,D]
        txt = self.shared(input_ids)  # [B,L,D]
        x = torch.cat([vis, txt], dim=1)
        ones = torch.ones(vis.shape[0], vis.shape[1], dtype=attention_mask.dtype, device=attention_mask.device)
        mask = torch.cat([ones, attention_mask], dim=1)
        return self.encoder(x, mask), mask

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               memory_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder: i64[B,T] -> logits f32[B,T,V]."""
        h = self.decoder(self.shared(decoder_input_ids), memory, memory_mask)
        return self._logits(h)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced forward (the graph exported to ONNX).

        Args:
          pixel_values: f32[B,C,S,S]; input_ids: i64[B,L]; attention_mask: i64[B,L];
          decoder_input_ids: i64[B,T], starting with decoder_start_token_id (0).
        Returns:
          logits f32[B,T,V]: logits[:, t] predicts the token after decoder_input_ids[:, :t+1].
        """
        memory, mask = self.encode(pixel_values, input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, mask)

    # ---- incremental decoding with a KV cache ----
    def init_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                   max_len: Optional[int] = None) -> Dict:
        """Cross-attention K/V (computed once) and an empty self-attention cache.

        Returns a dict: cross_k/cross_v lists (per layer) of f32[B,H,M,dk],
        self_k/self_v lists of f32[B,H,t,dk] (t = 0 now), cross_bias f32[B,1,1,M], step 0.
        """
        dec = self.decoder
        cross_k, cross_v = [], []
        for blk in dec.blocks:
            cross_k.append(blk.cross_attn.split(blk.cross_attn.k(memory)))
            cross_v.append(blk.cross_attn.split(blk.cross_attn.v(memory)))
        B = memory.shape[0]
        H, dk = self.config.num_heads, self.config.d_kv
        empty = memory.new_zeros(B, H, 0, dk)
        return {
            "cross_k": cross_k, "cross_v": cross_v,
            "self_k": [empty] * len(dec.blocks), "self_v": [empty] * len(dec.blocks),
            "cross_bias": (1.0 - memory_mask[:, None, None, :].to(memory.dtype)) * NEG_INF,
            "step": 0,
        }

    def decode_step(self, tokens: torch.Tensor, cache: Dict) -> Tuple[torch.Tensor, Dict]:
        """One decoder step: tokens i64[B] (the token at position cache['step'])
        -> logits f32[B,V] for the next token; the cache is updated in place
        (self-attention K/V grow by one position) and returned."""
        dec = self.decoder
        t = cache["step"]
        x = self.shared(tokens)[:, None, :]  # [B,1,D]
        bias = dec.position_bias(torch.tensor([t], device=x.device), t + 1).to(x.dtype)  # [1,H,1,t+1]
        for i, blk in enumerate(dec.blocks):
            a = blk.self_attn
            h = blk.self_attn_norm(x)
            k = torch.cat([cache["self_k"][i], a.split(a.k(h))], dim=2)
            v = torch.cat([cache["self_v"][i], a.split(a.v(h))], dim=2)
            cache["self_k"][i], cache["self_v"][i] = k, v
            x = x + a.o(a.attend(a.split(a.q(h)), k, v, bias))
            c = blk.cross_attn
            h = blk.cross_attn_norm(x)
            x = x + c.o(c.attend(c.split(c.q(h)), cache["cross_k"][i], cache["cross_v"][i], cache["cross_bias"]))
            x = x + blk.ffn(blk.ffn_norm(x))
        cache["step"] = t + 1
        return self._logits(dec.final_norm(x))[:, 0], cache

    @staticmethod
    def reorder_cache(cache: Dict, index: torch.Tensor) -> Dict:
        """Select/reorder batch rows of the cache (beam search): index i64[B']."""
        for key in ("self_k", "self_v", "cross_k", "cross_v"):
            cache[key] = [t.index_select(0, index) for t in cache[key]]
        cache["cross_bias"] = cache["cross_bias"].index_select(0, index)
        return cache

    # ---- generation ----
    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, max_new_tokens: Optional[int] = None,
                 num_beams: int = 1, length_penalty: float = 1.0,
                 min_new_tokens: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Greedy (num_beams=1) or beam search decoding with the KV cache.

        Args:
          pixel_values f32[B,C,S,S], input_ids i64[B,L], attention_mask i64[B,L].
          max_new_tokens: limit on generated tokens (eos included); default config.max_new_tokens.
          num_beams: 1 = greedy.
          length_penalty: beam score = sum of log-probs / (generated length ** length_penalty),
            the length counting the generated tokens including eos (as transformers).
          min_new_tokens: eos is forbidden before this many tokens are generated.
        Returns:
          tokens i64[B,T] (generated tokens without the decoder start token, eos included
          when produced, right-padded with pad) and scores f32[B]: greedy = sum of
          log-probs of the generated tokens; beam = the length-normalised beam score.
        """
        cfg = self.config
        max_new = cfg.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        memory, mask = self.encode(pixel_values, input_ids, attention_mask)
        if num_beams <= 1:
            return self._greedy(memory, mask, max_new, min_new_tokens)
        return self._beam_search(memory, mask, max_new, num_beams, length_penalty, min_new_tokens)

    def _greedy(self, memory, mask, max_new, min_new):
        cfg = self.config
        B = memory.shape[0]
        cache = self.init_cache(memory, mask)
        tok = torch.full((B,), cfg.decoder_start_token_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(B, dtype=torch.bool, device=memory.device)
        scores = torch.zeros(B, device=memory.device)
        out = []
        for step in range(max_new):
            logits, cache = self.decode_step(tok, cache)
            logp = logits.float().log_softmax(-1)
            if step < min_new:
                logp[:, cfg.eos_token_id] = -math.inf
            nxt = logp.argmax(-1)
            scores = scores + torch.where(done, torch.zeros_like(scores), logp.gather(1, nxt[:, None])[:, 0])
            nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)
            out.append(nxt)
            done = done | (nxt == cfg.eos_token_id)
            tok = nxt
            if bool(done.all()):
                break
        if not out:
            return torch.zeros(B, 0, dtype=torch.long, device=memory.device), scores
        return torch.stack(out, 1), scores

    def _beam_search(self, memory, mask, max_new, K, length_penalty, min_new):
        """Beam search as in transformers (early_stopping=False): each step takes the
        top 2K continuations of all beams; an eos among the top K finishes a
        hypothesis, scored sum_logprobs / len**length_penalty; a batch row is done
        when it has K finished hypotheses and the best running beam's score,
        normalised by the current length, cannot beat the worst of them.  At
        max_new_tokens the running beams are added as hypotheses too."""
        cfg = self.config
        B, M, D = memory.shape
        dev = memory.device
        memory = memory.repeat_interleave(K, 0)
        mask = mask.repeat_interleave(K, 0)
        cache = self.init_cache(memory, mask)
        beam_scores = torch.zeros(B, K, device=dev)
        beam_scores[:, 1:] = -1e9  # only the first beam is live at the start
        beam_scores = beam_scores.view(-1)
        seqs = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
        tok = torch.full((B * K,), cfg.decoder_start_token_id, dtype=torch.long, device=dev)
        hyps: List[List[Tuple[float, List[int]]]] = [[] for _ in range(B)]
        done = [False] * B

        def add(b, score, seq):
            hyps[b].append((score, seq))
            hyps[b].sort(key=lambda h: -h[0])
            del hyps[b][K:]

        for step in range(max_new):
            cur_len = step + 1  # generated length including the candidate token
            logits, cache = self.decode_step(tok, cache)
            logp = logits.float().log_softmax(-1)
            if step < min_new:
                logp[:, cfg.eos_token_id] = -math.inf
            V = logp.shape[-1]
            cand = (beam_scores[:, None] + logp).view(B, K * V)
            top_s, top_i = cand.topk(2 * K, dim=1)
            new_scores = torch.zeros(B, K, device=dev)
            new_tok = torch.full((B, K), cfg.pad_token_id, dtype=torch.long, device=dev)
            new_src = torch.zeros(B, K, dtype=torch.long, device=dev)
            top_s_l, top_i_l = top_s.tolist(), top_i.tolist()
            for b in range(B):
                if done[b]:
                    new_scores[b] = -1e9
                    new_src[b] = b * K
                    continue
                n = 0
                for rank in range(2 * K):
                    s, idx = top_s_l[b][rank], top_i_l[b][rank]
                    beam, t_id = divmod(idx, V)
                    if t_id == cfg.eos_token_id:
                        if rank >= K:
                            continue
                        seq = seqs[b * K + beam].tolist() + [t_id]
                        add(b, s / (cur_len ** length_penalty), seq)
                    else:
                        new_scores[b, n] = s
                        new_tok[b, n] = t_id
                        new_src[b, n] = b * K + beam
                        n += 1
                    if n == K:
                        break
                if len(hyps[b]) >= K:
                    best_running = max(top_s_l[b])
                    if hyps[b][-1][0] >= best_running / (cur_len ** length_penalty):
                        done[b] = True
            src = new_src.view(-1)
            seqs = torch.cat([seqs.index_select(0, src), new_tok.view(-1, 1)], 1)
            beam_scores = new_scores.view(-1)
            cache = self.reorder_cache(cache, src)
            tok = new_tok.view(-1)
            if all(done):
                break
        for b in range(B):
            if done[b]:
                continue
            for k in range(K):
                add(b, float(beam_scores[b * K + k]) / (seqs.shape[1] ** length_penalty),
                    seqs[b * K + k].tolist())
        T = max(1, max(len(h[0][1]) for h in hyps))
        out = torch.full((B, T), cfg.pad_token_id, dtype=torch.long, device=dev)
        scores = torch.zeros(B, device=dev)
        for b in range(B):
            s, seq = hyps[b][0]
            out[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            scores[b] = s
        return out, scores

    # ---- checkpoints ----
    def save(self, path: str, half: bool = True, extra: Optional[dict] = None) -> None:
        """Write {"config": json, "state_dict": ..., "dtype": ...}; fp16 storage when half."""
        sd = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous()
              for k, v in self.state_dict().items()}
        ckpt = {"format": "pali-checkpoint-1", "config": self.config.to_json(), "state_dict": sd,
                "dtype": "float16" if half else "float32"}
        if extra:
            ckpt.update(extra)
        torch.save(ckpt, path)

    @classmethod
    def load(cls, path: str, map_location="cpu") -> "Pali":
        """Load a checkpoint written by ``save`` (or by train.py); weights come back as fp32."""
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
            raise ValueError(f"{path}: not a pali checkpoint (expected config and state_dict)")
        model = cls(checkpoint_config(ckpt))
        model.load_state_dict(float_weights(ckpt["state_dict"]), strict=True)
        model.eval()
        return model

"""A KV-cached Qwen3 decoder in plain PyTorch, over a full set of HF-named weights.

    decoder = Qwen3KVDecoder(weights, hf_config)       # {hf_name: tensor}, config.json's dict
    cache = decoder.new_cache(batch=16, length=64)
    logits = decoder.forward(ids, positions, cache, start=0, key_mask=...)   # prefill
    logits = decoder.forward(next_ids, next_positions, cache, start=t, key_mask=...)  # one step

It is the model half of in-rank generation (`rlrt_megatron.rollout.in_rank`): a trainer rank
decodes with the weights it trains, so no weight sync and no engine process exist. It computes
exactly what ``transformers``' ``Qwen3ForCausalLM`` computes (same op order: RMSNorm in float32
then scaled in the weights' dtype, q/k RMSNorm per head before RoPE, rotate-half RoPE, GQA SDPA
with scale ``head_dim ** -0.5``, SwiGLU) — `tests/rollout/test_kv_decoder.py` holds it to HF's
logits — but in fewer, larger ops: q, k and v come from one matmul (their weights concatenated
once), gate and up from another, and the cache is preallocated, so a decode step is a few dozen
kernels, which is what a small model's step costs on a CPU.

Rows are left-padded: ``key_mask`` [B, S_total] marks the cache slots that hold real tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


class UnsupportedModelError(ValueError):
    """The checkpoint uses something this decoder does not implement (named in the message)."""


@dataclass(frozen=True)
class DecoderShape:
    """The Qwen3 hyperparameters the decoder needs, read from ``config.json``'s dict."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> DecoderShape:
        model_type = config.get("model_type")
        if model_type not in (None, "qwen3"):
            raise UnsupportedModelError(
                f"in-rank generation implements Qwen3; the checkpoint's model_type is "
                f"{model_type!r}"
            )
        rope_scaling = config.get("rope_scaling")
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default":
            raise UnsupportedModelError(
                f"in-rank generation implements plain RoPE; the checkpoint sets rope_scaling="
                f"{rope_scaling!r} (use rollout.backend=vllm)"
            )
        if config.get("use_sliding_window"):
            raise UnsupportedModelError(
                "in-rank generation has no sliding-window attention; the checkpoint sets "
                "use_sliding_window=true (use rollout.backend=vllm)"
            )
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        rope = config.get("rope_parameters") or {}
        return cls(
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
        )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Qwen3RMSNorm: normalize in float32, scale in the weight's dtype."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [*positions.shape, head_dim] of HF's default RoPE (frequencies in float32,
    halves concatenated for rotate-half)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
    inv_freq = 1.0 / (theta ** (exponents / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, D] rotated by cos/sin [B, 1, S, D] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class KVCache:
    """Per layer, keys and values [B, KV, S_max, D]; slots ``[0, length)`` are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def select(self, rows: torch.Tensor) -> KVCache:
        """The cache of rows ``rows`` (index or repeat: prefill once per prompt, then expand it
        to the prompt's samples)."""
        return KVCache(
            [k.index_select(0, rows) for k in self.keys],
            [v.index_select(0, rows) for v in self.values],
        )


class Qwen3KVDecoder:
    """Qwen3 forward with a KV cache; no autograd (generation only). It keeps its own copy of
    the weights (q/k/v and gate/up concatenated, the rest cloned), so ``weights`` may be live
    parameters that an optimizer step changes later."""

    def __init__(self, weights: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any]) -> None:
        self.shape = shape = DecoderShape.from_hf_config(hf_config)
        missing = [
            n for n in ("model.embed_tokens.weight", "model.norm.weight") if n not in weights
        ]
        if missing:
            raise UnsupportedModelError(f"weights lack {missing}")
        with torch.no_grad():
            self.embed = weights["model.embed_tokens.weight"].clone()
            self.final_norm = weights["model.norm.weight"].clone()
            # A tied checkpoint has no lm_head.weight (export_hf_weights yields it once).
            head = weights.get("lm_head.weight")
            self.lm_head = self.embed if head is None else head.clone()
            self.layers = [self._layer(weights, i) for i in range(shape.num_layers)]
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        """Where the weights are (a GPU rank's export is on its GPU): inputs, cache and masks go
        there too."""

    def _layer(self, weights: Mapping[str, torch.Tensor], i: int) -> dict[str, Any]:
        p = f"model.layers.{i}."

        def get(name: str) -> torch.Tensor:
            try:
                return weights[p + name]
            except KeyError:
                raise UnsupportedModelError(f"weights lack {p + name}") from None

        def own(name: str) -> torch.Tensor:  # kept as it is: a copy (concatenations copy anyway)
            return get(name).clone()

        qkv = torch.cat(
            [
                get("self_attn.q_proj.weight"),
                get("self_attn.k_proj.weight"),
                get("self_attn.v_proj.weight"),
            ]
        )
        biases = [weights.get(p + f"self_attn.{n}_proj.bias") for n in "qkv"]
        qkv_bias = torch.cat(biases) if all(b is not None for b in biases) else None
        return {
            "input_norm": own("input_layernorm.weight"),
            "qkv": qkv,
            "qkv_bias": qkv_bias,
            "q_norm": own("self_attn.q_norm.weight"),
            "k_norm": own("self_attn.k_norm.weight"),
            "o": own("self_attn.o_proj.weight"),
            "post_norm": own("post_attention_layernorm.weight"),
            "gate_up": torch.cat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")]),
            "down": own("mlp.down_proj.weight"),
        }

    def new_cache(self, batch: int, length: int) -> KVCache:
        s = self.shape
        size = (batch, s.num_kv_heads, length, s.head_dim)
        return KVCache(
            [torch.zeros(size, dtype=self.dtype, device=self.device) for _ in range(s.num_layers)],
            [torch.zeros(size, dtype=self.dtype, device=self.device) for _ in range(s.num_layers)],
        )

    @torch.no_grad()
    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        *,
        start: int,
        key_mask: torch.Tensor,
        last_only: bool = True,
    ) -> torch.Tensor:
        """Logits (float32) of tokens ``ids`` [B, S] at RoPE ``positions`` [B, S], written to
        cache slots ``[start, start + S)``; ``key_mask`` [B, >= start + S] bool marks real
        tokens. Returns [B, V] for the last position (``last_only``) or [B, S, V]."""
        s = self.shape
        batch, length = ids.shape
        end = start + length
        h = F.embedding(ids, self.embed)
        cos, sin = rope_cos_sin(positions, s.head_dim, s.rope_theta, self.dtype)
        cos, sin = cos[:, None], sin[:, None]
        # [B, 1, S, end]: causal within the new tokens, padding slots never attended. A padding
        # query (left padding, prefill) would see no key at all, which SDPA turns into NaN: it
        # may see itself; its output is never read.
        keys_ok = key_mask[:, None, None, :end]
        bias = None
        if length > 1:
            causal = torch.ones(length, end, dtype=torch.bool, device=self.device).tril(start)
            mask = keys_ok & causal
            diagonal = torch.zeros(length, end, dtype=torch.bool, device=self.device)
            diagonal[torch.arange(length), torch.arange(start, end)] = True
            mask = mask | diagonal
        else:
            mask = keys_ok
            # Additive mask for `_decode_attention`: [B, 1, 1, end].
            bias = torch.zeros(keys_ok.shape, dtype=self.dtype, device=self.device)
            bias = bias.masked_fill(~keys_ok, float("-inf"))
        q_size = s.num_heads * s.head_dim
        kv_size = s.num_kv_heads * s.head_dim
        for layer, k_cache, v_cache in zip(self.layers, cache.keys, cache.values, strict=True):
            x = rms_norm(h, layer["input_norm"], s.rms_norm_eps)
            qkv = F.linear(x, layer["qkv"], layer["qkv_bias"])
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = rms_norm(
                q.view(batch, length, s.num_heads, s.head_dim), layer["q_norm"], s.rms_norm_eps
            ).transpose(1, 2)
            k = rms_norm(
                k.view(batch, length, s.num_kv_heads, s.head_dim), layer["k_norm"], s.rms_norm_eps
            ).transpose(1, 2)
            v = v.view(batch, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
            k_cache[:, :, start:end] = apply_rope(k, cos, sin)
            v_cache[:, :, start:end] = v
            q = apply_rope(q, cos, sin)
            if length > 1:
                attn = F.scaled_dot_product_attention(
                    q,
                    k_cache[:, :, :end],
                    v_cache[:, :, :end],
                    attn_mask=mask,
                    enable_gqa=s.num_kv_heads != s.num_heads,
                ).transpose(1, 2)
            else:
                attn = _decode_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], bias)
            h = h + F.linear(attn.reshape(batch, length, q_size), layer["o"])
            x = rms_norm(h, layer["post_norm"], s.rms_norm_eps)
            gate, up = F.linear(x, layer["gate_up"]).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, layer["down"])
        if last_only:
            h = h[:, -1]
        return F.linear(rms_norm(h, self.final_norm, s.rms_norm_eps), self.lm_head).float()


def _decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """One query per row: q [B, H, 1, D], keys/values [B, KV, S, D], additive ``bias``
    [B, 1, 1, S] → [B, 1, H, D]. Two batched matmuls with the query heads of a KV group stacked
    as rows: for a single new token that is several times faster on a CPU than SDPA's flash
    kernel, which is built for long queries."""
    batch, heads, _, dim = q.shape
    kv_heads = keys.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)) * dim**-0.5 + bias
    out = torch.matmul(scores.softmax(dim=-1), values)  # [B, KV, G, D]
    return out.reshape(batch, 1, heads, dim)

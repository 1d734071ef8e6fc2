"""Rotary position embedding (RoPE) fused by ``torch.compile``, for the attention of models built
with `rlrt_megatron.models.compiled_elementwise.compile_elementwise`.

Without Transformer Engine (``config.apply_rope_fusion`` off), megatron-core applies RoPE to the
queries and keys of every layer as separate eager ops (``rope_utils._apply_rotary_pos_emb_bshd``):
cos and sin of the whole frequency table, ``chunk`` + ``neg`` + ``cat`` for the rotated half, two
muls and an add, then a ``cat`` with the (empty) pass-through part, which copies the result once
more. On packed (THD) micro-batches it first assembles a [tokens, 1, 1, d] frequency tensor,
sequence by sequence. Each of these ops reads and writes a [tokens, heads, d] tensor, forward and
backward.

Here the same math, ``t·cos(θ)·m + rotate_half(t)·sin(θ)·m`` with θ the table's row at each
token's position in its sequence (m the YaRN scale, 1 for plain RoPE), is one compiled function;
on THD inputs the rows are gathered inside it from per-token positions computed vectorised from
``cu_seqlens`` (and, under context parallelism, the load-balanced chunk order of megatron's
``_get_thd_freqs_on_this_cp_rank``: this rank's chunks r and 2C − 1 − r of each sequence).

Megatron's attention calls ``megatron.core.transformer.attention.apply_rotary_pos_emb``; that
name is rebound once per process to `apply_rotary_pos_emb`, which takes the compiled path only
for a ``TransformerConfig`` marked by `enable_compiled_rope` and otherwise calls megatron's own
function unchanged, as it also does for what is out of scope: TE's fused RoPE, interleaved
rotary, multi-latent attention, partial rotary (pass-through dims), and THD frequency tables
indexed by packed offset (megatron's "exact mapping" mode for VLMs).
"""

from __future__ import annotations

from typing import Any

import torch

from rlrt_megatron.models.compile_cache import compiled as _compiled

_MARK = "rlrt_compiled_rope"  # attribute set on a TransformerConfig by enable_compiled_rope


def rope_reference(t: torch.Tensor, freqs: torch.Tensor, mscale: float) -> torch.Tensor:
    """Megatron's unfused RoPE (non-interleaved, full rotary): t [s, b, h, d], freqs [s, 1, 1, d]
    (angles, float32) -> [s, b, h, d] in t's dtype.

    out = t · (cos θ · m) + [−t₂, t₁] · (sin θ · m), with t = [t₁, t₂] split in halves along d and
    cos/sin cast to t's dtype before the products, as ``_apply_rotary_pos_emb_bshd`` does.
    """
    cos = (torch.cos(freqs) * mscale).to(t.dtype)
    sin = (torch.sin(freqs) * mscale).to(t.dtype)
    first, second = torch.chunk(t, 2, dim=-1)
    return t * cos + torch.cat((-second, first), dim=-1) * sin


def rope_gathered_reference(
    t: torch.Tensor, freqs: torch.Tensor, positions: torch.Tensor, mscale: float
) -> torch.Tensor:
    """`rope_reference` with each token's angles gathered from the table: t [n, 1, h, d],
    freqs [max_s, 1, 1, d], positions [n] (int64, each token's position in its sequence)."""
    return rope_reference(t, freqs.index_select(0, positions), mscale)


def thd_positions(cu_seqlens: torch.Tensor, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Position in its sequence of each token a CP rank holds of a packed row: [n_local] int64.

    ``cu_seqlens`` [k + 1] are the boundaries of the whole (all-rank) packed row; every sequence's
    length L is a multiple of 2·cp_size. Without CP the positions are 0..L−1 per sequence. With
    CP, a rank holds L / C tokens of each sequence: chunk ``cp_rank`` then chunk
    ``2C − 1 − cp_rank`` of its 2C chunks of m = L / 2C (megatron's
    ``_get_thd_freqs_on_this_cp_rank``).
    """
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long() // cp_size
    starts = torch.cumsum(lengths, 0) - lengths
    index = torch.arange(int(lengths.sum()), device=cu_seqlens.device)
    local = index - torch.repeat_interleave(starts, lengths)  # position among this rank's tokens
    if cp_size == 1:
        return local
    half = torch.repeat_interleave(lengths // 2, lengths)  # m
    full = half * 2 * cp_size  # L
    early = cp_rank * half + local
    late = full - (cp_rank + 1) * half + (local - half)
    return torch.where(local < half, early, late)


_megatron_apply_rotary_pos_emb: Any = None  # megatron's function, kept by _install


def _in_scope(t: torch.Tensor, freqs: torch.Tensor, config: Any) -> bool:
    return (
        getattr(config, _MARK, False)
        and not config.apply_rope_fusion
        and not config.rotary_interleaved
        and not config.multi_latent_attention
        and freqs.shape[-1] == t.shape[-1]  # full rotary: no pass-through dims
    )


def apply_rotary_pos_emb(
    t: torch.Tensor,
    freqs: torch.Tensor,
    config: Any,
    cu_seqlens: torch.Tensor | None = None,
    mscale: float = 1.0,
    cp_group: Any = None,
) -> torch.Tensor:
    """Drop-in for megatron's ``apply_rotary_pos_emb`` (same arguments): the compiled path for
    configs marked by `enable_compiled_rope`, megatron's own function for anything else.

    t: [s, b, h, d] (BSHD) or, with ``cu_seqlens``, [n, h, d] (THD, this CP rank's tokens).
    """
    if not _in_scope(t, freqs, config):
        return _megatron_apply_rotary_pos_emb(
            t, freqs, config=config, cu_seqlens=cu_seqlens, mscale=mscale, cp_group=cp_group
        )
    if cu_seqlens is None:
        return _compiled(rope_reference)(t, freqs, mscale)
    if cp_group is None:
        from megatron.core import parallel_state

        cp_group = parallel_state.get_context_parallel_group()
    if freqs.shape[0] == int(cu_seqlens[-1]) and cu_seqlens.numel() > 2:
        # Megatron then reads the table at packed offsets (its VLM "exact mapping"): keep its code.
        return _megatron_apply_rotary_pos_emb(
            t, freqs, config=config, cu_seqlens=cu_seqlens, mscale=mscale, cp_group=cp_group
        )
    positions = thd_positions(cu_seqlens, cp_group.size(), cp_group.rank())
    out = _compiled(rope_gathered_reference)(t.unsqueeze(1), freqs, positions, mscale)
    return out.squeeze(1)


def _install() -> None:
    """Rebind the name megatron's attention calls (once per process)."""
    global _megatron_apply_rotary_pos_emb
    from megatron.core.transformer import attention

    if attention.apply_rotary_pos_emb is apply_rotary_pos_emb:
        return
    _megatron_apply_rotary_pos_emb = attention.apply_rotary_pos_emb
    attention.apply_rotary_pos_emb = apply_rotary_pos_emb


def enable_compiled_rope(config: Any, enabled: bool = True) -> None:
    """Route the RoPE of every attention layer built from ``config`` (a megatron
    ``TransformerConfig``) through the compiled path; other configs keep megatron's.
    ``enabled=False`` sends ``config`` back to megatron's function (benchmarks compare both)."""
    _install()
    setattr(config, _MARK, enabled)


def compiled_rope_enabled(config: Any) -> bool:
    """Whether `enable_compiled_rope` marked ``config``."""
    from megatron.core.transformer import attention

    return bool(getattr(config, _MARK, False)) and (
        attention.apply_rotary_pos_emb is apply_rotary_pos_emb
    )

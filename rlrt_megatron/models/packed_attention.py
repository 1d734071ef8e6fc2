"""Causal attention over packed sequences (THD), with or without context parallelism. Pure torch.

A packed micro-batch is one row of ``t`` tokens holding several sequences back to back;
``cu_seqlens`` [n + 1] (int) gives their boundaries. Attention must stay inside each sequence and
be causal there: token i of sequence s sees tokens 0..i of s and nothing of the other sequences.

Without context parallelism (:func:`packed_causal_attention`) runs of consecutive equal-length
sequences are attended to in place (a view of the row is already a batch), and the other
sequences, gathered by similar length into right-padded batches; one
``scaled_dot_product_attention(is_causal=True)`` call each: fused kernels on CUDA and CPU, no
[t, t] mask and no score matrix kept.

With context parallelism over C ranks (:func:`context_parallel_causal_attention`) every
sequence (padded to a multiple of 2C tokens, length L) is cut into 2C chunks of m = L / 2C and
rank r holds chunks r and 2C − 1 − r (the load-balanced order of Megatron / Transformer Engine:
each rank gets one early, cheap chunk and one late, expensive one). A rank's queries of chunk c
(positions [c·m, (c+1)·m)) need the keys/values of positions [0, (c+1)·m) of their sequence,
which the caller all-gathers over the CP group (see :mod:`rlrt_megatron.models.cp_comm`). Query
i of the chunk then sees keys 0 .. c·m + i: a *lower-right aligned* causal mask of shape
[m, (c+1)·m]. On CUDA PyTorch's ``causal_lower_right`` bias runs it without a mask (flash /
memory-efficient kernels). On the CPU that bias would materialise the mask, and the CPU flash
kernel would keep it (and a GQA-expanded K/V) for the backward, so :class:`_PrefixCausalCPU`
splits the keys instead: the prefix [0, c·m) that every query sees whole (no mask) and the
chunk's own [c·m, (c+1)·m) (a square causal block), two CPU flash-attention calls merged by
their log-sum-exps; the backward runs the flash backward of each part against the *merged*
output and log-sum-exp (the ring-attention identity), so no mask and no score matrix exist.

Shapes: q [t_q, hq, d], k / v [t_k, hk, d] with hq a multiple of hk (grouped-query attention);
output [t_q, hq, d].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

# Kept for callers that pass it; the CPU path no longer tiles (see _PrefixCausalCPU).
QUERY_TILE = 1024

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _PrefixCausalCPU(torch.autograd.Function):
    """Attention of m queries at the end of a sequence of S keys, lower-right causal, on the
    CPU without a mask: q [h, m, d]; k, v [hk, S, d] (h a multiple of hk) -> [h, m, d].

    out = (e^{l1}·o1 + e^{l2}·o2) / (e^{l1} + e^{l2}) with (o1, l1) over the prefix keys
    [0, S − m) unmasked and (o2, l2) over the last m keys, square causal. Softmax probabilities
    under the merged log-sum-exp l are the true ones, so each part's flash backward with
    (out, l, dout) gives exactly its share of dq, dk, dv.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        groups = q.shape[0] // k.shape[0]
        ke, ve = (x.repeat_interleave(groups, dim=0) if groups > 1 else x for x in (k, v))
        prefix = k.shape[1] - q.shape[1]
        qb = q.unsqueeze(0)
        o1, l1 = _FLASH_CPU(qb, ke[None, :, :prefix], ve[None, :, :prefix], 0.0, False, scale=scale)
        o2, l2 = _FLASH_CPU(qb, ke[None, :, prefix:], ve[None, :, prefix:], 0.0, True, scale=scale)
        lse = torch.logaddexp(l1, l2)
        out = o1 * (l1 - lse).exp().unsqueeze(-1) + o2 * (l2 - lse).exp().unsqueeze(-1)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.groups, ctx.prefix = scale, groups, prefix
        return out.squeeze(0)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        groups, prefix, scale = ctx.groups, ctx.prefix, ctx.scale
        ke, ve = (x.repeat_interleave(groups, dim=0) if groups > 1 else x for x in (k, v))
        qb, g = q.unsqueeze(0), grad.unsqueeze(0).contiguous()
        dq1, dk1, dv1 = _FLASH_CPU_BACKWARD(
            g, qb, ke[None, :, :prefix], ve[None, :, :prefix], out, lse, 0.0, False, scale=scale
        )
        dq2, dk2, dv2 = _FLASH_CPU_BACKWARD(
            g, qb, ke[None, :, prefix:], ve[None, :, prefix:], out, lse, 0.0, True, scale=scale
        )
        dk = torch.cat([dk1, dk2], dim=2).squeeze(0)
        dv = torch.cat([dv1, dv2], dim=2).squeeze(0)
        if groups > 1:  # sum the gradient of each KV head over the query heads that share it
            dk = dk.unflatten(0, (k.shape[0], groups)).sum(1)
            dv = dv.unflatten(0, (v.shape[0], groups)).sum(1)
        return (dq1 + dq2).squeeze(0), dk, dv, None


def _sdpa(q, k, v, *, scale: float, dropout: float, is_causal: bool = False, mask=None):
    """SDPA on [h, s, d] tensors (adds and removes the batch dim)."""
    out = F.scaled_dot_product_attention(
        q.unsqueeze(0),
        k.unsqueeze(0),
        v.unsqueeze(0),
        attn_mask=mask,
        dropout_p=dropout,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=q.shape[0] != k.shape[0],
    )
    return out.squeeze(0)


def causal_suffix_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    dropout: float = 0.0,
    query_tile: int = QUERY_TILE,
) -> torch.Tensor:
    """Attention of the *last* m positions of a sequence over all of its S keys, causal.

    q [h, m, d] are the queries of positions S − m .. S − 1; k, v [hk, S, d]. Query i sees keys
    0 .. S − m + i (lower-right aligned causal mask). Returns [h, m, d].
    """
    m, s = q.shape[1], k.shape[1]
    if m > s:
        raise ValueError(f"{m} queries but only {s} keys")
    if m == s:
        return _sdpa(q, k, v, scale=scale, dropout=dropout, is_causal=True)
    if q.is_cuda:
        # Dispatched to a kernel with a built-in lower-right mask: nothing is materialised.
        return _sdpa(q, k, v, scale=scale, dropout=dropout, mask=causal_lower_right(m, s))
    if dropout == 0.0:
        return _PrefixCausalCPU.apply(q, k, v, scale)
    # Dropout (no Qwen3 model uses it) takes the masked path, tiled to bound the mask.
    parts = []
    for a in range(0, m, query_tile):
        b = min(query_tile, m - a)
        keys = s - m + a + b  # the tile's last query sees exactly this many keys
        parts.append(
            _sdpa(
                q[:, a : a + b],
                k[:, :keys],
                v[:, :keys],
                scale=scale,
                dropout=dropout,
                mask=causal_lower_right(b, keys),
            )
        )
    return torch.cat(parts, dim=1)


PADDING_SLACK = 0.25
"""How much attention work padding may add inside one bucket of `length_buckets` (0.25: the
padded n·L_max² may exceed the real Σ L² by 25%)."""


def length_buckets(lengths: Sequence[int], slack: float = PADDING_SLACK) -> list[list[int]]:
    """Sequences (indices into ``lengths``) grouped for batched attention, longest first.

    A bucket is padded to its longest sequence, so its causal attention costs about
    n·L_max² against the real Σ L²: sequences join the current bucket while that ratio stays
    within 1 + ``slack``. RL batches are dominated by responses near the length cap, so most
    sequences share one or two buckets, and one batched call replaces one call per distinct
    length (whose gathers and scatters cost more than the attention itself on small models)."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    longest, real = 0, 0
    for i in order:
        n = lengths[i]
        if buckets and (len(buckets[-1]) + 1) * longest**2 <= (1 + slack) * (real + n * n):
            buckets[-1].append(i)
            real += n * n
        else:
            buckets.append([i])
            longest, real = n, n * n
    return buckets


MIN_RUN_SEQUENCES = 4
"""Consecutive sequences of equal length that `packed_causal_attention` attends to in place (a
view of the packed row, no gather): a run needs at least this many. Shorter runs join the
gathered buckets, where one call covers sequences of several lengths."""


def equal_length_runs(
    lengths: Sequence[int], min_run: int = MIN_RUN_SEQUENCES
) -> list[tuple[int, int]]:
    """Runs (first sequence, count) of at least ``min_run`` consecutive, non-empty sequences of
    one length, in packed order.

    The micro-batch planner packs rollouts longest first (`plan_microbatches`), and RL batches
    are dominated by responses at the length cap, so most of a packed row is a few such runs."""
    runs, i = [], 0
    while i < len(lengths):
        j = i
        while j + 1 < len(lengths) and lengths[j + 1] == lengths[i]:
            j += 1
        if lengths[i] > 0 and j - i + 1 >= min_run:
            runs.append((i, j - i + 1))
        i = j + 1
    return runs


def packed_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: Sequence[int] | torch.Tensor,
    *,
    scale: float,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention confined to each packed sequence (no context parallelism).

    q [t, hq, d], k / v [t, hk, d]; ``cu_seqlens`` [n + 1] with cu_seqlens[-1] == t.
    Returns [t, hq, d].

    The row is cut (``split``: views, its backward one concatenation) into segments: each run of
    `equal_length_runs` is already a batch [count, L, h, d] of the packed row and goes through
    one causal SDPA call as it is; the sequences between runs are gathered by `_bucketed`. The
    segments' outputs are concatenated back in packed order. Without runs this is `_bucketed` on
    the whole row.
    """
    bounds = [int(x) for x in cu_seqlens]
    if bounds[0] != 0 or bounds[-1] != q.shape[0]:
        raise ValueError(f"cu_seqlens (ending at {bounds[-1]}) do not cover {q.shape[0]} tokens")
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    runs = equal_length_runs(lengths)
    if not runs:
        return _bucketed(q, k, v, bounds, scale=scale, dropout=dropout)
    gqa = q.shape[1] != k.shape[1]
    # Segments in packed order: ("run", count, L) or ("gather", first sequence, end sequence).
    segments: list[tuple[str, int, int]] = []
    sizes: list[int] = []
    seq = 0
    for first, count in runs:
        if first > seq:
            segments.append(("gather", seq, first))
            sizes.append(bounds[first] - bounds[seq])
        segments.append(("run", count, lengths[first]))
        sizes.append(count * lengths[first])
        seq = first + count
    if seq < len(lengths):
        segments.append(("gather", seq, len(lengths)))
        sizes.append(bounds[-1] - bounds[seq])
    outs = []
    for (kind, a, b), qs, ks, vs in zip(
        segments, q.split(sizes), k.split(sizes), v.split(sizes), strict=True
    ):
        if kind == "run":
            qb, kb, vb = (x.unflatten(0, (a, b)).transpose(1, 2) for x in (qs, ks, vs))
            res = F.scaled_dot_product_attention(
                qb, kb, vb, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa
            )  # [count, hq, L, d]
            outs.append(res.transpose(1, 2).flatten(0, 1))
        else:
            local = [x - bounds[a] for x in bounds[a : b + 1]]
            outs.append(_bucketed(qs, ks, vs, local, scale=scale, dropout=dropout))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _bucketed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds: list[int],
    *,
    scale: float,
    dropout: float,
) -> torch.Tensor:
    """`packed_causal_attention` by gathering: the sequences of a `length_buckets` bucket are
    gathered into one right-padded batch [n, h, L_max, d] and go through one causal SDPA call.

    Padding needs no mask: it sits after each sequence's last token, where the causal mask
    already hides it from every real query; the padded queries' outputs are never gathered back
    (so they get no gradient). A padded position repeats the sequence's last token, any real row
    would do.
    """
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    gqa = q.shape[1] != k.shape[1]
    parts, rows_of_token, offset = [], torch.empty(q.shape[0], dtype=torch.long), 0
    for bucket in length_buckets(lengths):
        width = lengths[bucket[0]]
        first = torch.tensor([starts[i] for i in bucket])
        count = torch.tensor([lengths[i] for i in bucket])
        steps = torch.arange(width)
        # [n·width] packed positions: each sequence, then its last token again up to the width
        index = (first[:, None] + torch.minimum(steps[None], count[:, None] - 1)).flatten()
        real = steps[None] < count[:, None]  # [n, width]
        rows = offset + torch.arange(len(bucket) * width).view(len(bucket), width)
        rows_of_token[index.view_as(real)[real]] = rows[real]
        offset += len(bucket) * width
        qb, kb, vb = (
            x.index_select(0, index.to(x.device)).unflatten(0, (len(bucket), width)).transpose(1, 2)
            for x in (q, k, v)
        )  # [n, h, width, d]
        res = F.scaled_dot_product_attention(
            qb, kb, vb, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa
        )
        parts.append(res.transpose(1, 2).flatten(0, 1))  # [n·width, hq, d]
    if not parts:
        return torch.empty_like(q)
    padded = parts[0] if len(parts) == 1 else torch.cat(parts)
    return padded.index_select(0, rows_of_token.to(padded.device))


def cp_chunk_bounds(
    cu_seqlens: Sequence[int] | torch.Tensor, cp_size: int, cp_rank: int
) -> list[tuple[int, int, int]]:
    """This rank's chunks: (sequence start, chunk index c, chunk length m) per sequence and chunk,
    in local order (sequence by sequence; chunk ``cp_rank`` then chunk 2C − 1 − ``cp_rank``)."""
    bounds = [int(x) for x in cu_seqlens]
    out = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        length = end - start
        if length % (2 * cp_size):
            raise ValueError(
                f"packed sequence at {start} has {length} tokens, not a multiple of 2·CP = "
                f"{2 * cp_size}"
            )
        m = length // (2 * cp_size)
        out += [(start, cp_rank, m), (start, 2 * cp_size - 1 - cp_rank, m)]
    return out


def cp_local_positions(
    cu_seqlens: Sequence[int] | torch.Tensor, cp_size: int, cp_rank: int
) -> torch.Tensor:
    """Global packed positions [t / C] held by ``cp_rank``, in its local order."""
    parts = [
        torch.arange(start + c * m, start + (c + 1) * m)
        for start, c, m in cp_chunk_bounds(cu_seqlens, cp_size, cp_rank)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def context_parallel_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: Sequence[int] | torch.Tensor,
    *,
    cp_size: int,
    cp_rank: int,
    scale: float,
    dropout: float = 0.0,
    query_tile: int = QUERY_TILE,
) -> torch.Tensor:
    """Causal attention of one CP rank's packed queries over the gathered keys/values.

    q [t / C, hq, d]: this rank's tokens in the load-balanced local order (see the module
    docstring); k, v [t, hk, d]: every token of the micro-batch in the *global* packed order
    (gathered over the CP group); ``cu_seqlens`` [n + 1]: the global boundaries, each sequence
    a multiple of 2C. Returns [t / C, hq, d] in the local order.
    """
    qh, kh, vh = (x.transpose(0, 1) for x in (q, k, v))  # [h, t, d]
    parts = []
    offset = 0
    for start, c, m in cp_chunk_bounds(cu_seqlens, cp_size, cp_rank):
        if m == 0:
            continue
        keys = slice(start, start + (c + 1) * m)
        parts.append(
            causal_suffix_attention(
                qh[:, offset : offset + m],
                kh[:, keys],
                vh[:, keys],
                scale=scale,
                dropout=dropout,
                query_tile=query_tile,
            )
        )
        offset += m
    if offset != q.shape[0]:
        raise ValueError(f"cu_seqlens give this rank {offset} tokens, queries have {q.shape[0]}")
    return torch.cat(parts, dim=1).transpose(0, 1)

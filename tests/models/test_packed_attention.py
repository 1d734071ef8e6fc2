"""Packed (THD) causal attention and its context-parallel split against a dense reference."""

from __future__ import annotations

import math

import pytest
import torch

from rlrt_megatron.models.packed_attention import (
    causal_suffix_attention,
    context_parallel_causal_attention,
    cp_chunk_bounds,
    cp_local_positions,
    equal_length_runs,
    length_buckets,
    packed_causal_attention,
)


def dense_reference(q, k, v, cu_seqlens, scale):
    """Explicit [t, t] document-causal mask (the definition): token i sees j iff same sequence
    and j <= i. q [t, hq, d], k/v [t, hk, d]."""
    t, hq, _ = q.shape
    hk = k.shape[1]
    seq = torch.zeros(t, dtype=torch.long)
    for i, (a, b) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True)):
        seq[a:b] = i
    pos = torch.arange(t)
    allowed = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])
    k = k.repeat_interleave(hq // hk, dim=1)
    v = v.repeat_interleave(hq // hk, dim=1)
    scores = torch.einsum("ihd,jhd->hij", q, k) * scale
    scores = scores.masked_fill(~allowed, -math.inf)
    return torch.einsum("hij,jhd->ihd", scores.softmax(-1), v)


def random_qkv(t, hq=4, hk=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, h, d, generator=g, dtype=torch.float64) for h in (hq, hk, hk))


@pytest.mark.parametrize("lengths", [[1], [5, 1, 7, 7, 3], [16, 16], [2, 9, 1, 1, 30]])
def test_packed_attention_equals_document_causal_mask(lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    q, k, v = random_qkv(cu[-1])
    out = packed_causal_attention(q, k, v, cu, scale=0.3)
    torch.testing.assert_close(out, dense_reference(q, k, v, cu, 0.3), atol=1e-10, rtol=0)


@pytest.mark.parametrize("slack", [0.0, 0.25, 10.0])
def test_length_buckets_cover_each_sequence_once_within_the_padding_slack(slack):
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 60, (200,), generator=g).tolist()
    buckets = length_buckets(lengths, slack)
    held = sorted(i for bucket in buckets for i in bucket)
    assert held == [i for i, n in enumerate(lengths) if n > 0]  # empty sequences need nothing
    for bucket in buckets:
        widths = [lengths[i] for i in bucket]
        assert widths == sorted(widths, reverse=True)  # padded to its first (longest) sequence
        assert len(bucket) * widths[0] ** 2 <= (1 + slack) * sum(n * n for n in widths)
    if slack == 10.0:  # a generous slack takes this mix in very few calls
        assert len(buckets) <= 3


def test_packed_attention_gradients_match_the_reference_across_several_buckets():
    """Lengths 30 and 1..3 cannot share a bucket at the default slack: two padded calls, one
    scatter back; values and gradients as the document-causal definition."""
    lengths = [2, 30, 1, 29, 3, 30, 1]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    assert len(length_buckets(lengths)) > 1
    assert_values_and_gradients_match_the_reference(cu, hq=4, hk=2, seed=5, scale=0.35)


def assert_values_and_gradients_match_the_reference(cu, *, hq, hk, seed, scale):
    """packed_causal_attention's output and q/k/v gradients (of a weighted sum) equal the dense
    document-causal definition's at 1e-10 (float64)."""
    q, k, v = (x.requires_grad_() for x in random_qkv(cu[-1], hq=hq, hk=hk, seed=seed))
    weights = torch.linspace(-1, 1, cu[-1] * hq * 8, dtype=q.dtype).view(cu[-1], hq, 8)
    out = packed_causal_attention(q, k, v, cu, scale=scale)
    (out * weights).sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    reference = dense_reference(q, k, v, cu, scale)
    (reference * weights).sum().backward()
    torch.testing.assert_close(out, reference, atol=1e-10, rtol=0)
    for got, x in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, x.grad, atol=1e-10, rtol=0)


def test_equal_length_runs_need_min_run_consecutive_nonempty_sequences():
    lengths = [9, 9, 9, 9, 5, 3, 3, 3, 0, 0, 0, 0, 7, 7, 7, 7, 7]
    assert equal_length_runs(lengths, min_run=4) == [(0, 4), (12, 5)]
    assert equal_length_runs(lengths, min_run=3) == [(0, 4), (5, 3), (12, 5)]
    assert equal_length_runs([4, 5, 4, 5], min_run=2) == []  # equal, but not consecutive
    assert equal_length_runs([], min_run=1) == []


@pytest.mark.parametrize(
    "lengths",
    [
        [6] * 5,  # one run: the whole row, no gather
        [9] * 4 + [8] * 4 + [3, 1],  # two runs, then a gathered tail
        [2, 5, 1] + [7] * 6 + [0, 4] + [3] * 4 + [2],  # gathered head, middle and tail, empty seq
        [11] * 3 + [4] * 2,  # runs shorter than MIN_RUN_SEQUENCES: all gathered
    ],
)
@pytest.mark.parametrize("heads", [(4, 2), (4, 4)])
def test_packed_attention_in_place_runs_match_the_reference_values_and_gradients(lengths, heads):
    """Runs of >= MIN_RUN_SEQUENCES equal lengths are attended to as views of the packed row,
    the sequences between them are gathered: values and gradients as the document-causal
    definition (grouped-query and plain heads)."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    hq, hk = heads
    assert_values_and_gradients_match_the_reference(cu, hq=hq, hk=hk, seed=len(lengths), scale=0.3)


def test_packed_attention_rejects_boundaries_that_miss_tokens():
    q, k, v = random_qkv(10)
    with pytest.raises(ValueError, match="do not cover 10 tokens"):
        packed_causal_attention(q, k, v, [0, 4, 9], scale=1.0)


@pytest.mark.parametrize("tile", [1, 3, 1024])
def test_causal_suffix_attention_is_the_tail_of_full_causal_attention(tile):
    q, k, v = random_qkv(12)
    full = dense_reference(q, k, v, [0, 12], 0.5)
    qh, kh, vh = (x.transpose(0, 1) for x in (q, k, v))
    tail = causal_suffix_attention(qh[:, 7:], kh, vh, scale=0.5, query_tile=tile)
    torch.testing.assert_close(tail.transpose(0, 1), full[7:], atol=1e-10, rtol=0)


def test_cp_chunks_are_load_balanced_and_cover_every_position_once():
    cu = [0, 8, 12, 28]  # multiples of 2·CP = 4
    held = [cp_local_positions(cu, 2, r) for r in range(2)]
    assert sorted(torch.cat(held).tolist()) == list(range(28))
    # rank 0 holds chunks 0 and 3 of each sequence, rank 1 chunks 1 and 2
    assert held[0].tolist()[:4] == [0, 1, 6, 7]
    assert held[1].tolist()[:4] == [2, 3, 4, 5]
    assert [c for _, c, _ in cp_chunk_bounds(cu, 2, 1)] == [1, 2, 1, 2, 1, 2]
    with pytest.raises(ValueError, match="not a multiple of 2·CP = 4"):
        cp_chunk_bounds([0, 6], 2, 0)


@pytest.mark.parametrize("cp", [2, 3])
def test_context_parallel_ranks_together_equal_packed_attention(cp):
    lengths = [2 * cp, 6 * cp, 2 * cp, 10 * cp]  # each a multiple of 2·CP
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    q, k, v = random_qkv(cu[-1], seed=cp)
    reference = dense_reference(q, k, v, cu, 0.25)
    out = torch.zeros_like(reference)
    for rank in range(cp):
        held = cp_local_positions(cu, cp, rank)
        local = context_parallel_causal_attention(
            q[held], k, v, cu, cp_size=cp, cp_rank=rank, scale=0.25, query_tile=5
        )
        out[held] = local
    torch.testing.assert_close(out, reference, atol=1e-10, rtol=0)


def test_packed_attention_gradients_match_the_reference():
    cu = [0, 3, 10, 11]
    q, k, v = (x.requires_grad_() for x in random_qkv(11))
    packed_causal_attention(q, k, v, cu, scale=0.4).square().sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    dense_reference(q, k, v, cu, 0.4).square().sum().backward()
    for got, x in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, x.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_causal_suffix_attention_gradients_match_the_reference(groups):
    """The CPU path merges a prefix and a causal part by log-sum-exp; its backward must give the
    full-attention gradients (q of the last 5 positions, k/v of all 12)."""
    q, k, v = random_qkv(12, hq=4, hk=4 // groups, seed=7)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    qh, kh, vh = (x.transpose(0, 1) for x in (q, k, v))
    tail = causal_suffix_attention(qh[:, 7:], kh, vh, scale=0.5)
    weights = torch.linspace(-1, 1, tail.numel(), dtype=tail.dtype).view_as(tail)
    (tail * weights).sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    full = dense_reference(q, k, v, [0, 12], 0.5)[7:].transpose(0, 1)
    (full * weights).sum().backward()
    for got, x in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, x.grad, atol=1e-10, rtol=0)
    assert grads[0][:7].abs().max() == 0  # queries outside the suffix get nothing

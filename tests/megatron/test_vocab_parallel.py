"""Vocab-parallel chunked log-prob / entropy / KL / top-k against a float64 full-softmax reference,
in one process (group=None) and at TP=2 over gloo."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from rlrt_megatron.megatron.vocab_common import DEFAULT_CHUNK_BYTES, chunk_rows, pad_vocab_size
from rlrt_megatron.megatron.vocab_parallel import (
    vocab_parallel_log_prob,
    vocab_parallel_log_prob_entropy,
    vocab_parallel_pair_stats,
    vocab_parallel_topk,
)

sys.path.insert(0, os.path.dirname(__file__))
import _vp_reference as ref  # noqa: E402


@pytest.mark.parametrize("chunk", ["case", 1, None])
@pytest.mark.parametrize("name,case", ref.CASES, ids=[c[0] for c in ref.CASES])
def test_single_process_matches_reference(name, case, chunk):
    case = dict(case)
    case["v_local"] = 2 * case["v_local"]  # one process holds the whole padded vocabulary
    if chunk != "case":
        case["chunk_size"] = chunk
    ref.run_checks(group=None, rank=0, world=1, **case)


@pytest.mark.distributed
def test_tp2_gloo_matches_reference():
    ref.spawn_checks(world=2)


def test_no_padding_declared():
    s, t, y = ref.make_case(9, 200, 200, torch.float32)
    lp, h = vocab_parallel_log_prob_entropy(s, y, chunk_size=4)
    ls = ref.ref_log_softmax(s, 200)
    torch.testing.assert_close(lp.double(), ls.gather(1, y[:, None])[:, 0], atol=1e-5, rtol=0)
    tk = vocab_parallel_topk(s, k=200)  # k = whole vocabulary: empty complement
    assert tk.teacher_log_prob is None and torch.all(tk.student_tail == -torch.inf)
    torch.testing.assert_close(tk.student_log_prob.exp().sum(1), torch.ones(9))


def test_padded_target_has_zero_probability():
    s, _, y = ref.make_case(6, 300, 512, torch.float32)
    y[2] = 300  # first padded id
    lp = vocab_parallel_log_prob(s, y, vocab_size=300)
    assert lp[2] == -torch.inf and torch.isfinite(lp[[0, 1, 3, 4, 5]]).all()


def test_tails_accurate_when_top_k_holds_almost_all_mass():
    # Top-10 logits at +80: the rest holds ~e^-80 of the mass, far below fp32's 1 − Σp resolution.
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 256, generator=g)
    s[:, :10] += 80.0
    t = torch.randn(5, 256, generator=g)
    t[:, :10] += 60.0
    x = s.clone().requires_grad_()
    tk = vocab_parallel_topk(x, t, k=10, vocab_size=250, chunk_size=2)
    ls_s, ls_t = ref.ref_log_softmax(s, 250), ref.ref_log_softmax(t, 250)
    _, want_s, _, want_t = ref.ref_topk(ls_s, ls_t, tk.ids)
    assert (want_s < -75).all()
    torch.testing.assert_close(tk.student_tail.double(), want_s, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(tk.teacher_tail.double(), want_t, atol=1e-4, rtol=1e-6)
    tk.student_tail.sum().backward()  # d tail/dz_v = 1[v∉K]·p_v/P(∉K) − p_v: finite, ~O(1)
    assert torch.isfinite(x.grad).all() and x.grad[:, 10:250].sum(1).sub(1).abs().max() < 1e-4


def test_autograd_saves_no_full_fp32_copy():
    """The Functions keep the (un-copied) input and per-token statistics only."""
    n, v = 64, 512
    logits = torch.randn(n, v, dtype=torch.bfloat16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, h = vocab_parallel_log_prob_entropy(logits, torch.zeros(n, dtype=torch.long))
        tk = vocab_parallel_topk(logits, k=8)
    big = [t for t in saved if t.numel() >= n * v // 4 and t.data_ptr() != logits.data_ptr()]
    assert not big, [(t.shape, t.dtype) for t in big]
    (lp.sum() + h.sum() + tk.student_log_prob.sum() + tk.student_tail.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16


def test_chunk_rows_budget_and_validation():
    rows = chunk_rows(None, 151_936, n_buffers=2)
    assert rows * 151_936 * 4 * 2 <= DEFAULT_CHUNK_BYTES and rows >= 100
    assert chunk_rows(7, 151_936, 2) == 7
    assert pad_vocab_size(151_669, 2) == 151_808 and pad_vocab_size(151_936, 1) == 151_936
    with pytest.raises(ValueError):
        chunk_rows(0, 10, 1)
    with pytest.raises(ValueError):
        vocab_parallel_topk(torch.randn(3, 256), k=101, vocab_size=100)
    with pytest.raises(ValueError):
        vocab_parallel_pair_stats(torch.randn(3, 8), torch.randn(3, 9))


def test_kl_accurate_from_tiny_to_large():
    """Tiny KLs keep their relative accuracy (fp32 log-softmax differences have a ~1e-6 floor);
    rows where the teacher puts e^40 more mass on a token take the direct branch."""
    g = torch.Generator().manual_seed(5)
    s = torch.randn(8, 4096, generator=g) * 3.0
    scale = torch.tensor([1e-4, 1e-3, 1e-2, 1.0, 3.0, 1e-3, 1.0, 0.0])[:, None]
    t = s + torch.randn(8, 4096, generator=g) * scale
    t[5:7, 7] += 45.0  # rows 5, 6: u < −30 at one token
    for temperature in (1.0, 0.7):
        ls_s = ref.ref_log_softmax(s, 4000, temperature)
        ls_t = ref.ref_log_softmax(t, 4000, temperature)
        want = (ls_s.exp() * (ls_s - ls_t)).sum(dim=1)
        got = vocab_parallel_pair_stats(
            s, t, vocab_size=4000, chunk_size=3, temperature=temperature
        ).kl
        assert got[7] == 0 and want[0] < 1e-7
        torch.testing.assert_close(got[:7].double(), want[:7], rtol=2e-4, atol=1e-6 * want[3])

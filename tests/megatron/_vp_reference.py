"""Float64 full-softmax references for the vocab-parallel functions, and one check routine that
runs every function on this rank's vocab slice against them (used in-process with group=None and
by each rank of a gloo spawn)."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist

from rlrt_megatron.megatron.vocab_parallel import (
    vocab_parallel_entropy,
    vocab_parallel_log_prob,
    vocab_parallel_log_prob_entropy,
    vocab_parallel_pair_stats,
    vocab_parallel_topk,
)

PAD_LOGIT = 40.0  # padded columns get huge logits: any leak into a max, sum or top-k shows


def make_case(n, vocab_size, v_pad, dtype, seed=0, boundaries=()):
    """Student/teacher logits [n, v_pad] (padded columns = PAD_LOGIT) in ``dtype``, and targets
    that include every id in ``boundaries`` (shard edges) and random real ids elsewhere."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v_pad, generator=g) * 3.0
    t = s + torch.randn(n, v_pad, generator=g) * 1.5
    s[:, vocab_size:] = PAD_LOGIT
    t[:, vocab_size:] = PAD_LOGIT
    y = torch.randint(0, vocab_size, (n,), generator=g)
    for i, b in enumerate(boundaries):
        y[i] = b
    return s.to(dtype), t.to(dtype), y


def ref_log_softmax(logits, vocab_size, temperature=1.0):
    """log P over the real vocabulary in float64: [n, vocab_size]."""
    return torch.log_softmax(logits[:, :vocab_size].double() / temperature, dim=-1)


def ref_topk(ls_s, ls_t, ids):
    """Reference top-k quantities at given ids (float64): log-probs and complement tails."""
    mask = torch.zeros_like(ls_s, dtype=torch.bool).scatter_(1, ids, True)
    ninf = torch.tensor(-torch.inf, dtype=ls_s.dtype)
    return (
        ls_s.gather(1, ids),
        torch.logsumexp(torch.where(mask, ninf, ls_s), dim=1),
        ls_t.gather(1, ids),
        torch.logsumexp(torch.where(mask, ninf, ls_t), dim=1),
    )


def _close(name, got, want, atol, rtol=0.0):
    got = got.double()
    err = (got - want).abs()
    tol = atol + rtol * want.abs()
    bad = ~(err <= tol)
    assert not bad.any(), f"{name}: max err {err.max().item():.3g} (atol {atol}, rtol {rtol})"


def run_checks(
    *,
    group,
    rank,
    world,
    n,
    vocab_size,
    v_local,
    dtype,
    chunk_size,
    temperature=1.0,
    k=100,
    seed=0,
):
    """Compare all functions on rank ``rank``'s slice [rank·v_local, (rank+1)·v_local) with the
    float64 references (values and gradients). Raises AssertionError on any mismatch."""
    v_pad = v_local * world
    start = rank * v_local
    edges = [0, vocab_size - 1, 127, 128, 255, 256]
    edges += [b for r in range(1, world) for b in (r * v_local - 1, r * v_local)]
    edges = [b for b in edges if b < vocab_size]
    s_full, t_full, y = make_case(n, vocab_size, v_pad, dtype, seed, edges)
    kw = dict(
        group=group,
        vocab_start=start,
        vocab_size=vocab_size,
        chunk_size=chunk_size,
        temperature=temperature,
    )
    lo, hi = start, start + v_local
    real_hi = min(hi, vocab_size)  # this rank's real columns: [lo, real_hi)
    n_loc_real = max(0, real_hi - lo)
    bf16 = dtype == torch.bfloat16
    v_atol = 2e-5 if not bf16 else 5e-5  # values: fp32 math on the same (upcast) inputs

    def grad_close(name, got, want_full):
        assert got.dtype == dtype, f"{name}: grad dtype {got.dtype}"
        want = torch.zeros(n, v_local, dtype=torch.float64)
        want[:, :n_loc_real] = want_full[:, lo : lo + n_loc_real]
        assert torch.all(got[:, n_loc_real:] == 0), f"{name}: padded columns got gradient"
        scale = want_full.abs().max().item()
        _close(name, got.double(), want, atol=(1e-2 if bf16 else 1e-5) * scale)

    s_loc = s_full[:, lo:hi].clone()
    t_loc = t_full[:, lo:hi].clone()
    s_keep, t_keep = s_loc.clone(), t_loc.clone()
    g = torch.Generator().manual_seed(seed + 1)
    g_lp, g_h = torch.randn(n, generator=g), torch.randn(n, generator=g)

    # ---- log-prob + entropy, values and gradients -----------------------------------------
    ref_in = s_full.double().requires_grad_()
    ls = ref_log_softmax(ref_in, vocab_size, temperature)
    ref_lp = ls.gather(1, y.unsqueeze(1)).squeeze(1)
    ref_h = -(ls.exp() * ls).sum(dim=1)
    (ref_lp * g_lp + ref_h * g_h).sum().backward()

    x = s_loc.clone().requires_grad_()
    lp, h = vocab_parallel_log_prob_entropy(x, y, **kw)
    assert lp.dtype == h.dtype == torch.float32 and lp.shape == (n,)
    _close("log_prob", lp, ref_lp.detach(), v_atol)
    _close("entropy", h, ref_h.detach(), v_atol)
    (lp * g_lp + h * g_h).sum().backward()
    grad_close("log_prob+entropy grad", x.grad, ref_in.grad)
    assert torch.equal(x.detach(), s_keep), "logits were mutated"

    # single-output wrappers and leading dims [S, B]
    x = s_loc.clone().view(n, 1, v_local).requires_grad_()
    h2 = vocab_parallel_entropy(x, **kw)
    assert h2.shape == (n, 1)
    _close("entropy wrapper", h2.squeeze(1), ref_h.detach(), v_atol)
    ref_in = s_full.double().requires_grad_()
    ls = ref_log_softmax(ref_in, vocab_size, temperature)
    (-(ls.exp() * ls).sum(dim=1) * g_h).sum().backward()
    (h2.squeeze(1) * g_h).sum().backward()
    grad_close("entropy grad", x.grad.view(n, v_local), ref_in.grad)
    _close("log_prob wrapper", vocab_parallel_log_prob(s_loc, y, **kw), ref_lp.detach(), v_atol)

    # ---- pair stats: KL, target log-probs of both views, markers --------------------------
    ls_s = ref_log_softmax(s_full, vocab_size, temperature)
    ls_t = ref_log_softmax(t_full, vocab_size, temperature)
    ref_kl = (ls_s.exp() * (ls_s - ls_t)).sum(dim=1)
    d = ls_s - ls_t
    st = vocab_parallel_pair_stats(s_loc, t_loc, y, markers=True, **kw)
    _close("kl", st.kl, ref_kl, v_atol, 1e-5)
    _close("pair student_log_prob", st.student_log_prob, ls_s.gather(1, y[:, None])[:, 0], v_atol)
    _close("pair teacher_log_prob", st.teacher_log_prob, ls_t.gather(1, y[:, None])[:, 0], v_atol)
    _close("pair student_entropy", st.student_entropy, -(ls_s.exp() * ls_s).sum(1), v_atol)
    _close("explore value", st.explore_log_ratio, d.max(dim=1).values, v_atol)
    _close("exploit value", st.exploit_log_ratio, d.min(dim=1).values, v_atol)
    assert (st.explore_id < vocab_size).all() and (st.exploit_id < vocab_size).all()
    if not bf16:
        assert torch.equal(st.explore_id, d.argmax(dim=1)), "explore ids"
        assert torch.equal(st.exploit_id, d.argmin(dim=1)), "exploit ids"
    same = vocab_parallel_pair_stats(s_loc, s_loc, **kw).kl
    assert torch.all(same == 0), "KL(P‖P) must be exactly 0"

    # ---- top-k with tails, values and gradient -------------------------------------------
    x = s_loc.clone().requires_grad_()
    tk = vocab_parallel_topk(x, t_loc, k=k, **kw)
    assert tk.ids.shape == (n, k) and tk.student_tail.shape == (n,)
    assert (tk.ids >= 0).all() and (tk.ids < vocab_size).all(), "padded/invalid id in top-k"
    assert all(len(set(r.tolist())) == k for r in tk.ids), "duplicate ids in top-k"
    ref_vals, ref_ids = ls_s.topk(k, dim=1)
    if not bf16:
        assert torch.equal(tk.ids, ref_ids), "top-k ids differ from the reference"
    # sorted, and the selected set is a true top-k (value-wise, robust to ties)
    _close("top-k values", tk.student_log_prob, ref_vals, v_atol)
    r_slp, r_stail, r_tlp, r_ttail = ref_topk(ls_s, ls_t, tk.ids)
    _close("student top-k log-prob", tk.student_log_prob, r_slp, v_atol)
    _close("student tail", tk.student_tail, r_stail, v_atol, 1e-5)
    _close("teacher top-k log-prob", tk.teacher_log_prob, r_tlp, v_atol)
    _close("teacher tail", tk.teacher_tail, r_ttail, v_atol, 1e-5)
    g_k, g_t = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    ((tk.student_log_prob * g_k).sum() + (tk.student_tail * g_t).sum()).backward()
    ref_in = s_full.double().requires_grad_()
    r = ref_topk(ref_log_softmax(ref_in, vocab_size, temperature), ls_t, tk.ids)
    ((r[0] * g_k).sum() + (r[1] * g_t).sum()).backward()
    grad_close("top-k grad", x.grad, ref_in.grad)
    assert torch.equal(x.detach(), s_keep) and torch.equal(t_loc, t_keep), "logits were mutated"


CASES = [
    # name, kwargs for run_checks (world/rank/group filled in by the caller)
    ("fp32", dict(n=37, vocab_size=300, v_local=256, dtype=torch.float32, chunk_size=5)),
    (
        "bf16_temp",
        dict(
            n=29,
            vocab_size=300,
            v_local=256,
            dtype=torch.bfloat16,
            chunk_size=7,
            temperature=0.7,
            k=20,
        ),
    ),
    # rank 1 of 2 holds no real column at all (vocab 310 < v_local 320)
    ("empty_shard", dict(n=11, vocab_size=310, v_local=320, dtype=torch.float32, chunk_size=4)),
]


def _worker(rank, world, init_file):
    torch.set_num_threads(1)  # CI has 2 cores shared by both ranks
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, case in CASES:
            try:
                run_checks(group=dist.group.WORLD, rank=rank, world=world, **case)
            except AssertionError as e:
                raise AssertionError(f"[rank {rank}, case {name}] {e}") from e
    finally:
        dist.destroy_process_group()


def spawn_checks(world=2):
    """Run every case in CASES on ``world`` gloo processes (each checks its own vocab slice)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(world, os.path.join(d, "init")), nprocs=world, join=True)

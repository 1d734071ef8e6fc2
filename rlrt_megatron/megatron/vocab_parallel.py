"""Vocab-parallel, token-chunked log-probs, entropy, KL and top-k over tensor-parallel logits.

Megatron's output layer gives every TP rank the logits of a contiguous slice of the padded
vocabulary: ``logits`` [N, V_local] (callers flatten [S, B] into N = S·B tokens; any leading
shape is accepted and flattened, a view for contiguous input). The real vocabulary has
``vocab_size`` ids; the padding Megatron adds at the end never receives probability mass, never
enters a top-k and gets exactly zero gradient.

Notation (per token n; z = logits / temperature over the real vocabulary, gathered across ranks):
    lse      = log Σ_v exp(z_v)                  (all-reduce of a max, then of a sum of exps)
    log p_v  = z_v − lse
    H        = −Σ_v p_v log p_v = lse − Σ_v p_v z_v
    KL(S‖T)  = Σ_v p^S_v (log p^S_v − log p^T_v)

Memory: the work is done in chunks of tokens (``chunk_size`` tokens, or by default what keeps
the chunk's fp32 buffers within ``DEFAULT_CHUNK_BYTES``), so no [N, V_local] fp32 tensor is ever
materialized; bf16 logits are upcast one chunk at a time. The functions with gradients are
``torch.autograd.Function`` s that save only the (un-copied) input logits and [N]-sized
statistics, and recompute each chunk's softmax in backward. Their gradient is local to each rank
(the logits are sharded, not replicated), so backward needs no collective — unlike naive
autograd through an all-reduce, which gets the entropy gradient wrong.

The logits are never mutated (Megatron's own ``vocab_parallel_cross_entropy`` does mutate them).
All outputs are float32. Logits must be finite (Megatron's are).

Every TP rank of ``group`` must call these functions with the same N, ``chunk_size`` and
arguments (they run collectives per chunk). ``group=None`` means one process holding the whole
(possibly padded) vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from rlrt_megatron.megatron.vocab_common import (
    DEFAULT_CHUNK_BYTES,
    Shard,
    chunk_rows,
    chunks,
    flatten_logits,
    pad_vocab_size,
    row_max,
    row_min,
    upcast,
    workspace,
)
from rlrt_megatron.megatron.vocab_topk import TopK, vocab_parallel_topk

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "PairStats",
    "TopK",
    "pad_vocab_size",
    "vocab_parallel_entropy",
    "vocab_parallel_kl",
    "vocab_parallel_log_prob",
    "vocab_parallel_log_prob_entropy",
    "vocab_parallel_pair_stats",
    "vocab_parallel_topk",
]

_MAX = dist.ReduceOp.MAX
_SUM = dist.ReduceOp.SUM


# --------------------------------------------------------------------------------------------
# log p(target) and entropy, with gradient
# --------------------------------------------------------------------------------------------


class _LogProbEntropy(torch.autograd.Function):
    """(log p(target), H) per token; backward recomputes each chunk's softmax.

    Gradients w.r.t. the local logits z_v (v on this rank), for upstream grads g_lp, g_H:
        ∂ log p_y / ∂z_v = 1[v = y] − p_v
        ∂ H / ∂z_v       = −p_v (log p_v + H)
    so  ∂L/∂z_v = g_lp·1[v = y] − p_v·(g_lp + g_H·(log p_v + H)),  times 1/temperature.
    """

    @staticmethod
    def forward(ctx, logits, target, shard: Shard, rows: int, temperature: float):
        n = logits.shape[0]
        nv = shard.n_valid
        logp = torch.empty(n, dtype=torch.float32, device=logits.device)
        ent = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        loc_all, inside_all = shard.local_index(target)
        ws = workspace(2, rows, n, nv, logits.device)
        for s, e in chunks(n, rows):
            z = upcast(logits, s, e, nv, temperature, ws[0, e - s])  # [c, nv] fp32
            m = shard.all_reduce(row_max(z), _MAX)
            z.sub_(m.unsqueeze(1))  # z − m ≤ 0
            ez = torch.exp(z, out=ws[1, e - s])
            loc, inside = loc_all[s:e], inside_all[s:e]
            zy = z.gather(1, loc.unsqueeze(1)).squeeze(1) if nv else torch.zeros_like(m)
            ssum = ez.sum(dim=1)  # S = Σ exp(z − m)
            # Σ exp(z − m)(z − m): an elementwise product then torch's cascade sum, which is
            # ~5x more accurate over 150k columns than a dot product's running fp32 sum.
            ezz = z.mul_(ez).sum(dim=1)
            del ez, z
            stats = torch.stack(
                [
                    ssum,
                    ezz,
                    torch.where(inside, zy, torch.zeros_like(zy)),  # z_y − m (owner rank only)
                    inside.to(torch.float32),  # how many ranks own the target (0: padded id)
                ]
            )
            ssum, ezz, zy, found = shard.all_reduce(stats, _SUM)
            log_s = torch.log(ssum)
            lse[s:e] = m + log_s
            ent[s:e] = log_s - ezz / ssum
            # A target outside the real vocabulary has probability 0.
            logp[s:e] = torch.where(found > 0, zy - log_s, torch.full_like(zy, -torch.inf))
        ctx.save_for_backward(logits, target, lse, ent)
        ctx.shard, ctx.rows, ctx.temperature = shard, rows, temperature
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, target, lse, ent = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        shard, rows, temperature = ctx.shard, ctx.rows, ctx.temperature
        nv = shard.n_valid
        grad = torch.zeros_like(logits)  # padded columns: exactly 0
        if nv == 0:
            return grad, None, None, None, None
        loc_all, inside_all = shard.local_index(target)
        ws = workspace(2, rows, logits.shape[0], nv, logits.device)
        for s, e in chunks(logits.shape[0], rows):
            z = upcast(logits, s, e, nv, temperature, ws[0, e - s])
            z.sub_(lse[s:e].unsqueeze(1))  # log p
            p = torch.exp(z, out=ws[1, e - s])
            glp = g_logp[s:e].float().unsqueeze(1)
            gh = g_ent[s:e].float().unsqueeze(1)
            # z <- −p·(g_lp + g_H·(log p + H))
            z.add_(ent[s:e].unsqueeze(1)).mul_(gh).add_(glp).mul_(p).neg_()
            del p
            src = torch.where(inside_all[s:e].unsqueeze(1), glp, torch.zeros_like(glp))
            z.scatter_add_(1, loc_all[s:e].unsqueeze(1), src)
            if temperature != 1.0:
                z.div_(temperature)
            grad[s:e, :nv].copy_(z)
        return grad, None, None, None, None


def vocab_parallel_log_prob_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    vocab_start: int = 0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``target`` and entropy of the full distribution, per token, with gradients.

    Args:
        logits: [..., V_local] this rank's vocab slice (bf16/fp16/fp32); not modified.
        target: [...] int64 *global* token ids (the same on every TP rank).
        group: TP process group; ``None`` for a single process holding all columns.
        vocab_start: global id of this rank's first column (``rank · V_local`` in Megatron).
        vocab_size: real (unpadded) vocabulary size; ``None``: no padding.
        chunk_size: tokens per chunk; ``None`` picks one from ``DEFAULT_CHUNK_BYTES``.
        temperature: logits are divided by it (sampling temperature).

    Returns:
        (log_prob, entropy), each [...] float32:
        log_prob = z_y − logsumexp_v z_v  (−inf if y is not a real token id),
        entropy  = logsumexp_v z_v − Σ_v p_v z_v,  z = logits / temperature over real ids.
        Both backprop into ``logits`` (gradient in the logits' dtype, 0 on padded columns).
    """
    flat, lead = flatten_logits(logits)
    shard = Shard.make(flat.shape[1], group, vocab_start, vocab_size)
    rows = chunk_rows(chunk_size, shard.n_valid, n_buffers=2)
    tgt = target.reshape(-1).to(device=flat.device, dtype=torch.long)
    if tgt.numel() != flat.shape[0]:
        raise ValueError(f"target has {tgt.numel()} tokens, logits {flat.shape[0]}")
    logp, ent = _LogProbEntropy.apply(flat, tgt, shard, rows, float(temperature))
    return logp.view(lead), ent.view(lead)


def vocab_parallel_log_prob(logits: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
    """Log-prob of ``target``: [...] float32, with gradient. Keyword arguments and shapes as in
    :func:`vocab_parallel_log_prob_entropy` (the entropy comes free in the same pass)."""
    return vocab_parallel_log_prob_entropy(logits, target, **kwargs)[0]


def vocab_parallel_entropy(logits: torch.Tensor, **kwargs) -> torch.Tensor:
    """Entropy H = −Σ_v p_v log p_v over the real vocabulary: [...] float32, with a correct
    gradient across TP shards. Keyword arguments as in :func:`vocab_parallel_log_prob_entropy`."""
    dummy = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return vocab_parallel_log_prob_entropy(logits, dummy, **kwargs)[1]


# --------------------------------------------------------------------------------------------
# Student/teacher statistics (forward only): KL, target log-probs, entropy, explore/exploit ids
# --------------------------------------------------------------------------------------------


class PairStats(NamedTuple):
    """Per-token statistics of a student view S and a teacher view T of the same tokens.

    All [...] (the logits' leading shape); ``None`` where not requested.
        kl: KL(P_S ‖ P_T) = Σ_v p^S_v (log p^S_v − log p^T_v) ≥ 0 (clamped at 0), float32.
        student_log_prob, teacher_log_prob: log P_S(y), log P_T(y) of the targets.
        student_entropy: H(P_S).
        explore_id, explore_log_ratio: argmax_v and max_v of log P_S(v) − log P_T(v) (int64 ids,
            float32 values); exploit_id, exploit_log_ratio: argmin_v and min_v. Ties: lowest id.
    """

    kl: torch.Tensor
    student_log_prob: torch.Tensor | None = None
    teacher_log_prob: torch.Tensor | None = None
    student_entropy: torch.Tensor | None = None
    explore_id: torch.Tensor | None = None
    explore_log_ratio: torch.Tensor | None = None
    exploit_id: torch.Tensor | None = None
    exploit_log_ratio: torch.Tensor | None = None


@torch.no_grad()
def vocab_parallel_pair_stats(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    markers: bool = False,
    group: dist.ProcessGroup | None = None,
    vocab_start: int = 0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> PairStats:
    """KL(P_S ‖ P_T) per token and, in the same pass, optional target log-probs of both views,
    the student entropy and explore/exploit markers. Forward only (no gradient).

    Args:
        student_logits, teacher_logits: [..., V_local] this rank's slices of the two views
            (the response tokens aligned position by position); not modified.
        target: optional [...] global token ids: fills student/teacher_log_prob and
            student_entropy.
        markers: also compute argmax_v / argmin_v of D(v) = log P_S(v) − log P_T(v).
        group, vocab_start, vocab_size, chunk_size, temperature: as in
            :func:`vocab_parallel_log_prob_entropy`.

    KL is evaluated as log1p(Σ_v p^S_v φ(u_v)) with φ(u) = expm1(−u) + u, u = δ − E_S[δ],
    δ = z^S − z^T (see the loop for why), so identical views give exactly 0 and a KL of 1e-7
    keeps ~3 significant digits, where log-softmax differences in fp32 have an error floor
    of ~1e-6.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"shapes differ: {student_logits.shape} vs {teacher_logits.shape}")
    s_flat, lead = flatten_logits(student_logits)
    t_flat, _ = flatten_logits(teacher_logits)
    n = s_flat.shape[0]
    shard = Shard.make(s_flat.shape[1], group, vocab_start, vocab_size)
    nv = shard.n_valid
    rows = chunk_rows(chunk_size, nv, n_buffers=4)
    dev = s_flat.device
    f32 = dict(dtype=torch.float32, device=dev)
    kl = torch.empty(n, **f32)
    want_y = target is not None
    if want_y:
        tgt = target.reshape(-1).to(device=dev, dtype=torch.long)
        if tgt.numel() != n:
            raise ValueError(f"target has {tgt.numel()} tokens, logits {n}")
        loc_all, inside_all = shard.local_index(tgt)
        lp_s, lp_t, ent = torch.empty(n, **f32), torch.empty(n, **f32), torch.empty(n, **f32)
    if markers:
        hi_id, lo_id = (torch.empty(n, dtype=torch.long, device=dev) for _ in range(2))
        hi_val, lo_val = torch.empty(n, **f32), torch.empty(n, **f32)

    ws = workspace(4, rows, n, nv, dev)
    for s, e in chunks(n, rows):
        c = e - s
        zs = upcast(s_flat, s, e, nv, 1.0, ws[0, c])
        zt = upcast(t_flat, s, e, nv, 1.0, ws[1, c])
        # δ = z^S − z^T from the raw logits (exact when they are close), then the temperature.
        delta = torch.sub(zs, zt, out=ws[2, c])
        if temperature != 1.0:
            for buf in (delta, zs, zt):
                buf.div_(temperature)
        m = shard.all_reduce(torch.stack([row_max(zs), row_max(zt)]), _MAX)
        zs.sub_(m[0].unsqueeze(1))
        zt.sub_(m[1].unsqueeze(1))
        es = torch.exp(zs, out=ws[3, c])  # p^S · S_S
        zero = torch.zeros(e - s, **f32)
        if want_y:
            loc, inside = loc_all[s:e].unsqueeze(1), inside_all[s:e]
            ys = zs.gather(1, loc).squeeze(1) if nv else zero
            yt = zt.gather(1, loc).squeeze(1) if nv else zero
        parts = [es.sum(dim=1), zt.exp_().sum(dim=1), torch.mul(es, delta, out=zt).sum(dim=1)]
        if want_y:
            parts += [
                zs.mul_(es).sum(dim=1),  # Σ exp(z^S − m)(z^S − m), for the entropy
                torch.where(inside, ys, zero),
                torch.where(inside, yt, zero),
                inside.to(torch.float32),
            ]
        red = shard.all_reduce(torch.stack(parts), _SUM)
        log_ss, log_st = torch.log(red[0]), torch.log(red[1])
        if want_y:
            found = red[6] > 0
            ninf = torch.full_like(log_ss, -torch.inf)
            lp_s[s:e] = torch.where(found, red[4] - log_ss, ninf)
            lp_t[s:e] = torch.where(found, red[5] - log_st, ninf)
            ent[s:e] = log_ss - red[3] / red[0]
        # KL = Σ p^S (δ − c) with c = lse_S − lse_T, and B = Σ p^S δ:
        #   direct:  KL = B − c          (absolute error ~1e-6..1e-5 in fp32: cancellation)
        #   precise: KL = log1p(Σ_v p^S_v φ(u_v)),  u = δ − B,  φ(u) = expm1(−u) + u ≥ 0
        # (since Σ p^S e^{−δ} = e^{−c}). φ's terms are all ≥ 0 and first-order insensitive to
        # errors in B, so tiny KLs keep their relative accuracy. A row where some u < −30 (the
        # teacher gives a token e^30 times more relative mass than the student) could overflow
        # e^{−u}: it takes the direct form.
        b = red[2] / red[0]
        c = (m[0] + log_ss) - (m[1] + log_st)
        delta.sub_(b.unsqueeze(1))  # u
        big = (row_min(delta) < -30.0).to(torch.float32)
        phi = torch.neg(delta, out=zt).clamp_max_(30.0).expm1_().add_(delta)
        r = shard.all_reduce(torch.stack([phi.mul_(es).sum(dim=1), big]), _SUM)
        del es, zt, phi, zs
        precise = torch.log1p(r[0] / red[0])
        kl[s:e] = torch.where(r[1] == 0, precise, b - c).clamp_min_(0.0)
        if markers:
            # D(v) = log p^S_v − log p^T_v = δ_v − c = u_v + (B − c)
            d = delta.add_((b - c).unsqueeze(1))
            _markers_chunk(d, shard, hi_id[s:e], hi_val[s:e], lo_id[s:e], lo_val[s:e])
        del delta

    out = {"kl": kl.view(lead)}
    if want_y:
        out |= dict(
            student_log_prob=lp_s.view(lead),
            teacher_log_prob=lp_t.view(lead),
            student_entropy=ent.view(lead),
        )
    if markers:
        out |= dict(
            explore_id=hi_id.view(lead),
            explore_log_ratio=hi_val.view(lead),
            exploit_id=lo_id.view(lead),
            exploit_log_ratio=lo_val.view(lead),
        )
    return PairStats(**out)


def _markers_chunk(
    d: torch.Tensor,
    shard: Shard,
    hi_id: torch.Tensor,
    hi_val: torch.Tensor,
    lo_id: torch.Tensor,
    lo_val: torch.Tensor,
) -> None:
    """Global argmax/argmin over v of d [c, n_valid] (this rank's columns); writes into the outs.

    Each rank offers its local extreme (value, global id); fp64 carries ids exactly. Ranks with no
    real column offer ∓inf. Ties resolve to the lowest global id (lowest rank, then torch's first
    index within a rank).
    """
    c = d.shape[0]
    if shard.n_valid:
        hv, hi = d.max(dim=1)
        lv, li = d.min(dim=1)
        hi = hi + shard.vocab_start
        li = li + shard.vocab_start
    else:
        hv = torch.full((c,), -torch.inf, dtype=d.dtype, device=d.device)
        lv = -hv
        hi = li = torch.zeros(c, dtype=torch.long, device=d.device)
    cand = torch.stack([hv.double(), hi.double(), lv.double(), li.double()]).unsqueeze(2)
    cand = shard.all_gather_cat(cand, dim=2)  # [4, c, world]
    hsel = cand[0].argmax(dim=1, keepdim=True)
    lsel = cand[2].argmin(dim=1, keepdim=True)
    hi_val.copy_(cand[0].gather(1, hsel).squeeze(1))
    hi_id.copy_(cand[1].gather(1, hsel).squeeze(1).long())
    lo_val.copy_(cand[2].gather(1, lsel).squeeze(1))
    lo_id.copy_(cand[3].gather(1, lsel).squeeze(1).long())


def vocab_parallel_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, **kwargs
) -> torch.Tensor:
    """KL(P_S ‖ P_T) per token, [...] float32, forward only (D̄_t). Keyword arguments as in
    :func:`vocab_parallel_pair_stats`."""
    return vocab_parallel_pair_stats(student_logits, teacher_logits, **kwargs).kl

"""Vocab-parallel top-k of the student distribution with tail buckets (the SDPO distillation view).

Per token, over the real vocabulary (z = logits / temperature, gathered across TP ranks):
    K           = the k ids with the largest student logits (sorted, largest first)
    log p^S_K   = z^S_K − lse^S                         (student log-probs at K, with gradient)
    tail^S      = log Σ_{v∉K} p^S_v = logsumexp_{v∉K} z^S_v − lse^S   (with gradient)
    log p^T_K   = z^T_K − lse^T,   tail^T = logsumexp_{v∉K} z^T_v − lse^T   (no gradient)
The tails are logsumexps over the complement, each shifted by the complement's own max, never
log(1 − Σ_K p): they stay accurate when the top-k holds all but 1e-30 of the mass.

Gradient (student only; upstream g_K [k] for log p^S_K and g_tail for tail^S):
    ∂L/∂z_v = Σ_j g_K,j·1[v = K_j] − p_v·(Σ_j g_K,j + g_tail) + g_tail·1[v ∉ K]·p_v / P(∉K)
backward recomputes p per chunk and needs no collective. The teacher view is a stop-gradient
target (as in SDPO); the selection K itself is not differentiable.

Shapes, sharding, chunking and padding rules: see :mod:`rlrt_megatron.megatron.vocab_parallel`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from rlrt_megatron.megatron.vocab_common import (
    Shard,
    chunk_rows,
    chunks,
    finite_or_zero,
    flatten_logits,
    row_max,
    upcast,
    workspace,
)

_MAX = dist.ReduceOp.MAX
_SUM = dist.ReduceOp.SUM


class TopK(NamedTuple):
    """Top-k view of a student (and optionally teacher) distribution; see the module docstring.

    ids: [..., k] int64 global token ids, student log-prob descending.
    student_log_prob: [..., k] float32, differentiable w.r.t. the student logits.
    student_tail: [...] float32 log Σ_{v∉ids} P_S(v), differentiable.
    teacher_log_prob: [..., k] float32 log P_T(ids) (``None`` without a teacher).
    teacher_tail: [...] float32 log Σ_{v∉ids} P_T(v) (``None`` without a teacher).
    """

    ids: torch.Tensor
    student_log_prob: torch.Tensor
    student_tail: torch.Tensor
    teacher_log_prob: torch.Tensor | None = None
    teacher_tail: torch.Tensor | None = None


def _topk_mask(ids: torch.Tensor, shard: Shard) -> torch.Tensor:
    """[c, k] global ids -> [c, n_valid] bool mask of the local columns that are in the top-k."""
    loc, inside = shard.local_index(ids)
    # Ids held by other ranks go to a spare column n_valid that is dropped afterwards.
    col = torch.where(inside, loc, torch.full_like(loc, shard.n_valid))
    mask = torch.zeros(ids.shape[0], shard.n_valid + 1, dtype=torch.bool, device=ids.device)
    mask.scatter_(1, col, True)
    return mask[:, : shard.n_valid]


def _sumexp(z: torch.Tensor, shift: torch.Tensor, drop: torch.Tensor | None, buf: torch.Tensor):
    """Σ_v exp(z_v − shift) over the columns not in ``drop``, using ``buf`` as scratch."""
    torch.sub(z, shift.unsqueeze(1), out=buf)
    if drop is not None:
        buf.masked_fill_(drop, -torch.inf)
    return buf.exp_().sum(dim=1)


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, k: int, shard: Shard, rows: int, temperature: float):
        n, nv = student.shape[0], shard.n_valid
        dev = student.device
        f32 = dict(dtype=torch.float32, device=dev)
        has_t = teacher is not None
        ids = torch.empty(n, k, dtype=torch.long, device=dev)
        s_lp, s_tail, lse_s = torch.empty(n, k, **f32), torch.empty(n, **f32), torch.empty(n, **f32)
        t_lp = torch.empty(n, k, **f32) if has_t else torch.empty(0, **f32)
        t_tail = torch.empty(n, **f32) if has_t else torch.empty(0, **f32)
        kk = min(k + 1, nv)  # k+1: the (k+1)-th largest is the max of the complement
        ws = workspace(3 if has_t else 2, rows, n, nv, dev)
        for s, e in chunks(n, rows):
            c = e - s
            zs = upcast(student, s, e, nv, temperature, ws[0, c])
            zt = upcast(teacher, s, e, nv, temperature, ws[2, c]) if has_t else None
            # Local candidates, padded to k+1 with -inf so every rank sends the same shape.
            cand = torch.full((3, c, k + 1), -torch.inf, dtype=torch.float64, device=dev)
            cand[1].fill_(-1)
            if kk:
                val, idx = zs.topk(kk, dim=1, sorted=False)
                cand[0, :, :kk] = val
                cand[1, :, :kk] = idx + shard.vocab_start
                if has_t:
                    cand[2, :, :kk] = zt.gather(1, idx)
            cand = shard.all_gather_cat(cand, dim=2)  # [3, c, world·(k+1)], ids exact in fp64
            top, sel = cand[0].topk(k + 1, dim=1)  # sorted, largest first
            sel = sel[:, :k]
            top_ids = cand[1].gather(1, sel).long()
            ids[s:e] = top_ids
            m_s, m_sc = top[:, 0].float(), top[:, k].float()  # max, max over the complement
            shift_sc = finite_or_zero(m_sc)  # complement empty (k = vocab): tail = -inf
            drop = _topk_mask(top_ids, shard)
            buf = ws[1, c]
            sums = [_sumexp(zs, m_s, None, buf), _sumexp(zs, shift_sc, drop, buf)]
            del zs
            if has_t:
                buf.copy_(zt).masked_fill_(drop, -torch.inf)
                mt = shard.all_reduce(torch.stack([row_max(zt), row_max(buf)]), _MAX)
                shift_tc = finite_or_zero(mt[1])
                sums += [_sumexp(zt, mt[0], None, buf), _sumexp(zt, shift_tc, drop, buf)]
            del zt, buf, drop
            sums = shard.all_reduce(torch.stack(sums), _SUM)
            lse = m_s + torch.log(sums[0])
            lse_s[s:e] = lse
            s_lp[s:e] = top[:, :k].float() - lse.unsqueeze(1)
            s_tail[s:e] = shift_sc + torch.log(sums[1]) - lse
            if has_t:
                lse_t = mt[0] + torch.log(sums[2])
                t_lp[s:e] = cand[2].gather(1, sel).float() - lse_t.unsqueeze(1)
                t_tail[s:e] = shift_tc + torch.log(sums[3]) - lse_t
        ctx.save_for_backward(student, ids, lse_s, s_tail)
        ctx.shard, ctx.rows, ctx.temperature = shard, rows, temperature
        ctx.mark_non_differentiable(ids, t_lp, t_tail)
        return ids, s_lp, s_tail, t_lp, t_tail

    @staticmethod
    def backward(ctx, _g_ids, g_lp, g_tail, _g_tlp, _g_ttail):
        student, ids, lse, tail = ctx.saved_tensors
        none = (None,) * 5
        if not ctx.needs_input_grad[0]:
            return (None, *none)
        shard, rows, temperature = ctx.shard, ctx.rows, ctx.temperature
        nv = shard.n_valid
        grad = torch.zeros_like(student)  # padded columns: exactly 0
        if nv == 0:
            return (grad, *none)
        ws = workspace(2, rows, student.shape[0], nv, student.device)
        for s, e in chunks(student.shape[0], rows):
            z = upcast(student, s, e, nv, temperature, ws[0, e - s])
            z.sub_(lse[s:e].unsqueeze(1))  # log p
            p = torch.exp(z, out=ws[1, e - s])
            glp = g_lp[s:e].float()
            gt = g_tail[s:e].float().unsqueeze(1)
            top = _topk_mask(ids[s:e], shard)
            # z <- g_tail·p_v/P(∉K) on the complement, 0 on K; then − p·(Σ g_K + g_tail)
            z.sub_(tail[s:e].unsqueeze(1)).exp_().masked_fill_(top, 0.0).mul_(gt)
            z.sub_(p.mul_(glp.sum(dim=1, keepdim=True) + gt))
            del p, top
            loc, inside = shard.local_index(ids[s:e])
            z.scatter_add_(1, loc, torch.where(inside, glp, torch.zeros_like(glp)))
            if temperature != 1.0:
                z.div_(temperature)
            grad[s:e, :nv].copy_(z)
        return (grad, *none)


def vocab_parallel_topk(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    k: int = 100,
    group: dist.ProcessGroup | None = None,
    vocab_start: int = 0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> TopK:
    """Top-k ids of the student, both views' log-probs there, and both tails (see module doc).

    Args:
        student_logits: [..., V_local] this rank's slice of the student view; not modified.
        teacher_logits: optional [..., V_local] teacher view of the same tokens (stop-gradient).
        k: number of top ids, 1 ≤ k ≤ vocab_size.
        group, vocab_start, vocab_size, chunk_size, temperature: as in
            :func:`rlrt_megatron.megatron.vocab_parallel.vocab_parallel_log_prob_entropy`.

    Returns:
        :class:`TopK`; ids and all values are the same on every TP rank. Ties between equal
        logits are broken arbitrarily (by torch.topk).
    """
    s_flat, lead = flatten_logits(student_logits)
    shard = Shard.make(s_flat.shape[1], group, vocab_start, vocab_size)
    if not 1 <= k <= shard.vocab_size:
        raise ValueError(f"k must be in [1, vocab_size={shard.vocab_size}], got {k}")
    t_flat = None
    if teacher_logits is not None:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"shapes differ: {student_logits.shape} vs {teacher_logits.shape}")
        t_flat = flatten_logits(teacher_logits.detach())[0]
    rows = chunk_rows(chunk_size, shard.n_valid, n_buffers=3)
    ids, s_lp, s_tail, t_lp, t_tail = _TopK.apply(
        s_flat, t_flat, int(k), shard, rows, float(temperature)
    )
    has_t = t_flat is not None
    return TopK(
        ids=ids.view(*lead, k),
        student_log_prob=s_lp.view(*lead, k),
        student_tail=s_tail.view(lead),
        teacher_log_prob=t_lp.view(*lead, k) if has_t else None,
        teacher_tail=t_tail.view(lead) if has_t else None,
    )

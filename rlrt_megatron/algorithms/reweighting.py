"""Token-level reweighting of the group advantage: RLRT (reversed teacher) and RLSD (inverse).

Notation (shared/DESIGN.md §1): student view P_S(·) = π(· | x, y_<t), teacher view
P_T(·) = π(· | x, c, y_<t) with privileged context c, both stop-gradient here.

    D_t   = log P_S(y_t) − log P_T(y_t)
    w_t   = exp( sign(A)·D_t)          reverse teacher (RLRT, Eq. 6)
    w_t   = exp(−sign(A)·D_t)          inverse teacher (RLSD)
    A_t   = A·[(1−λ) + λ·clip(w_t, 1−ε_w, 1+ε_w)]        (Eq. 7; paper Table 4)

For a correct rollout (A > 0) RLRT up-weights tokens the student chose *against* the teacher's
prediction (log P_S > log P_T) and still got right; RLSD does the opposite. RLRT applies the weight
only where r = 1; RLSD and the RLRT-all ablation apply it to every row with a teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlrt_megatron.algorithms._checks import (
    check_bool,
    check_finite,
    check_mask,
    check_non_negative,
    check_shape,
    check_tensor,
    check_unit_interval,
)
from rlrt_megatron.algorithms.registry import MethodSpec, _select, get_method


def clipped_token_weights(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    sign: int,
    eps_w: float,
) -> torch.Tensor:
    """clip(exp(sign·sign(A)·D), 1−ε_w, 1+ε_w), computed so it is finite for any finite input.

    Shapes: ``advantages`` [B], ``log_ratio`` D [B, T] → [B, T].

    The exponent is clamped to [log(1−ε_w), log(1+ε_w)] *before* exp, which is the same clip
    (exp is monotone) but cannot overflow for |D| > 88 in float32; where A = 0 the exponent is 0
    (selected with ``where``, never 0·inf). For ε_w ≥ 1 the lower bound 1−ε_w ≤ 0 is inactive.
    """
    direction = torch.sign(advantages).to(log_ratio.dtype).unsqueeze(-1) * sign
    exponent = torch.where(direction == 0, torch.zeros_like(log_ratio), direction * log_ratio)
    low = math.log(1.0 - eps_w) if eps_w < 1.0 else -math.inf
    high = math.log1p(eps_w)
    return torch.exp(exponent.clamp(min=low, max=high))


_SIGN = {"reverse_teacher": 1, "inverse_teacher": -1}


def token_advantages(
    method: str | MethodSpec,
    advantages: torch.Tensor,
    correct: torch.Tensor,
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    has_teacher: torch.Tensor,
    lam: float,
    eps_w: float,
) -> torch.Tensor:
    """Per-token advantages A_t of a method.

    Shapes: ``advantages`` [B] (the group advantage A of each rollout), ``correct`` [B] bool
    (r = 1), ``student_logprobs``/``teacher_logprobs`` [B, T] (log-probs of the sampled tokens
    under the student and teacher views; treated as constants), ``response_mask`` [B, T] (1 on
    response tokens), ``has_teacher`` [B] bool → [B, T].

        A_t = A·[(1−λ) + λ·clip(w_t, 1−ε_w, 1+ε_w)]    on reweighted rows (see module docstring)
        A_t = A                                         elsewhere

    Reweighted rows: ``has_teacher`` and inside the method's gate (RLRT: correct rows; RLRT-all and
    RLSD: all rows). Methods without token reweighting (grpo, grpo_eb, sdpo, srpo) return A on every
    response token. **Masked positions (response_mask = 0) are 0.** Teacher log-probs of rows
    without a teacher are ignored (they may hold anything finite, e.g. zeros).

    Raises ``ValueError`` for shape mismatches, non-bool flags, NaN/inf in used inputs, a row with
    no response token, an unknown method, λ outside [0, 1] or ε_w < 0.
    """
    spec = get_method(method) if isinstance(method, str) else method
    check_tensor("advantages", advantages, ndim=1)
    batch = advantages.shape[0]
    # The mask is the reference shape [B, T]: a mismatching log-prob tensor is then named.
    check_tensor("response_mask", response_mask, ndim=2)
    shape = (batch, response_mask.shape[1])
    check_shape("response_mask", response_mask, shape)
    check_tensor("student_logprobs", student_logprobs, ndim=2)
    check_shape("student_logprobs", student_logprobs, shape)
    check_tensor("teacher_logprobs", teacher_logprobs, ndim=2)
    check_shape("teacher_logprobs", teacher_logprobs, shape)
    for name, flag in (("correct", correct), ("has_teacher", has_teacher)):
        check_tensor(name, flag, ndim=1)
        check_bool(name, flag)
        check_shape(name, flag, (batch,))
    check_unit_interval("lam", lam)
    check_non_negative("eps_w", eps_w)
    check_mask("response_mask", response_mask)
    mask = response_mask.bool()
    check_finite("advantages", advantages)
    check_finite("student_logprobs", student_logprobs, where=mask)

    dtype = torch.promote_types(advantages.dtype, student_logprobs.dtype)
    plain = advantages.to(dtype).unsqueeze(-1).expand(shape)
    if spec.token_weight == "none" or lam == 0:
        return torch.where(mask, plain, torch.zeros_like(plain))

    rows = _select(spec.weight_gate, correct) & has_teacher
    teacher_used = mask & rows.unsqueeze(-1)
    check_finite("teacher_logprobs", teacher_logprobs, where=teacher_used)
    with torch.no_grad():
        log_ratio = (student_logprobs - teacher_logprobs).to(dtype)
        weights = clipped_token_weights(
            advantages.to(dtype), log_ratio, _SIGN[spec.token_weight], eps_w
        )
        reweighted = plain * ((1.0 - lam) + lam * weights)
    out = torch.where(teacher_used, reweighted, plain)
    return torch.where(mask, out, torch.zeros_like(out))


def token_weight_sums(
    method: str | MethodSpec,
    advantages: torch.Tensor,
    correct: torch.Tensor,
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    has_teacher: torch.Tensor,
    eps_w: float,
) -> dict[str, float]:
    """Additive pieces of `token_weight_stats` for a slice of a batch (shapes as there).

    Sums over rows add up: the update computes them per micro-batch from its own forward's
    log-probs (on-policy shortcut) and sums them over micro-batches and DP ranks; the driver then
    turns them into the stats with `weight_stats_from_sums`. Keys: ``log_ratio_correct_sum`` and
    ``correct_tokens`` (Σ D_t and count over response tokens of correct rows with a teacher),
    ``weight_gt1_tokens``, ``weight_lt1_tokens`` and ``reweighted_tokens`` (counts over the
    reweighted tokens).
    """
    spec = get_method(method) if isinstance(method, str) else method
    mask = response_mask.bool()
    with torch.no_grad():
        log_ratio = student_logprobs - teacher_logprobs
        correct_rows = mask & (correct & has_teacher).unsqueeze(-1)
        out = {
            "log_ratio_correct_sum": float(log_ratio[correct_rows].double().sum()),
            "correct_tokens": float(correct_rows.sum()),
            "weight_gt1_tokens": 0.0,
            "weight_lt1_tokens": 0.0,
            "reweighted_tokens": 0.0,
        }
        if spec.token_weight == "none":
            return out
        used = mask & (_select(spec.weight_gate, correct) & has_teacher).unsqueeze(-1)
        weights = clipped_token_weights(advantages, log_ratio, _SIGN[spec.token_weight], eps_w)
        out["weight_gt1_tokens"] = float(((weights > 1) & used).sum())
        out["weight_lt1_tokens"] = float(((weights < 1) & used).sum())
        out["reweighted_tokens"] = float(used.sum())
    return out


def weight_stats_from_sums(sums: dict[str, float], response_tokens: float) -> dict[str, float]:
    """`token_weight_stats` from the `token_weight_sums` of the whole batch (added over its
    parts) and the batch's number of response tokens."""
    n_tokens = max(response_tokens, 1.0)
    correct = sums["correct_tokens"]
    return {
        "mean_log_ratio_correct": sums["log_ratio_correct_sum"] / correct
        if correct > 0
        else float("nan"),
        "weight_gt1_frac": sums["weight_gt1_tokens"] / n_tokens,
        "weight_lt1_frac": sums["weight_lt1_tokens"] / n_tokens,
        "reweighted_tokens": sums["reweighted_tokens"],
    }


def token_weight_stats(
    method: str | MethodSpec,
    advantages: torch.Tensor,
    correct: torch.Tensor,
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    has_teacher: torch.Tensor,
    eps_w: float,
) -> dict[str, float]:
    """Diagnostics of the clipped weights on reweighted tokens (for training metrics).

    Returns the fraction of reweighted response tokens with w > 1 and w < 1, the number of
    reweighted tokens, and the mean D_t over all response tokens of correct rows with a teacher
    (the paper tracks D̂ on correct rollouts). Empty selections give 0.0 / NaN respectively.
    """
    sums = token_weight_sums(
        method,
        advantages,
        correct,
        student_logprobs,
        teacher_logprobs,
        response_mask,
        has_teacher,
        eps_w,
    )
    return weight_stats_from_sums(sums, float(response_mask.bool().sum()))


REWEIGHT_SUM_KEYS = (
    "log_ratio_correct_sum",
    "correct_tokens",
    "weight_gt1_tokens",
    "weight_lt1_tokens",
    "reweighted_tokens",
)
"""The keys of `token_weight_sums`."""


@dataclass(frozen=True, kw_only=True)
class DeferredReweighting:
    """Eq. 6–7's token weights, applied in the update from the update's own forward.

    Under the on-policy shortcut (one mini-batch, behaviour-policy teacher, the engines synced
    after every update) the update's forward *is* the student view that sampled the rollouts:
    log P_S(y_t) is its log-prob, detached. So only the teacher view needs scoring (the actor
    does it inside the update call) and the loss builds A_t per micro-batch with
    `token_advantages` from ``(student = forward.detach(), teacher = teacher_logprobs)``: the
    same A_t as from a separate student pass, without that pass.

    Shapes (B rollouts of the batch, T its longest response): ``advantages`` [B] the group
    advantage A, ``correct`` [B] bool (r = 1), ``has_teacher`` [B] bool, ``teacher_logprobs``
    [B, T] log P_T(y_t) (anything finite on rows without a teacher), or ``None``: the actor
    scores the teacher views itself before the update (`PolicyActor.train_step`), so they never
    travel through the driver; ``lam`` λ, ``eps_w`` ε_w.
    """

    advantages: torch.Tensor
    correct: torch.Tensor
    has_teacher: torch.Tensor
    teacher_logprobs: torch.Tensor | None
    lam: float
    eps_w: float

    def __post_init__(self) -> None:
        check_tensor("advantages", self.advantages, ndim=1)
        b = self.advantages.shape[0]
        for name in ("correct", "has_teacher"):
            flag = getattr(self, name)
            check_tensor(name, flag, ndim=1)
            check_bool(name, flag)
            check_shape(name, flag, (b,))
        if self.teacher_logprobs is not None:
            check_tensor("teacher_logprobs", self.teacher_logprobs, ndim=2)
            if self.teacher_logprobs.shape[0] != b:
                raise ValueError(
                    f"teacher_logprobs has {self.teacher_logprobs.shape[0]} rows, expected {b}"
                )
        check_unit_interval("lam", self.lam)
        check_non_negative("eps_w", self.eps_w)

    def select(self, rows: torch.Tensor, t: int) -> DeferredReweighting:
        """Rows ``rows`` ([n] long), responses cut to ``t`` tokens."""
        return DeferredReweighting(
            advantages=self.advantages[rows],
            correct=self.correct[rows],
            has_teacher=self.has_teacher[rows],
            teacher_logprobs=None
            if self.teacher_logprobs is None
            else self.teacher_logprobs[rows, :t],
            lam=self.lam,
            eps_w=self.eps_w,
        )

    def apply(
        self,
        method: str | MethodSpec,
        rows: torch.Tensor,
        student_logprobs: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(A_t [n, t], token_weight_sums)`` of the rows ``rows`` ([n] long into this batch)
        whose student log-probs ``student_logprobs`` [n, t] (detached here) and mask
        ``response_mask`` [n, t] the update's forward gave."""
        if self.teacher_logprobs is None:
            raise ValueError("DeferredReweighting.apply needs the teacher views' log-probs")
        t = response_mask.shape[1]
        part = self.select(rows.cpu(), t)
        dev = student_logprobs.device
        args = (
            part.advantages.to(dev),
            part.correct.to(dev),
            student_logprobs.detach(),
            part.teacher_logprobs.to(dev, student_logprobs.dtype),
            response_mask,
            part.has_teacher.to(dev),
        )
        values = token_advantages(method, *args, lam=self.lam, eps_w=self.eps_w)
        return values, token_weight_sums(method, *args, eps_w=self.eps_w)

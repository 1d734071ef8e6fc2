"""The method registry: one typed entry per training method.

Each `MethodSpec` says what the trainer must compute for a method (which teacher context, whether
teacher log-probs / top-k / entropies are needed), how the method shapes token advantages
(`token_weight`, `weight_gate`), which rows receive which loss term (`policy_gradient_rows`,
`distillation_rows`) and the paper's default hyperparameters (Table 5 and the ablations, see
shared/DESIGN.md §1). The trainer reads these fields; it never branches on a method name.

Methods:
  grpo      group-relative advantage on every token (the DAPO surrogate, no std-normalization).
  grpo_eb   GRPO plus an entropy bonus (the paper's exploration baseline, its reference [3]):
            by default Cheng et al.'s detached, clipped entropy term in the advantage,
            A_t' = A_t + min(α·H_t, |A_t|/κ) (`entropy_advantage`); ``entropy_form: loss`` is the
            classic maximum-entropy loss term −c_H·mean(H_t) instead.
  diver     GRPO on rewards shaped by a group-diversity bonus on correct rollouts (DIVER).
  rlrt      RLVR with Reversed Teacher: on correct rollouts with a correct *peer* as the teacher's
            context, A_t = A·[(1−λ) + λ·clip(exp(sign(A)·D_t), 1−ε_w, 1+ε_w)]; wrong rows keep A.
  rlrt_all  the no-gate ablation: the same weight on every row that has a teacher (it collapses).
  rlsd      the inverse weight exp(−sign(A)·D_t), teacher = the ground-truth solution, all rows.
  sdpo      self-distillation only: generalized JS (α=0.5) from the peer-conditioned teacher into
            the student over the student's top-100 tokens plus a tail bucket, on all rows.
  srpo      sample routing: SDPO (entropy-weighted) on incorrect rows with a teacher, GRPO on the
            rest, one shared token-mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from rlrt_megatron.algorithms._checks import check_bool, check_shape, check_tensor

TeacherContext = Literal["none", "peer_rollout", "ground_truth"]
TokenWeight = Literal["none", "reverse_teacher", "inverse_teacher"]
RowSet = Literal["none", "all", "correct", "incorrect", "not_distilled"]
EntropyForm = Literal["advantage", "loss"]


@dataclass(frozen=True, kw_only=True)
class MethodDefaults:
    """A method's default hyperparameters (paper Table 5 unless noted)."""

    normalize_by_std: bool
    """Divide the group-centred reward by the group's std (on for RLSD/RLRT, off for GRPO/SRPO)."""
    lr: float
    """Learning rate: 1e-6 GRPO/RLSD/RLRT, 1e-5 SDPO, 5e-6 SRPO."""
    lam_init: float = 0.0
    """λ at step 0: the mixing weight of the token reweighting (0 ⇒ plain GRPO)."""
    lam_decay_steps: int | None = None
    """Linear decay of λ to 0 over this many steps; None keeps λ constant."""
    eps_w: float = 0.0
    """Clip radius of the token weight: w ∈ [1−ε_w, 1+ε_w]."""
    entropy_form: EntropyForm = "advantage"
    """How an entropy-bonus method (``needs_student_entropy``) adds it: "advantage" (Cheng et al.,
    A_t' = A_t + min(α·H_t, |A_t|/κ), the reference form) or "loss" (−c_H·mean(H_t))."""
    entropy_alpha: float = 0.4
    """α of the advantage form (Cheng et al.)."""
    entropy_kappa: float = 2.0
    """κ of the advantage form: the term stays below |A_t|/κ."""
    entropy_coef: float = 0.0
    """c_H of the loss form (GRPO+EB with ``entropy_form: loss``)."""
    distill_topk: int = 100
    """Top-k of the student's distribution used by the distillation loss (plus one tail bucket)."""
    distill_alpha: float = 0.5
    """Generalized Jensen–Shannon interpolation α (0.5 = symmetric JS)."""
    srpo_beta: float = 1.0
    """SRPO's entropy temperature β in w_t ∝ exp(−β·H_teacher,t)."""
    diversity_coef: float = 0.0
    """DIVER's shaping coefficient λ in r' = r + λ·clip(d, 0, σ)·𝟙(r=1)."""
    diversity_clip: float = 0.68
    """DIVER's clip σ of the diversity bonus (0.68 for equation diversity in the official code)."""
    diversity_metric: str = "equation"
    """DIVER's diversity score: "equation", "textual" (1 − BLEU) or "mix"."""


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    name: str
    teacher_context: TeacherContext
    """What privileged context the teacher view sees: nothing, a correct peer rollout of the same
    group, or the ground-truth solution."""
    token_weight: TokenWeight = "none"
    """reverse_teacher: w = exp(sign(A)·D) (RLRT); inverse_teacher: w = exp(−sign(A)·D) (RLSD)."""
    weight_gate: RowSet = "none"
    """Rows whose advantage is reweighted: "correct" (RLRT's reward gate) or "all"."""
    policy_gradient_rows: RowSet = "all"
    """Rows that get the clipped policy-gradient loss."""
    distillation_rows: RowSet = "none"
    """Rows (among those with a teacher) that get the distillation loss."""
    needs_student_entropy: bool = False
    """The method has an entropy bonus (GRPO+EB): in the advantage form it reads the scoring
    pass's per-token entropy (no gradient); in the loss form the current policy's, with
    gradient."""
    needs_teacher_entropy: bool = False
    """Per-token entropy of the teacher view, no gradient (SRPO's dynamic weight)."""
    reward_shaping: Literal["none", "diversity"] = "none"
    """diversity: DIVER's group-diversity bonus on correct rollouts, before group normalization."""
    defaults: MethodDefaults = field(repr=False)

    @property
    def needs_teacher_logprobs(self) -> bool:
        """Teacher log-probs of the sampled tokens (for D_t = log P_S − log P_T)."""
        return self.token_weight != "none"

    @property
    def needs_topk(self) -> bool:
        """Student top-k log-probs + tail and the teacher's at the same ids (distillation)."""
        return self.distillation_rows != "none"

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_context != "none"


def _spec(**kwargs) -> MethodSpec:
    return MethodSpec(**kwargs)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            name="grpo",
            teacher_context="none",
            defaults=MethodDefaults(normalize_by_std=False, lr=1e-6),
        ),
        _spec(
            name="grpo_eb",
            teacher_context="none",
            needs_student_entropy=True,
            # The paper's Table 5 gives no coefficient. Default: its reference [3]'s advantage
            # form with α 0.4, κ 2; the loss form's c_H 1e-3 is the common verl setting.
            defaults=MethodDefaults(
                normalize_by_std=False,
                lr=1e-6,
                entropy_form="advantage",
                entropy_alpha=0.4,
                entropy_kappa=2.0,
                entropy_coef=1e-3,
            ),
        ),
        _spec(
            name="diver",
            teacher_context="none",
            reward_shaping="diversity",
            # Official code: std-normalized GRPO, lr 1e-6; λ = 1.0 (its "equ1.0" run), σ = 0.68.
            defaults=MethodDefaults(normalize_by_std=True, lr=1e-6, diversity_coef=1.0),
        ),
        _spec(
            name="rlrt",
            teacher_context="peer_rollout",
            token_weight="reverse_teacher",
            weight_gate="correct",
            # Base-model setting (ε_w 1.0, no decay); instruct 0.5/decay 30, thinking 0.2/decay 30.
            defaults=MethodDefaults(normalize_by_std=True, lr=1e-6, lam_init=0.5, eps_w=1.0),
        ),
        _spec(
            name="rlrt_all",
            teacher_context="peer_rollout",
            token_weight="reverse_teacher",
            weight_gate="all",
            defaults=MethodDefaults(normalize_by_std=True, lr=1e-6, lam_init=0.5, eps_w=1.0),
        ),
        _spec(
            name="rlsd",
            teacher_context="ground_truth",
            token_weight="inverse_teacher",
            weight_gate="all",
            defaults=MethodDefaults(
                normalize_by_std=True, lr=1e-6, lam_init=0.5, lam_decay_steps=50, eps_w=0.2
            ),
        ),
        _spec(
            name="sdpo",
            teacher_context="peer_rollout",
            policy_gradient_rows="none",
            distillation_rows="all",
            defaults=MethodDefaults(normalize_by_std=False, lr=1e-5),
        ),
        _spec(
            name="srpo",
            teacher_context="peer_rollout",
            policy_gradient_rows="not_distilled",
            distillation_rows="incorrect",
            needs_teacher_entropy=True,
            defaults=MethodDefaults(normalize_by_std=False, lr=5e-6, srpo_beta=1.0),
        ),
    )
}


def register_method(spec: MethodSpec, *, overwrite: bool = False) -> MethodSpec:
    """Add a method to `METHODS`, after checking that every field names something the trainer
    and the algorithm core know how to do; returns ``spec``.

    A new method is a new combination of the registry's fields (teacher context, token weight,
    gate, loss routing, defaults): `token_advantages`, `teacher_forward_rows`, the row routing
    and `method_loss` then handle it with no other change (``examples/custom_method.py``).
    The registration lives in the process that runs it. The distributed trainer's ranks are
    other processes that look the method up by name (`UpdateConfig.method`): a method they should
    train with has to be in the `METHODS` table below (or registered in those processes too).
    """
    if not isinstance(spec, MethodSpec):
        raise ValueError(f"register_method takes a MethodSpec, got {type(spec).__name__}")
    if not isinstance(spec.name, str) or not spec.name.isidentifier():
        raise ValueError(f"method name must be an identifier (a config value), got {spec.name!r}")
    if spec.name in METHODS and not overwrite and METHODS[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is already registered (pass overwrite=True)")
    allowed = {
        "teacher_context": get_args(TeacherContext),
        "token_weight": get_args(TokenWeight),
        "weight_gate": ("none", "all", "correct", "incorrect"),
        "policy_gradient_rows": get_args(RowSet),
        "distillation_rows": ("none", "all", "correct", "incorrect"),
        "reward_shaping": ("none", "diversity"),
    }
    for name, values in allowed.items():
        value = getattr(spec, name)
        if value not in values:
            raise ValueError(f"method {spec.name!r}: {name}={value!r}, expected one of {values}")
    if not isinstance(spec.defaults, MethodDefaults):
        raise ValueError(f"method {spec.name!r}: defaults must be a MethodDefaults")
    if (spec.token_weight == "none") != (spec.weight_gate == "none"):
        raise ValueError(
            f"method {spec.name!r}: token_weight and weight_gate go together "
            f"(got {spec.token_weight!r} and {spec.weight_gate!r})"
        )
    if not spec.needs_teacher and (spec.token_weight != "none" or spec.distillation_rows != "none"):
        raise ValueError(
            f"method {spec.name!r}: a token weight or a distillation loss needs a teacher "
            "(teacher_context 'peer_rollout' or 'ground_truth')"
        )
    if spec.policy_gradient_rows == "none" and spec.distillation_rows == "none":
        raise ValueError(f"method {spec.name!r} gives no row any loss term")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registry entry for ``name``; a clear error lists the known methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}") from None


def _select(rows: RowSet, correct: torch.Tensor) -> torch.Tensor:
    if rows == "all":
        return torch.ones_like(correct)
    if rows == "correct":
        return correct.clone()
    if rows == "incorrect":
        return ~correct
    if rows == "none":
        return torch.zeros_like(correct)
    raise ValueError(f"row set {rows!r} cannot be resolved from correctness alone")


def _check_rows(correct: torch.Tensor, **flags: torch.Tensor) -> None:
    check_tensor("correct", correct, ndim=1)
    check_bool("correct", correct)
    for name, flag in flags.items():
        check_tensor(name, flag, ndim=1)
        check_bool(name, flag)
        check_shape(name, flag, correct.shape)


def distillation_rows(method: str | MethodSpec, correct: torch.Tensor, has_teacher: torch.Tensor):
    """Rows that receive the distillation loss: [B] bool (those routed to it *and* with a teacher).

    SDPO: every row with a teacher; SRPO: incorrect rows with a teacher (correct rows, and incorrect
    rows whose group has no correct rollout, fall back to GRPO); other methods: none.
    """
    spec = get_method(method) if isinstance(method, str) else method
    _check_rows(correct, has_teacher=has_teacher)
    return _select(spec.distillation_rows, correct) & has_teacher


def policy_gradient_rows(
    method: str | MethodSpec, correct: torch.Tensor, has_teacher: torch.Tensor
) -> torch.Tensor:
    """Rows that receive the clipped policy-gradient loss: [B] bool."""
    spec = get_method(method) if isinstance(method, str) else method
    _check_rows(correct, has_teacher=has_teacher)
    if spec.policy_gradient_rows == "not_distilled":
        return ~distillation_rows(spec, correct, has_teacher)
    return _select(spec.policy_gradient_rows, correct)


def teacher_forward_rows(
    method: str | MethodSpec,
    *,
    correct: torch.Tensor,
    has_context: torch.Tensor,
    advantages: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Which rollouts need a teacher forward pass at all: [B] bool.

    A teacher forward costs a full pass over (context ⊕ response), so the trainer packs only the
    rows where its output can change the update:

    * token reweighting (RLRT, RLRT-all, RLSD): rows inside the weight gate that have a context,
      with A ≠ 0 (A_t = A·(…) is 0 anyway) and λ > 0 (λ = 0 gives A_t = A). For RLRT that is:
      correct, has a correct peer, A ≠ 0, λ > 0.
    * distillation (SDPO, SRPO): the distillation rows that have a context.

    ``has_context`` [B] bool: a context exists (a different correct peer for peer_rollout methods,
    a ground-truth solution for ground_truth methods). ``advantages`` [B].
    """
    spec = get_method(method) if isinstance(method, str) else method
    _check_rows(correct, has_context=has_context)
    check_tensor("advantages", advantages, ndim=1)
    check_shape("advantages", advantages, correct.shape)
    if not spec.needs_teacher:
        return torch.zeros_like(correct)
    rows = torch.zeros_like(correct)
    if spec.token_weight != "none" and lam > 0:
        rows |= _select(spec.weight_gate, correct) & has_context & (advantages != 0)
    if spec.distillation_rows != "none":
        rows |= distillation_rows(spec, correct, has_context)
    return rows

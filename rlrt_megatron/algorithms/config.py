"""The `algorithm:` section of a run config: the method and its hyperparameters.

Fields left at ``None`` take the method's defaults from the registry (the paper's settings), so
``algorithm.method=rlsd`` alone gives RLSD's ε_w = 0.2 and λ decay over 50 steps, while any field
can still be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from rlrt_megatron.algorithms.losses import Aggregation
from rlrt_megatron.algorithms.objective import LossConfig
from rlrt_megatron.algorithms.registry import EntropyForm, MethodSpec, get_method
from rlrt_megatron.algorithms.schedules import LinearSchedule, lambda_schedule


@dataclass(frozen=True, kw_only=True)
class AlgorithmConfig:
    method: str = "rlrt"
    """One of grpo, grpo_eb, diver, rlrt, rlrt_all, rlsd, sdpo, srpo."""
    normalize_by_std: bool | None = None
    """Divide group-centred rewards by the group std (None: the method's default)."""
    adv_eps: float = 1e-6
    """ε in (r − mean)/(std + ε)."""
    lam_init: float | None = None
    """λ at step 0, in [0, 1] (None: the method's default, 0.5 for RLRT/RLSD)."""
    lam_decay_steps: int | None = None
    """Linear decay of λ to 0 over this many steps; 0 keeps λ constant (None: method default)."""
    lam_warmup_steps: int = 0
    """Linear warm-up of λ from 0 over this many steps."""
    eps_w: float | None = None
    """Clip radius ε_w of the token weight (None: method default)."""
    entropy_form: EntropyForm | None = None
    """GRPO+EB's bonus: "advantage" (Cheng et al.'s A_t + min(α·H_t, |A_t|/κ), the default) or
    "loss" (−entropy_coef·mean H_t). None: the method's default."""
    entropy_alpha: float | None = None
    """α of the advantage form (None: 0.4)."""
    entropy_kappa: float | None = None
    """κ of the advantage form, > 1 (None: 2.0)."""
    entropy_coef: float | None = None
    """Coefficient of the loss form, GRPO+EB with entropy_form loss only (None: 1e-3)."""
    distill_topk: int | None = None
    """Top-k of the distillation loss (None: 100)."""
    distill_alpha: float | None = None
    """Generalized-JS α of the distillation loss (None: 0.5)."""
    srpo_beta: float | None = None
    """SRPO's entropy temperature β (None: 1.0; 0 disables the dynamic weight)."""
    clip_low: float = 0.2
    clip_high: float = 0.28
    rollout_is_clip: float | None = 2.0
    """Truncation of the rollout importance weight; null disables the correction."""
    aggregation: Aggregation = "token-mean"

    def __post_init__(self) -> None:
        get_method(self.method)  # unknown method → ValueError listing the known ones
        checks = [
            ("lam_init", self.lam_init, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("lam_decay_steps", self.lam_decay_steps, lambda v: v >= 0, ">= 0"),
            ("lam_warmup_steps", self.lam_warmup_steps, lambda v: v >= 0, ">= 0"),
            ("eps_w", self.eps_w, lambda v: v >= 0, ">= 0"),
            (
                "entropy_form",
                self.entropy_form,
                lambda v: v in get_args(EntropyForm),
                f"one of {get_args(EntropyForm)}",
            ),
            ("entropy_alpha", self.entropy_alpha, lambda v: v >= 0, ">= 0"),
            ("entropy_kappa", self.entropy_kappa, lambda v: v > 1, "> 1"),
            ("entropy_coef", self.entropy_coef, lambda v: v >= 0, ">= 0"),
            ("distill_topk", self.distill_topk, lambda v: v >= 1, ">= 1"),
            ("distill_alpha", self.distill_alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("srpo_beta", self.srpo_beta, lambda v: v >= 0, ">= 0"),
            ("adv_eps", self.adv_eps, lambda v: v >= 0, ">= 0"),
            ("clip_low", self.clip_low, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("clip_high", self.clip_high, lambda v: v >= 0, ">= 0"),
            ("rollout_is_clip", self.rollout_is_clip, lambda v: v > 0, "> 0"),
        ]
        for name, value, ok, what in checks:
            if value is not None and not ok(value):
                raise ValueError(f"algorithm.{name} must be {what}, got {value}")

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)

    def _default(self, name: str):
        value = getattr(self, name)
        return getattr(self.spec.defaults, name) if value is None else value

    @property
    def use_std(self) -> bool:
        return self._default("normalize_by_std")

    @property
    def weight_clip(self) -> float:
        return self._default("eps_w")

    def schedule(self) -> LinearSchedule:
        """λ(step) for this method (constant when the decay is 0 or the method has none)."""
        decay = self._default("lam_decay_steps")
        return lambda_schedule(
            self._default("lam_init"), decay_steps=decay or None, warmup_steps=self.lam_warmup_steps
        )

    @property
    def entropy_advantage(self) -> tuple[float, float] | None:
        """(α, κ) when the method's entropy bonus goes into the advantage, else None."""
        if not self.spec.needs_student_entropy or self._default("entropy_form") != "advantage":
            return None
        return self._default("entropy_alpha"), self._default("entropy_kappa")

    def loss_config(self) -> LossConfig:
        # The loss-form coefficient only where that form is chosen: the advantage form replaces it.
        loss_form = self.spec.needs_student_entropy and self._default("entropy_form") == "loss"
        return LossConfig(
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            rollout_is_clip=self.rollout_is_clip,
            aggregation=self.aggregation,
            entropy_coef=self._default("entropy_coef") if loss_form else 0.0,
            distill_alpha=self._default("distill_alpha"),
        )

    def resolved(self) -> dict[str, object]:
        """Every hyperparameter with the registry defaults filled in (for logging and saving)."""
        names = (
            "normalize_by_std",
            "lam_init",
            "lam_decay_steps",
            "eps_w",
            "entropy_form",
            "entropy_alpha",
            "entropy_kappa",
            "entropy_coef",
            "distill_topk",
            "distill_alpha",
            "srpo_beta",
        )
        out: dict[str, object] = {"method": self.method}
        out.update({name: self._default(name) for name in names})
        out.update(
            lam_warmup_steps=self.lam_warmup_steps,
            adv_eps=self.adv_eps,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            rollout_is_clip=self.rollout_is_clip,
            aggregation=self.aggregation,
            lr=self.spec.defaults.lr,
        )
        return out

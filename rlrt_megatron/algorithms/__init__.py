"""The methods' math as pure tensor functions (no process groups, no engines)."""

from rlrt_megatron.algorithms.advantages import group_advantages
from rlrt_megatron.algorithms.distillation import (
    generalized_js,
    sdpo_distillation_loss,
    srpo_token_weights,
    topk_with_tail,
)
from rlrt_megatron.algorithms.entropy_advantage import entropy_shaped_advantages
from rlrt_megatron.algorithms.losses import entropy_bonus, policy_loss, rollout_importance_weights
from rlrt_megatron.algorithms.metrics import avg_at_k, mean_pass_at_k, pass_at_k, results_row
from rlrt_megatron.algorithms.objective import DistillInputs, LossConfig, method_loss
from rlrt_megatron.algorithms.registry import (
    METHODS,
    MethodDefaults,
    MethodSpec,
    distillation_rows,
    get_method,
    policy_gradient_rows,
    register_method,
    teacher_forward_rows,
)
from rlrt_megatron.algorithms.reweighting import token_advantages, token_weight_stats
from rlrt_megatron.algorithms.schedules import LinearSchedule, lambda_schedule

__all__ = [
    "METHODS",
    "DistillInputs",
    "LinearSchedule",
    "LossConfig",
    "MethodDefaults",
    "MethodSpec",
    "avg_at_k",
    "distillation_rows",
    "entropy_bonus",
    "entropy_shaped_advantages",
    "generalized_js",
    "get_method",
    "group_advantages",
    "lambda_schedule",
    "mean_pass_at_k",
    "method_loss",
    "pass_at_k",
    "policy_gradient_rows",
    "policy_loss",
    "register_method",
    "results_row",
    "rollout_importance_weights",
    "sdpo_distillation_loss",
    "srpo_token_weights",
    "teacher_forward_rows",
    "token_advantages",
    "token_weight_stats",
    "topk_with_tail",
]

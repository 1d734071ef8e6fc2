"""A new method through the registry: the reversed-teacher weight on *incorrect* rollouts only.

RLRT reweights the tokens of correct rollouts (its reward gate), RLRT-all those of every rollout.
The mirror ablation, the weight on incorrect rollouts only, is one `MethodSpec`: no trainer or loss
code changes, because every function of the algorithm core reads what it needs from the spec.
Run:

    python examples/custom_method.py
"""

from __future__ import annotations

import torch

from rlrt_megatron.algorithms import (
    MethodDefaults,
    MethodSpec,
    distillation_rows,
    group_advantages,
    method_loss,
    policy_gradient_rows,
    register_method,
    teacher_forward_rows,
    token_advantages,
)
from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.teacher import select_peers

RLRT_INCORRECT = register_method(
    MethodSpec(
        name="rlrt_incorrect",
        teacher_context="peer_rollout",  # the teacher sees a different correct rollout
        token_weight="reverse_teacher",  # w_t = exp(sign(A)·D_t), as RLRT
        weight_gate="incorrect",  # ... but applied where r = 0
        defaults=MethodDefaults(normalize_by_std=True, lr=1e-6, lam_init=0.5, eps_w=0.5),
    )
)


def main() -> None:
    # The run config resolves unset hyperparameters from the registry entry.
    config = AlgorithmConfig(method="rlrt_incorrect")
    resolved = config.resolved()
    shown = ("method", "normalize_by_std", "lam_init", "eps_w")
    print("resolved:", {key: resolved[key] for key in shown})

    # One group of K = 4 rollouts with T = 3 response tokens each; rows 0 and 2 are correct.
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    correct = rewards.bool().flatten()
    advantages = group_advantages(rewards, config.use_std).flatten()
    peers = select_peers(rewards.bool(), generator=torch.Generator().manual_seed(0)).flatten()
    has_teacher = peers >= 0
    mask = torch.ones(4, 3)
    student = torch.log(torch.tensor([[0.5, 0.2, 0.9]] * 4))  # log P_S(y_t)
    teacher = torch.log(torch.tensor([[0.25, 0.4, 0.9]] * 4))  # log P_T(y_t): D_t = ±log 2, 0
    lam = config.schedule().value(0)  # λ at step 0

    for method in ("rlrt", "rlrt_incorrect"):
        rows = teacher_forward_rows(
            method, correct=correct, has_context=has_teacher, advantages=advantages, lam=lam
        )
        a_t = token_advantages(
            method, advantages, correct, student, teacher, mask, has_teacher, lam=lam, eps_w=0.5
        )
        weights = a_t / advantages[:, None]  # (1−λ) + λ·clip(w_t, 1−ε_w, 1+ε_w) per token
        print(f"{method}: teacher forward on rows {rows.nonzero().flatten().tolist()}")
        for row in range(4):
            cells = " ".join(f"{w:.3f}" for w in weights[row].tolist())
            print(f"  row {row} (r={int(rewards[0, row])}, A={advantages[row]:+.3f}): {cells}")

    # The full objective for a (stand-in) current policy: the spec routes every row to the
    # policy-gradient term, the DAPO surrogate does the rest.
    a_t = token_advantages(
        RLRT_INCORRECT, advantages, correct, student, teacher, mask, has_teacher, lam, 0.5
    )
    logprobs = (student + torch.linspace(-0.1, 0.1, 12).view(4, 3)).requires_grad_()
    loss, metrics = method_loss(
        RLRT_INCORRECT,
        logprobs=logprobs,
        old_logprobs=student,
        token_advantages=a_t,
        response_mask=mask,
        pg_rows=policy_gradient_rows(RLRT_INCORRECT, correct, has_teacher),
        distill_rows=distillation_rows(RLRT_INCORRECT, correct, has_teacher),
        config=config.loss_config(),
    )
    loss.backward()
    print(
        f"loss {loss.item():+.4f}, pg tokens {metrics['pg_tokens']:.0f}, "
        f"grad norm {logprobs.grad.norm().item():.4f}"
    )


if __name__ == "__main__":
    main()

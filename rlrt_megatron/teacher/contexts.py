"""Building the teacher views of a batch: which rollouts need one, and the teacher's prompt.

The registry says what context a method's teacher sees (a correct peer rollout, or the ground
truth); `teacher_forward_rows` says which rollouts need a teacher pass at all. This module turns
one step's groups of rollouts into the teacher's chat messages, ready for the tokenizer's chat
template — pure Python and tensors, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlrt_megatron.algorithms.registry import MethodSpec, get_method, teacher_forward_rows
from rlrt_megatron.teacher.peers import select_peers
from rlrt_megatron.teacher.templates import GROUND_TRUTH_TEMPLATE, PEER_TEMPLATE, teacher_prompt


@dataclass(frozen=True, kw_only=True)
class GroupInputs:
    """What the teacher construction needs to know about one prompt's group of K rollouts."""

    messages: Sequence[dict[str, str]]
    """The student's chat messages (the last user message holds the question)."""
    responses: Sequence[str]
    """The K response texts, in rollout order."""
    ground_truth: str
    solution: str | None = None


@dataclass(frozen=True, kw_only=True)
class TeacherPlan:
    """The teacher views of a step's B = G·K rollouts (flattened group-major)."""

    rows: torch.Tensor
    """[B] bool: rollouts that get a teacher forward pass (the smallest set that matters)."""
    has_context: torch.Tensor
    """[B] bool: a context exists (a different correct peer / a ground truth)."""
    peers: torch.Tensor
    """[G, K] long: the peer used as context (−1: none); all −1 for non-peer methods."""
    messages: list[list[dict[str, str]] | None]
    """[B]: the teacher's chat messages for rows in ``rows``, else None."""


def _question_index(messages: Sequence[dict[str, str]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return i
    raise ValueError("the prompt has no user message to attach the teacher context to")


def teacher_messages(
    messages: Sequence[dict[str, str]], context: str, template: str
) -> list[dict[str, str]]:
    """The student's messages with the last user message wrapped in the teacher template."""
    i = _question_index(messages)
    out = [dict(m) for m in messages]
    out[i]["content"] = teacher_prompt(messages[i]["content"], context, template)
    return out


def ground_truth_context(group: GroupInputs) -> str:
    """RLSD's context: the worked solution if the dataset has one, else the boxed final answer."""
    if group.solution and group.solution.strip():
        return group.solution
    return f"The final answer is \\boxed{{{group.ground_truth}}}."


def plan_teacher_batch(
    method: str | MethodSpec,
    groups: Sequence[GroupInputs],
    correct: torch.Tensor,
    advantages: torch.Tensor,
    lam: float,
    generator: torch.Generator | None = None,
) -> TeacherPlan:
    """Choose contexts and the rollouts that need a teacher pass, and build their messages.

    Shapes: ``correct`` [G, K] bool, ``advantages`` [G, K]. Peer methods (RLRT, RLRT-all, SDPO,
    SRPO) show a *different* correct rollout of the same group, drawn with ``generator``;
    ground-truth methods (RLSD) show the solution. Only rows selected by
    `registry.teacher_forward_rows` get messages.
    """
    spec = get_method(method) if isinstance(method, str) else method
    if correct.dim() != 2 or correct.dtype != torch.bool:
        raise ValueError(f"correct must be a [G, K] bool tensor, got {tuple(correct.shape)}")
    if advantages.shape != correct.shape:
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}, expected {tuple(correct.shape)}"
        )
    g, k = correct.shape
    if len(groups) != g or any(len(group.responses) != k for group in groups):
        raise ValueError(f"groups must be {g} groups of {k} responses, matching `correct`")

    peers = torch.full((g, k), -1, dtype=torch.long)
    if spec.teacher_context == "peer_rollout":
        # A correct rollout whose text is blank (it ended at once, or decodes to nothing) shows
        # the teacher nothing: it is nobody's peer (it still trains as a correct rollout).
        shown = torch.tensor(
            [[bool(r.strip()) for r in group.responses] for group in groups], dtype=torch.bool
        ).reshape(g, k)
        peers = select_peers(correct & shown, generator=generator)
        has_context = peers >= 0
    elif spec.teacher_context == "ground_truth":
        has_context = torch.tensor(
            [[bool(group.ground_truth.strip())] * k for group in groups], dtype=torch.bool
        ).reshape(g, k)
    else:
        has_context = torch.zeros((g, k), dtype=torch.bool)

    rows = teacher_forward_rows(
        spec,
        correct=correct.flatten(),
        has_context=has_context.flatten(),
        advantages=advantages.flatten(),
        lam=lam,
    )
    messages: list[list[dict[str, str]] | None] = [None] * (g * k)
    for flat in rows.nonzero().flatten().tolist():
        gi, ki = divmod(flat, k)
        group = groups[gi]
        if spec.teacher_context == "peer_rollout":
            context = group.responses[int(peers[gi, ki])]
            messages[flat] = teacher_messages(group.messages, context, PEER_TEMPLATE)
        else:
            messages[flat] = teacher_messages(
                group.messages, ground_truth_context(group), GROUND_TRUTH_TEMPLATE
            )
    return TeacherPlan(rows=rows, has_context=has_context.flatten(), peers=peers, messages=messages)

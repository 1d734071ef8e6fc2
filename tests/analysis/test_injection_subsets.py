"""Reflection injection (paper Figure 6): hard/easy subsets by count, and the ground-truth teacher
of rollouts whose problem has no correct peer ("feeding a known correct solution c")."""

from __future__ import annotations

import json

import pytest

from rlrt_megatron.analysis.injection import (
    PAPER_EASY_CORRECT,
    PAPER_GROUP_SIZE,
    PAPER_HARD_CORRECT,
    InjectionOutcome,
    flip_rates,
    problem_subset,
)
from rlrt_megatron.cli import CommandError


def test_paper_subsets_by_count():
    # The paper: hard = n_correct ∈ {0, 1, 2} of 8, easy = {5, 6, 7}; 3, 4 and 8 in neither.
    assert (PAPER_HARD_CORRECT, PAPER_EASY_CORRECT, PAPER_GROUP_SIZE) == ((0, 1, 2), (5, 6, 7), 8)
    subsets = [problem_subset(c, 8) for c in range(9)]
    assert subsets == ["hard"] * 3 + [None] * 2 + ["easy"] * 3 + [None]
    # Parametrised: other counts, another K.
    assert problem_subset(1, 4, hard_correct=(0, 1), easy_correct=(3,), group_size=4) == "hard"
    assert problem_subset(4, 4, hard_correct=(0, 1), easy_correct=(3,), group_size=4) is None
    assert problem_subset(3, 5, group_size=None) is None  # any K: counts taken as they are
    with pytest.raises(ValueError, match="problem p: 4 rollouts, but .* out of 8"):
        problem_subset(1, 4, problem="p")
    with pytest.raises(ValueError, match="bad correct count"):
        problem_subset(9, 8)


def _o(kind, before, after, correct, rollouts=8, problem="p"):
    return InjectionOutcome(
        problem_id=problem,
        position_kind=kind,
        correct_before=before,
        correct_after=after,
        problem_correct=correct,
        problem_rollouts=rollouts,
    )


def test_flip_rates_count_the_paper_subsets():
    outcomes = (
        [_o("max_kl", False, True, 0)] * 2  # 0 of 8 correct: hard (was dropped before)
        + [_o("max_kl", False, False, 2)] * 2  # hard
        + [_o("max_kl", False, True, 3)] * 5  # 3 of 8: neither subset
        + [_o("max_kl", True, False, 7)] * 1  # easy
        + [_o("max_kl", True, True, 5)] * 3  # easy
        + [_o("max_kl", True, False, 8)] * 4  # all correct: neither (was "easy" by fraction)
    )
    r = flip_rates(outcomes)["max_kl"]
    assert r["hard_wrong_rollouts"] == 4 and r["wrong_to_right"] == pytest.approx(0.5)
    assert r["easy_right_rollouts"] == 4 and r["right_to_wrong"] == pytest.approx(0.25)
    # The fraction rule (not the paper's) is still available: easy = 6, 7, 8 of 8 there (the
    # 5-of-8 rollouts out, the all-correct ones in): 1 + 4 right rollouts.
    old = flip_rates(outcomes, hard_max_fraction=0.25, easy_min_fraction=0.75)["max_kl"]
    assert old["easy_right_rollouts"] == 5 and old["hard_wrong_rollouts"] == 4
    with pytest.raises(ValueError, match="overlap"):
        flip_rates(outcomes, hard_correct=(0, 1), easy_correct=(1, 7))
    with pytest.raises(ValueError, match="out of 8"):
        flip_rates([_o("random", False, True, 1, rollouts=4)])
    with pytest.raises(ValueError, match="both"):
        flip_rates(outcomes, hard_max_fraction=0.25)


def test_zero_correct_problem_gets_a_ground_truth_teacher(tiny_qwen3_dir, tmp_path):
    from rlrt_megatron.analysis.inputs import load_trajectories, open_model
    from rlrt_megatron.data.templating import encode_chat
    from rlrt_megatron.teacher.contexts import teacher_messages
    from rlrt_megatron.teacher.templates import PEER_TEMPLATE

    model = open_model(tiny_qwen3_dir)
    rows = [
        # Problem "zero": no rollout correct, so no peer context; the answer is known.
        {"prompt": "What is 3 + 4?", "response": "It is 8.", "answer": "7", "problem": "zero"},
        # With a worked solution, the teacher sees it rather than the boxed answer.
        {
            "prompt": "What is 1 + 1?",
            "response": "It is 3.",
            "answer": "2",
            "solution": "1 + 1 = 2, so \\boxed{2}.",
            "problem": "worked",
        },
        # A peer context stays the teacher where there is one.
        {"prompt": "What is 2 + 2?", "response": "4", "context": "2 + 2 = 4", "answer": "4"},
        # Id form (as `rlrt analyze rollouts` writes it): the ground-truth teacher ids given.
        {
            "prompt_ids": [1, 2],
            "response_ids": [3],
            "teacher_prompt_ids": None,
            "ground_truth_teacher_prompt_ids": [5, 6, 7],
            "answer": "1",
        },
    ]
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_trajectories(data, model, need_teacher=True, ground_truth_teacher=True)
    assert [t.teacher for t in loaded] == [
        "ground_truth",
        "ground_truth",
        "context",
        "ground_truth",
    ]

    def teacher_ids(prompt, context):
        messages = teacher_messages([{"role": "user", "content": prompt}], context, PEER_TEMPLATE)
        return encode_chat(model.tokenizer, messages)

    assert loaded[0].request.teacher_prompt_ids == teacher_ids(
        "What is 3 + 4?", "The final answer is \\boxed{7}."
    )
    assert loaded[1].request.teacher_prompt_ids == teacher_ids(
        "What is 1 + 1?", "1 + 1 = 2, so \\boxed{2}."
    )
    assert loaded[2].request.teacher_prompt_ids == teacher_ids("What is 2 + 2?", "2 + 2 = 4")
    assert loaded[3].request.teacher_prompt_ids == [5, 6, 7]
    # Without the fallback the 0-correct problem has no teacher: an error naming the line.
    with pytest.raises(CommandError, match=f"{data}:1: no teacher context"):
        load_trajectories(data, model, need_teacher=True)
    kept = load_trajectories(data, model, need_teacher=True, skip_without_teacher=True)
    assert [t.teacher for t in kept] == ["context"]

"""Figure 7's prompt selection: "30 prompts with n_correct ∈ {0, 1, 2} out of 8 under π_base"."""

from __future__ import annotations

import json

import pytest
from _analysis_data import rollout_rows, write_jsonl

import rlrt_megatron.analysis.commands  # noqa: F401  (registers `rlrt analyze`)
from rlrt_megatron.analysis.inputs import read_problem_counts
from rlrt_megatron.analysis.shift import (
    PAPER_SHIFT_CORRECT,
    PAPER_SHIFT_GROUP_SIZE,
    PAPER_SHIFT_PROMPTS,
    select_problems,
)
from rlrt_megatron.cli import CommandError, main


def test_select_problems_by_base_counts():
    assert (PAPER_SHIFT_PROMPTS, PAPER_SHIFT_CORRECT, PAPER_SHIFT_GROUP_SIZE) == (30, (0, 1, 2), 8)
    # 40 problems; problem i has i % 9 correct of 8: counts 0, 1, 2 are eligible (15 of them).
    counts = {f"p{i}": (i % 9, 8) for i in range(40)}
    eligible = [p for p, (c, _) in counts.items() if c <= 2]
    assert len(eligible) == 15
    chosen, n = select_problems(counts, count=10, seed=3)
    assert n == 15 and len(chosen) == 10 and set(chosen) <= set(eligible)
    assert chosen == [p for p in eligible if p in chosen]  # file order
    assert select_problems(counts, count=10, seed=3)[0] == chosen  # seeded
    assert select_problems(counts, count=0) == (eligible, 15)  # 0: every eligible problem
    # Other subsets: n_correct ∈ {8} (always solved).
    assert select_problems(counts, correct=(8,), count=0)[0] == ["p8", "p17", "p26", "p35"]
    with pytest.raises(ValueError, match="only 15 problems .* fewer than the 30"):
        select_problems(counts)  # the paper's 30
    with pytest.raises(ValueError, match="problem q: 4 base rollouts"):
        select_problems({"q": (1, 4)}, count=1)
    assert select_problems({"q": (1, 4)}, count=1, group_size=None)[0] == ["q"]


def test_read_problem_counts(tmp_path):
    rows = [
        # `rlrt analyze rollouts` lines: the counts over all K sampled are given.
        {"problem": "a", "correct": False, "problem_correct": 1, "problem_rollouts": 8},
        {"problem": "a", "correct": True, "problem_correct": 1, "problem_rollouts": 8},
        # Hand-made lines: counted by `correct`; the prompt groups them when no `problem`.
        {"prompt": "b?", "correct": True},
        {"prompt": "b?", "correct": False},
        {"prompt": "b?", "correct": False},
    ]
    path = write_jsonl(tmp_path / "base.jsonl", rows)
    assert read_problem_counts(path) == {"a": (1, 8), "b?": (1, 3)}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "a", "answer": "1"}])
    with pytest.raises(CommandError, match=f"{bad}:1: needs 'correct'"):
        read_problem_counts(bad)


@pytest.mark.distributed
def test_shift_on_the_selected_prompts(tiny_qwen3_dir, tmp_path):
    rows = rollout_rows()  # problems p0, p1, p2, two rollouts each
    data = write_jsonl(tmp_path / "ft.jsonl", rows)
    base = [
        {"problem": p, "correct": False, "problem_correct": c, "problem_rollouts": 8}
        for p, c in (("p0", 0), ("p1", 5), ("p2", 2))
    ]
    base_rollouts = write_jsonl(tmp_path / "base.jsonl", base)
    out = tmp_path / "shift"
    argv = ["analyze", "shift", "--base", str(tiny_qwen3_dir), "--data", str(data)]
    extra = ["--finetuned", str(tiny_qwen3_dir), "--base-rollouts", str(base_rollouts)]
    assert main([*argv, *extra, "--select-prompts", "2", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"]["problems"] == ["p0", "p2"]  # p1: 5 of 8, not eligible
    assert summary["selection"]["eligible"] == 2 and summary["selection"]["n_correct"] == [0, 1, 2]
    assert summary["finetuned"][str(tiny_qwen3_dir)]["rollouts"] == 4
    # Asking for more than are eligible is refused before any model is loaded.
    assert main([*argv, *extra, "--select-prompts", "3", "--output", str(tmp_path / "x")]) == 1

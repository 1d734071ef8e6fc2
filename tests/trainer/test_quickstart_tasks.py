"""The quickstart's task choice (``quickstart.task.kind``): the countdown task is prepared with its
own splits, and a grader that cannot read the task's answers is refused before any warm-up."""

from __future__ import annotations

import pytest

from rlrt_megatron.configuration import ConfigError, from_dict, read_yaml
from rlrt_megatron.data.readers import read_jsonl
from rlrt_megatron.rewards.countdown import grade_countdown
from rlrt_megatron.trainer.quickstart import QuickstartConfig, TaskSection, apply_quickstart

TINY = {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 64, "tokenizer_vocab_size": 300}  # fmt: skip


def test_a_grader_that_cannot_read_the_task_is_refused_before_the_warm_up(tmp_path):
    quick = from_dict(QuickstartConfig, {"task": {"kind": "countdown"}})
    with pytest.raises(ConfigError, match="reward.name: 'math' cannot grade quickstart.task.kind"):
        apply_quickstart({"reward": {"name": "math"}}, quick, tmp_path / "work")
    with pytest.raises(ConfigError, match="reward.name: 'math' cannot grade"):
        apply_quickstart({}, quick, tmp_path / "work")  # math is the default reward
    assert not (tmp_path / "work").exists()  # nothing was built
    with pytest.raises(ConfigError, match="'sudoku' is not one of"):
        TaskSection(kind="sudoku")


def test_countdown_quickstart_prepares_its_splits_and_warm_model(tmp_path):
    quick = from_dict(
        QuickstartConfig,
        {
            "model": TINY,
            "task": {
                "kind": "countdown",
                "num_train": 20,
                "num_rl": 10,
                "num_test": 5,
                "num_numbers": 3,
            },  # fmt: skip
            "warmup": {"steps": 2, "batch_size": 4, "warmup_steps": 1},
        },
    )
    tree = apply_quickstart({"reward": {"name": "countdown"}}, quick, tmp_path / "work")
    assert (tmp_path / "work" / "warm_model" / "model.safetensors").exists()
    rl, _ = read_jsonl(tree["data"]["train_files"][0])
    test, _ = read_jsonl(tree["data"]["eval_files"][0])
    sft, _ = read_jsonl(tmp_path / "work" / "data" / "sft.jsonl")
    assert (len(sft), len(rl), len(test)) == (20, 10, 5)
    questions = [{r.question for r in rows} for rows in (sft, rl, test)]
    assert not (
        questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2]
    )
    assert all(grade_countdown(r.solution, r.ground_truth).score == 1.0 for r in sft + rl + test)
    assert tree["model"]["path"] == str(tmp_path / "work" / "warm_model")


def test_the_miniature_config_is_a_valid_countdown_run():
    from rlrt_megatron.trainer.config import RunConfig

    tree = read_yaml("configs/miniature/countdown.yaml")
    quick = from_dict(QuickstartConfig, tree.pop("quickstart"))
    assert quick.task.kind == "countdown" and tree["reward"]["name"] == "countdown"
    tree = {**tree, "model": {"path": "unused"}, "data": {**tree["data"], "train_files": ["x"]}}
    config = from_dict(RunConfig, tree)
    assert config.eval.n == 64 and config.algorithm.eps_w == 1.0


def test_work_dir_points_several_runs_at_one_prepared_model(tmp_path):
    quick = from_dict(QuickstartConfig, {"work_dir": str(tmp_path / "shared")})
    assert quick.work_folder(tmp_path / "default") == tmp_path / "shared"
    assert from_dict(QuickstartConfig, {}).work_folder(tmp_path / "default") == tmp_path / "default"


def test_teacher_view_pairs_show_the_solution_in_the_trainers_teacher_prompts():
    from rlrt_megatron.teacher.templates import GROUND_TRUTH_TEMPLATE, PEER_TEMPLATE, teacher_prompt
    from rlrt_megatron.trainer.quickstart import teacher_view_pairs

    pairs = [(f"question {i}", f"solution {i}") for i in range(10)]
    extra = teacher_view_pairs(pairs, 0.4, seed=0)
    assert len(extra) == 4 and extra == teacher_view_pairs(pairs, 0.4, seed=0)
    for i, (prompt, response) in enumerate(extra):
        question = pairs[int(response.split()[-1])][0]
        template = (PEER_TEMPLATE, GROUND_TRUTH_TEMPLATE)[i % 2]
        assert prompt == teacher_prompt(question, response, template)
    assert teacher_view_pairs(pairs, 0.0, seed=0) == []
    with pytest.raises(ConfigError, match="teacher_view_fraction must be in"):
        TaskSection(teacher_view_fraction=1.5)


def test_a_work_folder_prepared_from_another_section_is_refused(tmp_path):
    from rlrt_megatron.trainer.quickstart import check_prepared_with

    quick = from_dict(QuickstartConfig, {"task": {"kind": "countdown"}})
    check_prepared_with(quick, tmp_path)  # records the section
    elsewhere = {"task": {"kind": "countdown"}, "work_dir": "elsewhere"}
    check_prepared_with(from_dict(QuickstartConfig, elsewhere), tmp_path)  # work_dir not recorded
    other = from_dict(QuickstartConfig, {"task": {"kind": "countdown", "num_numbers": 3}})
    with pytest.raises(ConfigError, match=r"prepared from another quickstart section .*\['task'\]"):
        check_prepared_with(other, tmp_path)

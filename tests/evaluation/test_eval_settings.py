"""Evaluation settings (issue 14, item 8): Qwen3-8B evaluated with thinking off through
`rlrt eval --config` or the run's own config, the paper's sampling, and a length cap that is
refused (with the reason) rather than silently lowered. No engine starts here."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

import rlrt_megatron.evaluation.evaluate as evaluate_module
from rlrt_megatron.cli import main
from rlrt_megatron.evaluation import commands  # noqa: F401  (registers rlrt eval)
from rlrt_megatron.evaluation.commands import eval_settings, run_config_path
from rlrt_megatron.evaluation.runner import check_eval_length
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.stack import check_eval_fits

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
NO_THINK = PAPER / "qwen3_8b_no_think" / "rlrt.yaml"
PAPER_EVAL = {"n": 16, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 38912}


def _args(**given) -> argparse.Namespace:
    keys = ("n", "temperature", "top_p", "top_k", "max_tokens", "thinking")
    return argparse.Namespace(**{k: given.get(k) for k in keys})


def test_settings_come_from_the_command_line_then_the_configs_then_the_paper():
    paper_run = load_run_config(NO_THINK)
    assert eval_settings(_args(), None, None) == {**PAPER_EVAL, "enable_thinking": None}
    assert eval_settings(_args(), paper_run, None) == {**PAPER_EVAL, "enable_thinking": False}
    # The evaluated run's own config gives only the chat template it trained with.
    trained = load_run_config(NO_THINK, ["eval.n=2", "eval.temperature=1.0"])
    assert eval_settings(_args(), None, trained) == {**PAPER_EVAL, "enable_thinking": False}
    given = eval_settings(_args(n=4, thinking=True), paper_run, trained)
    assert given == {**PAPER_EVAL, "n": 4, "enable_thinking": True}


def test_the_run_config_of_a_checkpoint_export(tmp_path: Path):
    hf = tmp_path / "run" / "checkpoints" / "step_20" / "hf"
    hf.mkdir(parents=True)
    assert run_config_path(hf) is None  # the run saved no config.yaml
    (tmp_path / "run" / "config.yaml").write_text("model: {path: m}\n")
    assert run_config_path(hf) == tmp_path / "run" / "config.yaml"
    assert run_config_path(tmp_path / "run" / "checkpoints" / "step_20") is None
    assert run_config_path(tmp_path / "models" / "Qwen3-8B") is None


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """`rlrt eval` up to the EvalConfig it would evaluate with (no engine)."""
    seen = {}

    def fake_evaluate_model(model, data, output, config, **kwargs):
        seen["config"] = config
        Path(output).mkdir(parents=True, exist_ok=True)
        (Path(output) / "results.md").write_text("")
        return {"benchmarks": {}}

    monkeypatch.setattr(evaluate_module, "evaluate_model", fake_evaluate_model)
    bench = tmp_path / "b.jsonl"
    bench.write_text('{"problem": "1+1?", "answer": "2"}\n')
    return seen, bench


def test_rlrt_eval_with_the_paper_config_turns_thinking_off(tiny_qwen3_dir, captured, tmp_path):
    seen, bench = captured
    argv = ["eval", "--model", str(tiny_qwen3_dir), "--data", str(bench)]
    assert main([*argv, "--output", str(tmp_path / "o"), "--config", str(NO_THINK)]) == 0
    config = seen["config"]
    assert config.enable_thinking is False
    assert (config.n, config.temperature, config.top_p, config.top_k, config.max_tokens) == (
        16,
        0.7,
        0.8,
        20,
        38912,
    )
    assert main([*argv, "--output", str(tmp_path / "p")]) == 0  # a bare HF folder: defaults
    assert seen["config"].enable_thinking is None and seen["config"].n == 16


def test_rlrt_eval_of_a_checkpoint_uses_its_runs_chat_template(tiny_qwen3_dir, captured, tmp_path):
    seen, bench = captured
    run = tmp_path / "runs" / "qwen3_8b_no_think"
    hf = shutil.copytree(tiny_qwen3_dir, run / "checkpoints" / "step_20" / "hf")
    shutil.copy(NO_THINK, run / "config.yaml")
    shutil.copy(NO_THINK.parent / "backbone.yaml", run / "backbone.yaml")
    shutil.copy(PAPER / "common.yaml", tmp_path / "runs" / "common.yaml")
    argv = ["eval", "--model", str(hf), "--data", str(bench), "--output", str(tmp_path / "o")]
    assert main(argv) == 0
    assert seen["config"].enable_thinking is False


def test_the_paper_length_is_refused_not_lowered():
    # 2048 prompt + 38912 response = 40960 positions: exactly Qwen3-8B's max_position_embeddings.
    check_eval_length(2048, 38912, 40960, "models/Qwen3-8B")
    # Qwen3-4B-Base / 8B-Base have 32768 positions.
    with pytest.raises(ValueError, match=r"needs prompt \(2048\) \+ 38912 response tokens = 40960"):
        check_eval_length(2048, 38912, 32768, "models/Qwen3-4B-Base")
    with pytest.raises(ValueError, match="max_position_embeddings is 32768. Refused: the paper"):
        check_eval_length(2048, 38912, 32768, "models/Qwen3-4B-Base")
    check_eval_length(2048, 38912, None, "unknown")  # no limit known: the engine decides


def test_a_paper_run_with_eval_files_checks_the_length_before_starting(tmp_path: Path):
    model = tmp_path / "Qwen3-4B-Base"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 32768}))
    base = ["model.path=" + str(model)]
    check_eval_fits(load_run_config(PAPER / "qwen3_4b_base" / "grpo.yaml", base))  # no eval
    with_eval = [*base, "data.eval_files=[aime24.parquet]"]
    with pytest.raises(ValueError, match="max_position_embeddings is 32768"):
        check_eval_fits(load_run_config(PAPER / "qwen3_4b_base" / "grpo.yaml", with_eval))
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 40960}))
    check_eval_fits(load_run_config(PAPER / "qwen3_4b_base" / "grpo.yaml", with_eval))

"""The paper's run configs (configs/paper/): every file loads, and each backbone × method
resolves to the paper's settings (shared/DESIGN.md §1, Table 5). Fast: no models are built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlrt_megatron.trainer.config import RunConfig, load_run_config

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
METHODS = ("grpo", "grpo_eb", "diver", "rlrt", "rlrt_all", "rlsd", "sdpo", "srpo")
# backbone folder → (model folder, enable_thinking, RLRT ε_w, RLRT λ decay steps or None)
BACKBONES = {
    "qwen3_4b_base": ("models/Qwen3-4B-Base", None, 1.0, None),
    "qwen3_8b_base": ("models/Qwen3-8B-Base", None, 1.0, None),
    "qwen3_4b_instruct_2507": ("models/Qwen3-4B-Instruct-2507", None, 0.5, 30),
    "qwen3_8b_no_think": ("models/Qwen3-8B", False, 0.2, 30),
}
LR = {
    "grpo": 1e-6,
    "grpo_eb": 1e-6,
    "diver": 1e-6,
    "rlrt": 1e-6,
    "rlrt_all": 1e-6,
    "rlsd": 1e-6,
    "sdpo": 1e-5,
    "srpo": 5e-6,
}
STD = {
    "grpo": False,
    "grpo_eb": False,
    "diver": True,
    "rlrt": True,
    "rlrt_all": True,
    "rlsd": True,
    "sdpo": False,
    "srpo": False,
}
GPUS_PER_NODE = 8


def _yaml_files() -> list[Path]:
    return sorted(PAPER.rglob("*.yaml"))


def test_the_tree_is_complete() -> None:
    expected = {PAPER / "common.yaml"}
    for backbone in BACKBONES:
        expected.add(PAPER / backbone / "backbone.yaml")
        expected.update(PAPER / backbone / f"{m}.yaml" for m in METHODS)
    assert set(_yaml_files()) == expected
    assert (PAPER / "README.md").is_file()


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(PAPER)))
def test_every_file_loads_and_says_what_it_is(path: Path) -> None:
    assert path.read_text().startswith("# "), f"{path} has no header comment"
    assert isinstance(load_run_config(path), RunConfig)


def _lam(config: RunConfig, step: int) -> float:
    return config.algorithm.schedule().value(step)


def _check_table5(c: RunConfig) -> None:
    assert c.data.train_files == ["data/dapo-math-17k.parquet"]
    assert (c.data.prompts_per_step, c.data.rollouts_per_prompt) == (256, 8)
    assert c.data.max_prompt_tokens == 2048
    assert c.rollout.max_response_tokens == 20480
    assert (c.rollout.temperature, c.rollout.top_p, c.rollout.top_k) == (1.0, 1.0, 0)
    # mini-batch of 128 questions: 256 / 2
    assert c.data.prompts_per_step // c.actor.mini_batches == 128
    opt = c.actor.optimizer
    assert (opt.warmup_steps, opt.weight_decay, opt.clip_grad) == (10, 0.01, 1.0)
    assert opt.schedule_unit == "rl_step"  # 10 RL steps of warm-up, as verl counts them
    a = c.algorithm
    assert (a.clip_low, a.clip_high, a.rollout_is_clip, a.aggregation) == (
        0.2,
        0.28,
        2.0,
        "token-mean",
    )
    assert c.actor.dtype == torch.bfloat16
    e = c.eval
    assert (e.n, e.temperature, e.top_p, e.top_k, e.max_response_tokens) == (
        16,
        0.7,
        0.8,
        20,
        38912,
    )


def _check_layout(c: RunConfig) -> None:
    p = c.actor.parallel
    ranks = p.tensor_parallel * p.pipeline_parallel * p.context_parallel * c.actor.data_parallel
    actor_gpus = ranks * c.actor.gpus_per_rank
    engine_gpus = c.rollout.num_engines * c.rollout.gpus_per_engine
    assert c.actor.gpus_per_rank == 1 and c.rollout.placement == "disaggregated"
    # TP stays inside a node; actor and engines each fill whole 8-GPU nodes (one node each).
    assert GPUS_PER_NODE % p.tensor_parallel == 0
    assert actor_gpus == GPUS_PER_NODE and engine_gpus == GPUS_PER_NODE
    assert c.rollout.gpus_per_engine >= c.rollout.tensor_parallel
    assert not c.actor.sequence_parallel or p.tensor_parallel > 1
    # The (packed, real-token) micro-batch budget holds the widest rollout with its teacher
    # sequence (a peer rollout and the template as context in the teacher prompt).
    student = c.data.max_prompt_tokens + c.rollout.max_response_tokens
    teacher = student + c.rollout.max_response_tokens + 1024
    assert c.actor.packing and c.actor.max_tokens >= student + teacher


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_backbone_method_resolves_to_the_paper(backbone: str, method: str) -> None:
    c = load_run_config(PAPER / backbone / f"{method}.yaml")
    model_path, thinking, rlrt_eps, rlrt_decay = BACKBONES[backbone]
    assert c.model.path == model_path
    assert c.model.enable_thinking is thinking
    assert c.trainer.run_dir == f"runs/paper/{backbone}/{method}"
    a = c.algorithm
    assert a.method == method
    assert c.lr == pytest.approx(LR[method])
    assert a.use_std is STD[method]
    if method in ("rlrt", "rlrt_all"):
        assert a.weight_clip == rlrt_eps
        assert _lam(c, 0) == pytest.approx(0.5)
        if rlrt_decay is None:
            assert _lam(c, 10_000) == pytest.approx(0.5)
        else:
            assert _lam(c, rlrt_decay // 2) == pytest.approx(0.25)
            assert _lam(c, rlrt_decay) == pytest.approx(0.0)
    elif method == "rlsd":  # RLSD keeps its own ε_w 0.2 and decay over 50 steps everywhere
        assert a.weight_clip == 0.2
        assert _lam(c, 0) == pytest.approx(0.5)
        assert _lam(c, 25) == pytest.approx(0.25)
        assert _lam(c, 50) == pytest.approx(0.0)
    else:  # no token reweighting: λ = 0 is plain GRPO-style advantages
        assert _lam(c, 0) == 0.0
    # Table 5: SDPO's EMA update rate 0.0, i.e. the frozen initial model (SDPO's reference);
    # SRPO distills as SDPO does, with SDPO's teacher. The others: θ_old (an open choice).
    expected_teacher = "initial" if method in ("sdpo", "srpo") else "behavior"
    assert c.actor.teacher_weights == expected_teacher
    _check_table5(c)
    _check_layout(c)


def test_eps_w_sweep_is_an_override() -> None:
    c = load_run_config(PAPER / "qwen3_4b_base" / "rlrt.yaml", ["algorithm.eps_w=0.2"])
    assert c.algorithm.weight_clip == 0.2
    assert c.algorithm.method == "rlrt"


# --------------------------------------------------------------- answer format (issue 14, item 1)

DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_REMINDER = '\n\nRemember to put your answer on its own line after "Answer:".'
DAPO_ROWS = [  # (problem, ground truth) as DAPO-Math-17k ships them: an integer answer string
    ("What is the remainder when $2^{10}$ is divided by $7$?", "2"),
    ("How many positive divisors does $36$ have?", "9"),
    ("Compute $\\frac{3}{4} \\cdot 96$.", "72"),
]


def _write_dapo_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", messages),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
            ("extra_info", pa.struct([("index", pa.string())])),
        ]
    )
    rows = [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_INSTRUCTION + q + DAPO_REMINDER}],
            "ability": "MATH",
            "reward_model": {"ground_truth": a, "style": "rule-lax"},
            "extra_info": {"index": f"id-{i}"},
        }
        for i, (q, a) in enumerate(DAPO_ROWS)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_paper_prompts_ask_for_the_box_the_reward_grades(backbone: str, method: str) -> None:
    c = load_run_config(PAPER / backbone / f"{method}.yaml")
    assert (c.data.prompt_format, c.reward.name) == ("boxed", "math")


def test_paper_data_and_reward_path_on_dapo_rows(tmp_path: Path) -> None:
    """The paper config's data section loads DAPO-style rows as boxed prompts, and its reward
    scores a correct boxed answer 1, a wrong one 0 and an "Answer:"-only line 0 (no_answer)."""
    from transformers import AutoTokenizer

    from rlrt_megatron.models.tiny import build_tokenizer
    from rlrt_megatron.rewards import get_reward
    from rlrt_megatron.trainer.prompts import load_prompts

    c = load_run_config(PAPER / "qwen3_8b_no_think" / "rlrt.yaml")
    build_tokenizer(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    prompts, counts = load_prompts(
        [str(_write_dapo_parquet(tmp_path / "dapo.parquet"))],
        tokenizer,
        max_prompt_tokens=c.data.max_prompt_tokens,
        on_bad_row=c.data.on_bad_row,
        enable_thinking=c.model.enable_thinking,
        prompt_format=c.data.prompt_format,
    )
    assert counts == {"rows": 3, "bad_rows": 0, "too_long": 0, "kept": 3}
    grade = get_reward(c.reward.name)
    for p, (question, answer) in zip(prompts, DAPO_ROWS, strict=True):
        assert p.record.prompt == [
            {
                "role": "user",
                "content": question
                + "\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
            }
        ]
        assert "Answer: $Answer" not in tokenizer.decode(p.ids)
        truth = p.record.ground_truth
        assert grade(f"So the result is \\boxed{{{answer}}}.", truth) == (1.0, "correct")
        assert grade("So the result is \\boxed{1000}.", truth) == (0.0, "wrong")
        assert grade(f"Working it out.\nAnswer: {answer}", truth) == (0.0, "no_answer")


def test_readme_table_names_only_real_config_keys() -> None:
    import dataclasses
    import re
    import typing

    text = (PAPER / "README.md").read_text()
    table = text[text.index("## Paper setting → config key → value") :]
    sections = "data|model|actor|rollout|reward|eval|trainer|algorithm"
    keys = set(re.findall(rf"`((?:{sections})\.[a-z_.]+)`", table))
    assert {
        "data.prompt_format",
        "actor.optimizer.schedule_unit",
        "algorithm.entropy_form",
        "actor.teacher_weights",
    } <= keys
    for key in sorted(keys):
        cls = RunConfig
        for part in key.split("."):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            assert part in fields, f"README names {key!r}: no field {part!r} in {cls.__name__}"
            cls = typing.get_type_hints(cls)[part]

"""`rlrt plan`: every paper config fits two 8×H100 80 GB nodes; impossible layouts are refused
with the reason; the shape table and the memory arithmetic match hand-computed values."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import rlrt_megatron.launch.plan_command  # noqa: F401  (registers `rlrt plan`)
from rlrt_megatron.cli import main
from rlrt_megatron.launch.paper import PAPER_DIR, paper_configs
from rlrt_megatron.launch.plan import (
    GB,
    Assumptions,
    Cluster,
    Workload,
    actor_memory,
    make_plan,
    padded_vocab,
)
from rlrt_megatron.launch.shapes import (
    QWEN3_SHAPES,
    ShapeError,
    shape_by_name,
    shape_from_config_json,
)

PAPER = paper_configs()


def _plan_json(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(["plan", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_every_backbone_and_method_has_a_recipe():
    backbones = {p.name for p in PAPER_DIR.iterdir() if p.is_dir()}
    assert len(PAPER) == 8 * len(backbones) and len(backbones) == 4
    assert all(name.split("/")[1] != "backbone" for name in PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_fits_two_h100_nodes(capsys, name):
    code, plan, err = _plan_json(capsys, str(PAPER[name]))
    assert code == 0, err
    assert plan["problems"] == []
    assert (plan["nodes"], plan["gpus_per_node"]) == (2, 8)
    actor, rollout = plan["actor"], plan["rollout"]
    assert actor["tp"] * actor["pp"] * actor["cp"] * actor["dp"] == actor["gpus"] == 8
    assert rollout["engines"] * rollout["tp"] == rollout["gpus"] == 8
    assert 0 < plan["actor_memory_total_gb"] <= 80
    assert plan["engine_memory_gb"]["KV cache"] > 0
    assert plan["kv_tokens_per_engine"] >= 2048 + 20480
    assert plan["recompute"] == "full"
    step = plan["step"]
    assert step["sequences"] == 256 * 8
    assert step["step_s"] == pytest.approx(step["rollout_s"] + step["train_s"] + step["sync_s"])
    assert step["step_s"] > 0


def test_text_output_names_layout_memory_and_assumptions(capsys):
    code = main(["plan", str(PAPER["qwen3_8b_base/rlrt"])])
    out = capsys.readouterr().out
    assert code == 0
    for needle in (
        "Qwen3-8B (built-in Qwen3 table)",
        "2 nodes × 8 GPUs",
        "TP 4 × PP 1 × CP 2 × DP 1 = 8 GPUs",
        "4 vLLM engines × TP 2 = 8 GPUs",
        "disaggregated",
        "optimizer (Adam fp32 master + m + v)",
        "activation recomputation: full",
        "989 TFLOP/s",
        "40% MFU",
    ):
        assert needle in out, needle


def test_full_config_prints_the_resolved_config(capsys):
    assert main(["plan", str(PAPER["qwen3_4b_base/sdpo"]), "--full-config"]) == 0
    out = capsys.readouterr().out
    assert "resolved config:" in out and "method: sdpo" in out and "max_tokens: 66560" in out


def test_tensor_parallel_three_is_refused(capsys):
    config = str(PAPER["qwen3_4b_base/rlrt"])
    code, plan, err = _plan_json(capsys, config, "actor.parallel.tensor_parallel=3")
    assert code == 1
    assert "this layout cannot work" in err
    assert "TP=3 does not divide the 32 attention heads" in err
    assert "KV heads" in err
    assert any("GPUs" in p for p in plan["problems"])  # 3·1·1·2 + 8 != 16


@pytest.mark.parametrize(
    ("overrides", "flags", "reason"),
    [
        (["actor.parallel.pipeline_parallel=5", "actor.data_parallel=1"], [], "does not divide"),
        (["rollout.tensor_parallel=3", "rollout.num_engines=2"], [], "rollout TP=3"),
        (["rollout.num_engines=5"], ["--nodes", "2"], "is 18, but the cluster has 2×8 = 16 GPUs"),
        (["rollout.num_engines=5"], [], "is 18, but the cluster has 3×8 = 24 GPUs"),
        (["rollout.placement=colocated"], [], "rollout TP must be 1, got 2"),
        (
            [
                "rollout.placement=colocated",
                "rollout.tensor_parallel=1",
                "rollout.num_engines=16",
                "actor.data_parallel=2",
            ],
            ["--nodes", "2"],
            "lower rollout.gpu_memory_utilization to at most",
        ),
        (["actor.max_tokens=16384"], [], "cannot hold the widest rollout: 66560 real tokens"),
        (
            [
                "actor.max_tokens=66560",
                "actor.packing=false",
                "actor.parallel.context_parallel=1",
                "actor.data_parallel=2",
            ],
            [],
            "cannot hold the widest rollout: 88064 padded tokens",
        ),
        (["rollout.gpu_memory_utilization=0.1"], [], "KV cache"),
        ([], ["--recompute", "none"], "over the 80 GB"),
        ([], ["--nodes", "3"], "the cluster has 3×8 = 24 GPUs"),
    ],
)
def test_impossible_layouts_are_refused(capsys, overrides, flags, reason):
    code = main(["plan", str(PAPER["qwen3_8b_base/rlrt"]), *overrides, *flags])
    err = capsys.readouterr().err
    assert code == 1 and reason in err, err


def test_colocated_layout_shares_the_actor_gpus(capsys):
    """16 TP=1 engines beside 16 actor ranks on 2 nodes, leaving the actor's resident state room."""
    code, plan, err = _plan_json(
        capsys,
        str(PAPER["qwen3_8b_base/rlrt"]),
        "rollout.placement=colocated",
        "rollout.tensor_parallel=1",
        "rollout.num_engines=16",
        "actor.data_parallel=2",
        "rollout.gpu_memory_utilization=0.5",
        "--nodes",
        "2",
    )
    assert code == 0, err
    assert plan["problems"] == []


def test_bad_config_key_is_a_one_line_error(capsys):
    assert main(["plan", str(PAPER["qwen3_8b_base/rlrt"]), "actor.nope=1"]) == 1
    assert "nope" in capsys.readouterr().err


def test_unknown_model_without_config_json(capsys, tmp_path):
    assert main(["plan", str(PAPER["qwen3_8b_base/rlrt"]), f"model.path={tmp_path}/Llama"]) == 1
    assert "not a known Qwen3 size" in capsys.readouterr().err


def test_local_config_json_is_preferred(capsys, tiny_qwen3_dir):
    """The tiny checkpoint's own config.json: 4 heads, 2 KV heads (TP 4 no longer divides)."""
    code, plan, err = _plan_json(
        capsys, str(PAPER["qwen3_4b_base/rlrt"]), f"model.path={tiny_qwen3_dir}"
    )
    assert plan["shape_source"].endswith("config.json")
    assert code == 1 and "does not divide the 2 KV heads" in err


def test_qwen3_table_parameter_counts():
    """Against the published sizes (and the tiny model's exact count from its safetensors)."""
    expected_billions = {
        "Qwen3-0.6B": 0.596,
        "Qwen3-1.7B": 1.721,
        "Qwen3-4B": 4.022,
        "Qwen3-8B": 8.191,
        "Qwen3-14B": 14.768,
        "Qwen3-32B": 32.762,
    }
    for name, billions in expected_billions.items():
        assert QWEN3_SHAPES[name].total_params / 1e9 == pytest.approx(billions, abs=1e-3)
    assert shape_by_name("models/Qwen3-8B-Base").name == "Qwen3-8B"
    assert shape_by_name("/x/qwen3-4b-instruct-2507/").name == "Qwen3-4B-Instruct-2507"
    with pytest.raises(ShapeError, match="not a known Qwen3 size"):
        shape_by_name("models/Qwen3-5B")


def test_shape_from_config_json_counts_the_tiny_model(tiny_qwen3_dir):
    from safetensors import safe_open

    shape = shape_from_config_json(tiny_qwen3_dir)
    with safe_open(str(tiny_qwen3_dir / "model.safetensors"), "pt") as handle:
        stored = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118
    assert shape.total_params == stored


def test_memory_arithmetic_by_hand():
    """Qwen3-8B at TP 4 × DP 2 with the distributed optimizer, full recomputation."""
    shape = QWEN3_SHAPES["Qwen3-8B"]
    workload = Workload(
        tp=4,
        pp=1,
        dp=2,
        sequence_parallel=True,
        micro_batch_tokens=88064,
        prompts_per_step=256,
        rollouts_per_prompt=8,
        mini_batches=2,
        max_prompt_tokens=2048,
        max_response_tokens=20480,
        needs_teacher=True,
        engines=4,
        engine_tp=2,
        gpu_memory_utilization=0.85,
        placement="disaggregated",
    )
    vocab = padded_vocab(shape.vocab, 4)
    assert vocab == 152064 and vocab % (128 * 4) == 0
    params = (36 * shape.layer_params + 2 * vocab * shape.hidden + shape.hidden) / 4
    memory = actor_memory(shape, workload, Assumptions()).parts
    assert memory["weights"] == pytest.approx(2 * params)
    assert memory["gradients (fp32 main_grad)"] == pytest.approx(4 * params)
    assert memory["optimizer (Adam fp32 master + m + v)"] == pytest.approx(12 * params / 2)
    h, q, kv, i = 4096, 4096, 1024, 12288
    per_layer_token = (8 * h + 6 * q + 6 * kv + 6 * i) / 4
    kept = 2 * h / 4
    assert memory["activations (full recompute)"] == pytest.approx(
        88064 * (36 * kept + per_layer_token)
    )
    # Packed micro-batch: the output layer's logits plus the gathered response logits. Mean
    # rollout (prompt 512, response 10240) with its teacher: 512 + 10240 + 512 + 2·10240 + 1024
    # = 32768 tokens, 20480 of them response tokens.
    responses = 88064 * 20480 / 32768
    assert memory["logits + grad (bf16)"] == pytest.approx(2 * (88064 + responses) * vocab / 4 * 2)
    cp2 = actor_memory(shape, dataclasses.replace(workload, cp=2, dp=1), Assumptions()).parts
    gathered_kv = 4 * kv * 1 / 4  # K and V of the other CP rank, bf16, split by TP
    assert cp2["activations (full recompute)"] == pytest.approx(
        88064 / 2 * (36 * kept + per_layer_token + gathered_kv)
    )
    assert cp2["optimizer (Adam fp32 master + m + v)"] == pytest.approx(12 * params / 2)
    plan = make_plan(shape, workload, Cluster(nodes=2))
    assert plan.ok
    kv_per_gpu = 2 * 36 * 8 * 128 * 2 / 2
    engine_budget = 0.85 * 80 * GB - shape.total_params * 2 / 2 - 2 * GB
    assert plan.kv_tokens_per_engine == math.floor(engine_budget / kv_per_gpu)


def test_context_parallel_comes_from_the_config_and_the_flag_overrides_it(capsys):
    code, plan, _ = _plan_json(capsys, str(PAPER["qwen3_8b_base/rlrt"]))
    assert code == 0 and plan["actor"]["cp"] == 2 and plan["actor"]["packing"] is True
    code, plan, _ = _plan_json(
        capsys,
        str(PAPER["qwen3_8b_base/rlrt"]),
        "actor.data_parallel=2",
        "--context-parallel",
        "1",
    )
    assert code == 0 and plan["actor"]["cp"] == 1 and plan["actor"]["gpus"] == 8


def test_padded_micro_batches_cost_more_flops_than_packed(capsys):
    _, packed, _ = _plan_json(capsys, str(PAPER["qwen3_8b_base/rlrt"]))
    _, padded, _ = _plan_json(
        capsys,
        str(PAPER["qwen3_8b_base/rlrt"]),
        "actor.packing=false",
        "actor.max_tokens=88064",
        "actor.parallel.context_parallel=1",
        "actor.data_parallel=2",
    )
    assert padded["step"]["train_flops"] > 1.2 * packed["step"]["train_flops"]

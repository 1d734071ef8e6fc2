"""PolicyActor on one CUDA GPU (nccl, no CPU compatibility layer) against the CPU HF reference.

The same rollouts, update inputs and single-process HF + AdamW reference as
test_actor_parallel.py (imported from there), but the actor runs in this process on ``cuda:0``:
- float32 scores (student/teacher log-probs, entropy, KL) match HF on the CPU;
- float32 updates (grpo, rlrt, sdpo; two mini-batches) match HF AdamW on the CPU;
- the HF export after the update comes back as full CUDA tensors with the checkpoint's names;
- bfloat16 scores stay close to the float32 reference;
- full and selective activation recomputation give the same bf16 update as none, with SDPA
  (the default without Transformer Engine) and with megatron's unfused attention;
- SDPA and unfused attention give the same float32 scores.

Tolerances: float32 on the GPU differs from the CPU only by reduction order (cuBLAS picks its
own split of the K dimension; TF32 stays off, torch's default for matmuls), which at these sizes
is ~1e-6 on log-probs; 1e-4 / 2e-5 leave headroom without hiding a wrong token or position.
bfloat16 keeps 8 mantissa bits: log-probs of a ~500-way softmax move by a few 1e-2.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_actor_parallel import (
    ADAMW,
    MINI_BATCHES,
    TOPK,
    _loss_config,
    _worst,
    reference_data,
    reference_update,
)

pytestmark = pytest.mark.gpu

SCORE_ATOL = 1e-4
PARAM_ATOL = 2e-5
BF16_MEAN_ATOL = 0.05


@pytest.fixture(scope="module")
def data(tiny_qwen3_dir):
    return reference_data(tiny_qwen3_dir)


@pytest.fixture
def single_rank(monkeypatch):
    from rlrt_megatron.megatron.launcher import free_port
    from rlrt_megatron.megatron.parallel import destroy_parallel

    for name, value in dict(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    ).items():
        monkeypatch.setenv(name, value)
    yield
    destroy_parallel()


def _actor(hf_path, dtype=torch.float32, recompute="none", attention="auto"):
    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig

    return PolicyActor(
        ActorConfig(
            hf_path=hf_path,
            optimizer=AdamWConfig(**ADAMW, clip_grad=1.0),
            dtype=dtype,
            max_tokens=48,
            recompute=recompute,
            attention=attention,
        )
    )


def _update(method):
    from rlrt_megatron.megatron.train_step import UpdateConfig

    return UpdateConfig(
        method=method, loss=_loss_config(), mini_batches=MINI_BATCHES, max_tokens=40, topk=TOPK
    )


def test_float32_scores_on_cuda_match_hf(single_rank, tiny_qwen3_dir, data):
    from rlrt_megatron.megatron.parallel import current_parallel_state

    actor = _actor(tiny_qwen3_dir)
    assert current_parallel_state().backend == "nccl"
    assert next(actor.model.chunks[0].parameters()).is_cuda
    prompts, responses, teachers = data["rollouts"]
    got = actor.score(prompts, responses, teacher_prompts=teachers, teacher_entropy=True)
    for i, r in enumerate(responses):
        n, y = len(r), torch.tensor(r)[:, None]
        s = data["student"][i]
        torch.testing.assert_close(
            got.student_log_prob[i, :n].cpu(), s.gather(1, y)[:, 0], atol=SCORE_ATOL, rtol=0
        )
        torch.testing.assert_close(
            got.student_entropy[i, :n].cpu(), -(s.exp() * s).sum(-1), atol=SCORE_ATOL, rtol=0
        )
        tlp = data["teacher"][i]
        if tlp is None:
            continue
        torch.testing.assert_close(
            got.teacher_log_prob[i, :n].cpu(), tlp.gather(1, y)[:, 0], atol=SCORE_ATOL, rtol=0
        )
        torch.testing.assert_close(
            got.kl[i, :n].cpu(), (s.exp() * (s - tlp)).sum(-1), atol=SCORE_ATOL, rtol=0
        )


@pytest.mark.parametrize("method", ["grpo", "rlrt", "sdpo"])
def test_float32_update_on_cuda_matches_hf_adamw(single_rank, tiny_qwen3_dir, data, method):
    from rlrt_megatron.megatron.train_step import TrainBatch

    actor = _actor(tiny_qwen3_dir)
    metrics = actor.train_step(TrainBatch(**data[method]), _update(method))
    ref_params, ref_losses, ref_norms = reference_update(
        tiny_qwen3_dir, data[method], method, MINI_BATCHES
    )
    assert len(metrics) == MINI_BATCHES
    for step, m in enumerate(metrics):
        assert m["skipped"] == 0.0
        assert math.isclose(m["loss"], ref_losses[step], rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(m["grad_norm"], ref_norms[step], rel_tol=1e-4)
    exported = dict(actor.export_hf_weights())
    assert all(t.is_cuda for t in exported.values())
    worst, diff = _worst({n: t.cpu() for n, t in exported.items()}, ref_params)
    assert diff <= PARAM_ATOL, f"{worst}: {diff:.3g}"


def test_bfloat16_scores_on_cuda_stay_close(single_rank, tiny_qwen3_dir, data):
    actor = _actor(tiny_qwen3_dir, dtype=torch.bfloat16)
    prompts, responses, _ = data["rollouts"]
    got = actor.score(prompts, responses)
    diffs = []
    for i, r in enumerate(responses):
        y = torch.tensor(r)[:, None]
        reference = data["student"][i].gather(1, y)[:, 0]
        diffs.append((got.student_log_prob[i, : len(r)].float().cpu() - reference).abs())
    diffs = torch.cat(diffs)
    assert torch.isfinite(diffs).all()
    assert diffs.mean().item() < BF16_MEAN_ATOL, f"mean |Δ| {diffs.mean().item():.3f}"


def test_recompute_and_attention_on_cuda_give_the_same_bf16_update(
    single_rank, tiny_qwen3_dir, data
):
    """bf16 RLRT update with SDPA (FlashAttention on CUDA) and with megatron's unfused attention,
    each with and without recomputation. Recomputation replays the same kernels, so it must
    agree with its own no-recompute run to the last bf16 place (atomics in the attention
    backward may flip one); the two attentions differ by bf16 rounding of different kernels,
    so they are compared on loss and gradient norm (the float32 test compares them exactly)."""
    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch

    results = {}
    for attention, mode in (
        ("sdpa", "none"),
        ("sdpa", "selective"),
        ("sdpa", "full"),
        ("local", "none"),
        ("local", "full"),
    ):
        actor = _actor(tiny_qwen3_dir, dtype=torch.bfloat16, recompute=mode, attention=attention)
        metrics = actor.train_step(TrainBatch(**data["rlrt"]), _update("rlrt"))
        params = {n: t.float().cpu() for n, t in actor.export_hf_weights()}
        results[attention, mode] = (metrics, params)
        del actor
        destroy_parallel(keep_process_group=True)
    for (attention, mode), (metrics, params) in results.items():
        reference = results[attention, "none"]
        # Parameters are stored in bf16: allow one unit in the last place (2^-7 relative).
        worst = max(
            ((params[n] - reference[1][n]).abs() - reference[1][n].abs() * 2**-7).max().item()
            for n in params
        )
        assert worst <= 1e-6, f"{attention}+{mode}: parameters differ by more than one bf16 ulp"
        assert metrics[0]["loss"] == pytest.approx(reference[0][0]["loss"], rel=1e-3, abs=1e-5)
    sdpa, local = results["sdpa", "none"][0][0], results["local", "none"][0][0]
    for key in ("loss", "grad_norm"):
        assert sdpa[key] == pytest.approx(local[key], rel=2e-2), key


def test_sdpa_and_local_attention_agree_in_float32_on_cuda(single_rank, tiny_qwen3_dir, data):
    from rlrt_megatron.megatron.parallel import destroy_parallel

    prompts, responses, _ = data["rollouts"]
    scores = {}
    for attention in ("sdpa", "local"):
        actor = _actor(tiny_qwen3_dir, attention=attention)
        scores[attention] = actor.score(prompts, responses).student_log_prob.cpu()
        del actor
        destroy_parallel(keep_process_group=True)
    torch.testing.assert_close(scores["sdpa"], scores["local"], atol=SCORE_ATOL, rtol=0)

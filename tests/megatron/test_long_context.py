"""Long context on the CPU path: a tiny Qwen3 scores a 16,384-token teacher view with its
student at CP=2 (two gloo processes, no Transformer Engine) and gets what one process gets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _dist import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TEACHER_TOKENS = 16_384
RESPONSE_TOKENS = 4_000
STUDENT_PROMPT = 96


def _pair():
    g = torch.Generator().manual_seed(2)

    def ids(n):
        return torch.randint(0, 500, (n,), generator=g).tolist()

    response = ids(RESPONSE_TOKENS)
    student = ids(STUDENT_PROMPT)
    teacher = ids(TEACHER_TOKENS - RESPONSE_TOKENS)  # a long privileged context
    return [student], [response], [teacher]


def _worker(rank: int, out_dir: str, hf_path: str, cp: int) -> None:
    from rlrt_megatron.megatron.parallel import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
    )
    from rlrt_megatron.megatron.scoring import score_rollouts
    from rlrt_megatron.models.qwen3_megatron import build_qwen3_model

    initialize_parallel(ParallelConfig(context_parallel=cp))
    model = build_qwen3_model(hf_path, dtype=torch.float32)
    for chunk in model.chunks:
        chunk.eval()
    prompts, responses, teachers = _pair()
    scores = score_rollouts(
        model, prompts, responses, teacher_prompts=teachers, max_tokens=32_768
    )
    if rank == 0:
        torch.save(dataclasses.asdict(scores), Path(out_dir) / f"cp{cp}.pt")
    destroy_parallel()


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from rlrt_megatron.models.tiny import build_tiny_qwen3

    return build_tiny_qwen3(
        tmp_path_factory.mktemp("long_qwen3"), max_position_embeddings=TEACHER_TOKENS + 64
    )


def test_cp2_scores_a_16k_teacher_view_like_one_process(tmp_path, long_model):
    for cp in (2, 1):
        run_distributed(_worker, cp, str(tmp_path), str(long_model), cp, timeout_s=900)
    one, two = (torch.load(tmp_path / f"cp{cp}.pt") for cp in (1, 2))
    assert two["response_mask"].sum() == RESPONSE_TOKENS
    for field in ("student_log_prob", "teacher_log_prob", "kl", "student_entropy"):
        assert torch.isfinite(two[field]).all()
        torch.testing.assert_close(two[field], one[field], atol=1e-5, rtol=0, msg=field)
    assert float(two["kl"].mean()) > 0  # the long context changed the teacher's predictions

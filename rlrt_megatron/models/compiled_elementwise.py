"""Fused element-wise parts of the local-spec layers (RMSNorm, SwiGLU) through ``torch.compile``.

Without Transformer Engine, megatron-core's local spec runs each layer's element-wise work as
separate eager ops: ``torch.nn.RMSNorm`` (forward fused on CPU since torch 2.9, but its backward
is autograd's decomposition: pow, mean, rsqrt, several muls) and SwiGLU (``chunk``, ``silu``, a
mul; its backward concatenates the two halves' gradients). Each op reads and writes the whole
[tokens, width] tensor, so on a CPU with a few GB/s of memory bandwidth these passes, not the
matmuls, decide much of an update's time (README, *Performance*).

`compile_elementwise(model)` swaps those modules, in place, for subclasses whose forward calls
a function compiled by Inductor (C++/OpenMP on CPU; Triton on GPU, a path not yet run by this
project), forward and backward each one fused kernel. Parameters, their names and attributes
(TP / sequence-parallel flags) stay as they are, so checkpoints, the bridge and the optimizer see
the same model. The math is the
eager modules' own, term for term; results differ by float32 rounding only (tests compare
values and gradients).

Cost: Inductor compiles each distinct graph (train / no-grad, 3-D / 4-D inputs) once per
process, several seconds each on first use, then from its on-disk cache; shapes are dynamic, so
new sequence lengths do not recompile. Hence ``ActorConfig.compile_elementwise`` is off by default
and worth it where a step moves tens of thousands of tokens through the layers.

Scope: ``torch.nn.RMSNorm`` (what megatron's ``WrappedTorchNorm`` builds for RMSNorm) and
megatron's ``MLP`` with a gated SiLU (SwiGLU), no clamp, no GLU offset, no bias fusion and no TE
activation; anything else is left eager. Transformer Engine layers fuse these themselves. The
attention layers' rotary embedding is fused too, by `rlrt_megatron.models.compiled_rope` (scope
there).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from rlrt_megatron.models.compile_cache import compiled as _compiled


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, as ATen's composite ``rms_norm``: x [..., h] -> [..., h].

    y = x / sqrt(mean(x², -1) + eps) · w, computed in float32 for reduced-precision inputs and
    returned in x's dtype.
    """
    upcast = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    out = upcast * torch.rsqrt(upcast.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out.type_as(x)


def swiglu_reference(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU of a fused [gate; up] projection: x [..., 2i] -> silu(x[..., :i]) · x[..., i:]."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


class CompiledRMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` whose forward is `rms_norm_reference` compiled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(self.normalized_shape) != (x.shape[-1],):
            return super().forward(x)  # only the last-dim norm is compiled
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _compiled(rms_norm_reference)(x, self.weight, eps)


@functools.cache
def _compiled_mlp_class(base: type) -> type:
    """A subclass of megatron's ``MLP`` (``base``) whose gated SiLU is `swiglu_reference`
    compiled; everything else is megatron's own forward."""

    class CompiledSwiGLUMLP(base):
        def forward(self, hidden_states, per_token_scale=None, **kwargs):
            if per_token_scale is not None:
                return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
            intermediate, bias = self.linear_fc1(hidden_states)
            if bias is not None:
                intermediate = intermediate + bias
            output, output_bias = self.linear_fc2(_compiled(swiglu_reference)(intermediate))
            return output, output_bias

    CompiledSwiGLUMLP.__qualname__ = CompiledSwiGLUMLP.__name__ = f"CompiledSwiGLU{base.__name__}"
    CompiledSwiGLUMLP.compiled_elementwise = True  # swapped already: not wrapped twice
    return CompiledSwiGLUMLP


def _is_plain_swiglu(mlp: Any) -> bool:
    config = mlp.config
    return (
        config.gated_linear_unit
        and config.activation_func is F.silu
        and not config.bias_activation_fusion
        and not getattr(config, "use_te_activation_func", False)
        and getattr(config, "activation_func_clamp_value", None) is None
        and not getattr(config, "glu_linear_offset", 0.0)
    )


def compile_elementwise(model: torch.nn.Module) -> dict[str, int]:
    """Swap, in place, every ``torch.nn.RMSNorm`` and every plain SwiGLU megatron ``MLP`` under
    ``model`` for its compiled subclass, and route every attention layer's RoPE through
    `rlrt_megatron.models.compiled_rope`. Returns how many of each were swapped / routed."""
    from megatron.core.transformer.attention import Attention
    from megatron.core.transformer.mlp import MLP

    from rlrt_megatron.models.compiled_rope import enable_compiled_rope

    swapped = {"rms_norm": 0, "swiglu_mlp": 0, "rope_attention": 0}
    for module in model.modules():
        if type(module) is torch.nn.RMSNorm:
            module.__class__ = CompiledRMSNorm  # adds no state: a forward override only
            swapped["rms_norm"] += 1
        elif (
            isinstance(module, MLP)
            and not getattr(module, "compiled_elementwise", False)
            and _is_plain_swiglu(module)
        ):
            module.__class__ = _compiled_mlp_class(type(module))
            swapped["swiglu_mlp"] += 1
        elif isinstance(module, Attention):
            enable_compiled_rope(module.config)  # its queries' and keys' RoPE: compiled_rope
            swapped["rope_attention"] += 1
    return swapped

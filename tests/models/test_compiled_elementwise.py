"""The compiled RMSNorm and SwiGLU compute the eager modules' numbers (float32 rounding apart),
forward and backward, at any token count (dynamic shapes); anything out of scope stays eager.
The whole-actor check (TP=2 scores and update, with and without recomputation) is in
tests/megatron/test_actor_variants.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlrt_megatron.models.compiled_elementwise import (
    CompiledRMSNorm,
    rms_norm_reference,
    swiglu_reference,
)

ATOL = 1e-6


def _grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad for t in inputs]


def test_compiled_rms_norm_matches_torch_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    eager = torch.nn.RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        eager.weight.copy_(torch.randn(32, generator=g))
    compiled = torch.nn.RMSNorm(32, eps=1e-6)
    compiled.load_state_dict(eager.state_dict())
    compiled.__class__ = CompiledRMSNorm
    for shape in ((7, 2, 32), (5, 3, 4, 32), (11, 1, 32)):  # [s,b,h], q/k [s,b,n,d], a new s
        x = 3 * torch.randn(shape, generator=g)
        want, (want_dx,) = _grads(eager, x)
        got, (got_dx,) = _grads(compiled, x)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(got_dx, want_dx, atol=ATOL, rtol=0)
    eager.weight.grad = compiled.weight.grad = None
    x = torch.randn(9, 2, 32, generator=g)
    eager(x).square().sum().backward()
    compiled(x).square().sum().backward()
    torch.testing.assert_close(compiled.weight.grad, eager.weight.grad, atol=1e-5, rtol=1e-6)


def test_rms_norm_without_eps_uses_the_dtype_epsilon_as_torch_does():
    x = 1e-4 * torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    module = torch.nn.RMSNorm(16, eps=None)
    want = module(x)
    module.__class__ = CompiledRMSNorm
    torch.testing.assert_close(module(x), want, atol=ATOL, rtol=1e-6)
    torch.testing.assert_close(
        rms_norm_reference(x, None, torch.finfo(x.dtype).eps),
        F.rms_norm(x, (16,)),
        atol=ATOL,
        rtol=0,
    )


def test_swiglu_is_megatrons_gated_silu():
    x = torch.randn(6, 2, 20, generator=torch.Generator().manual_seed(2))

    def megatron_glu(h):  # megatron.core.transformer.mlp.MLP.forward's glu, no clamp/offset
        gate, up = torch.chunk(h, 2, dim=-1)
        return F.silu(gate) * up

    want, (want_dx,) = _grads(megatron_glu, x)
    got, (got_dx,) = _grads(torch.compile(swiglu_reference, dynamic=True), x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_dx, want_dx, atol=ATOL, rtol=0)

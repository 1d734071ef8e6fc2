"""The compiled RoPE computes megatron-core's unfused RoPE (float32 rounding apart), forward and
backward, on BSHD and packed THD inputs, with and without context parallelism; configs it was not
enabled for, and what is out of its scope, still get megatron's own function. The whole-actor
check (TP=2, packed, with and without recomputation) is in tests/megatron/test_actor_variants.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from megatron.core.models.common.embeddings import rope_utils

from rlrt_megatron.models import compiled_rope
from rlrt_megatron.models.compiled_rope import (
    apply_rotary_pos_emb,
    compiled_rope_enabled,
    enable_compiled_rope,
    thd_positions,
)

ATOL = 1e-5  # values up to ~4 (t ~ N(0, 1) at |x| <= 4): a few float32 ulp


@dataclasses.dataclass
class _Config:  # the TransformerConfig fields megatron's and our RoPE read
    apply_rope_fusion: bool = False
    rotary_interleaved: bool = False
    multi_latent_attention: bool = False


@dataclasses.dataclass
class _Group:  # a context-parallel group as rope_utils uses it: size() and rank()
    cp_size: int
    cp_rank: int

    def size(self):
        return self.cp_size

    def rank(self):
        return self.cp_rank


def _freqs(max_s: int, d: int) -> torch.Tensor:
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    angles = torch.outer(torch.arange(max_s).float(), inv)
    return torch.cat((angles, angles), dim=-1)[:, None, None, :]  # [max_s, 1, 1, d]


def _grads(fn, t):
    t = t.detach().clone().requires_grad_()
    out = fn(t)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), t.grad


@pytest.fixture()
def enabled():
    config = _Config()
    enable_compiled_rope(config)
    return config


def test_thd_positions_follow_megatrons_cp_chunks():
    cu = torch.tensor([0, 4, 12, 20], dtype=torch.int32)
    assert thd_positions(cu, 1, 0).tolist() == [0, 1, 2, 3] + list(range(8)) * 2
    # C = 2: sequences of 4 and 8 tokens in 4 chunks; rank 0 holds chunks 0 and 3, rank 1 1 and 2
    assert thd_positions(cu, 2, 0).tolist() == [0, 3, 0, 1, 6, 7, 0, 1, 6, 7]
    assert thd_positions(cu, 2, 1).tolist() == [1, 2, 2, 3, 4, 5, 2, 3, 4, 5]


def test_bshd_matches_megatron_forward_and_backward(enabled):
    freqs = _freqs(9, 16)
    t = torch.randn(9, 2, 4, 16, generator=torch.Generator().manual_seed(0))
    for mscale in (1.0, 1.3):
        want, want_dt = _grads(
            lambda x, m=mscale: rope_utils._apply_rotary_pos_emb_bshd(x, freqs, mscale=m), t
        )
        got, got_dt = _grads(
            lambda x, m=mscale: apply_rotary_pos_emb(x, freqs, enabled, mscale=m), t
        )
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(got_dt, want_dt, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cp_size", [1, 2])
def test_thd_matches_megatron_on_every_cp_rank(enabled, cp_size):
    lengths = [4, 12, 8, 24]  # multiples of 2·C
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    freqs = _freqs(max(lengths), 32)
    g = torch.Generator().manual_seed(1)
    for rank in range(cp_size):
        group = _Group(cp_size, rank)
        for heads in (4, 2):  # queries and grouped keys
            t = torch.randn(sum(lengths) // cp_size, heads, 32, generator=g)
            want, want_dt = _grads(
                lambda x, grp=group: rope_utils._apply_rotary_pos_emb_thd(
                    x, cu, freqs, cp_group=grp
                ),
                t,
            )
            got, got_dt = _grads(
                lambda x, grp=group: apply_rotary_pos_emb(
                    x, freqs, enabled, cu_seqlens=cu, cp_group=grp
                ),
                t,
            )
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
            torch.testing.assert_close(got_dt, want_dt, atol=ATOL, rtol=0)


def test_other_configs_and_out_of_scope_inputs_get_megatrons_function(enabled, monkeypatch):
    calls = []

    def megatron(*args, **kwargs):
        calls.append(kwargs["config"])
        return "megatron"

    monkeypatch.setattr(compiled_rope, "_megatron_apply_rotary_pos_emb", megatron)
    t = torch.randn(6, 1, 2, 16)
    group = _Group(1, 0)
    not_enabled = _Config()
    interleaved = _Config(rotary_interleaved=True)
    enable_compiled_rope(interleaved)
    assert apply_rotary_pos_emb(t, _freqs(6, 16), not_enabled, cp_group=group) == "megatron"
    assert apply_rotary_pos_emb(t, _freqs(6, 16), interleaved, cp_group=group) == "megatron"
    assert apply_rotary_pos_emb(t, _freqs(6, 8), enabled, cp_group=group) == "megatron"  # partial
    # A THD table as long as the packed row (megatron's offset mapping) with two sequences:
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    assert apply_rotary_pos_emb(t[:, 0], _freqs(6, 16), enabled, cu, cp_group=group) == "megatron"
    assert calls == [not_enabled, interleaved, enabled, enabled]
    assert torch.is_tensor(apply_rotary_pos_emb(t, _freqs(6, 16), enabled, cp_group=group))


def test_enabling_rebinds_the_name_megatrons_attention_calls(enabled):
    from megatron.core.transformer import attention

    assert attention.apply_rotary_pos_emb is apply_rotary_pos_emb
    assert compiled_rope_enabled(enabled) and not compiled_rope_enabled(_Config())
    enable_compiled_rope(_Config())  # a second model: still one wrapper around megatron's
    assert compiled_rope._megatron_apply_rotary_pos_emb is rope_utils.apply_rotary_pos_emb

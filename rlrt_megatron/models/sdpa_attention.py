"""Core attention through ``torch.nn.functional.scaled_dot_product_attention`` for the local spec.

Without Transformer Engine, megatron-core's local spec computes attention as its
``DotProductAttention`` does: a ``baddbmm`` into a [b·n, s, s] score tensor, a masked softmax and a
second ``bmm``. That materialises every head's full score matrix (and keeps it for the backward),
which at s = 2048 costs gigabytes per layer and leaves the GPU mostly waiting on memory. PyTorch's
SDPA picks a fused kernel instead (FlashAttention / memory-efficient on CUDA, a fused or math
kernel on CPU) that never stores the score matrix. `SDPADotProductAttention` is a drop-in
``core_attention`` module: same constructor and forward signatures, same [s, b, n·d] output.

    local = get_gpt_decoder_block_spec(config, use_transformer_engine=False)
    spec = with_sdpa_core_attention(local)

Packed sequences (THD, ``packed_seq_params.qkv_format == "thd"``) and context parallelism work
without Transformer Engine: attention stays inside each packed sequence
(:func:`~rlrt_megatron.models.packed_attention.packed_causal_attention`); with CP > 1 each rank
all-gathers K/V of the micro-batch over the CP group (a reduce-scatter in the backward) and its
two load-balanced chunks per sequence attend to them
(:func:`~rlrt_megatron.models.packed_attention.context_parallel_causal_attention`). The gathered
K/V of a layer cost CP× the local K/V (kept for the backward); queries, MLPs and every other
activation stay split.

Scope (checked at construction or call, with an error naming what is unsupported): causal
self-attention with no explicit mask (right padding relies on the causal mask), no attention
bias, vanilla softmax, no sliding window; CP only with packed sequences. Grouped-query attention
uses SDPA's ``enable_gqa`` instead of repeating K/V. Attention dropout is applied by SDPA under
megatron's model-parallel RNG (Qwen3 uses none).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


class SDPADotProductAttention(MegatronModule):
    """``core_attention`` for the local spec: q [sq, b, np, hn], k/v [sk, b, ng, hn] -> [sq, b, hp]
    (np / ng: this TP rank's query heads / KV groups; hp = np·hn)."""

    def __init__(
        self,
        config: Any,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        from megatron.core.process_groups_config import ProcessGroupCollection
        from megatron.core.utils import divide

        unsupported = []
        if attn_mask_type != AttnMaskType.causal:
            unsupported.append(f"mask type {attn_mask_type.name} (only causal)")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            unsupported.append(f"softmax_type {config.softmax_type!r}")
        if getattr(config, "window_size", None) is not None:
            unsupported.append("sliding-window attention")
        if config.apply_query_key_layer_scaling:
            unsupported.append("apply_query_key_layer_scaling")
        if unsupported:
            raise ValueError(
                "SDPA core attention does not support "
                + ", ".join(unsupported)
                + "; use the Transformer Engine spec or attention='local'"
            )
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(
                required_pgs=["tp", "cp"]
            )
        tp = pg_collection.tp.size()
        self.cp_group = getattr(pg_collection, "cp", None)
        self.cp_size = config.context_parallel_size
        self.heads_per_partition = divide(config.num_attention_heads, tp)
        self.groups_per_partition = divide(config.num_query_groups, tp)
        self.head_dim = config.kv_channels
        self.softmax_scale = (
            1.0 / math.sqrt(self.head_dim) if softmax_scale is None else softmax_scale
        )
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if attention_mask is not None or attention_bias is not None:
            raise ValueError(
                "SDPA core attention takes the causal mask only: no attention_mask or attention"
                " bias (use the Transformer Engine spec for those)"
            )
        if packed_seq_params is not None:
            return self._forward_packed(query, key, value, packed_seq_params)
        if self.cp_size > 1:
            raise ValueError("context parallelism without Transformer Engine needs packing")
        sq, b = query.shape[0], query.shape[1]
        if key.shape[0] != sq:  # SDPA's is_causal aligns top-left: right only for sq == sk
            raise ValueError(f"SDPA core attention needs sq == sk, got {sq} and {key.shape[0]}")
        # [s, b, n, d] -> [b, n, s, d]: SDPA's layout.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout = self.dropout if self.training else 0.0
        if dropout > 0:
            from megatron.core import tensor_parallel

            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = self._attend(q, k, v, dropout)
        else:
            context = self._attend(q, k, v, 0.0)
        # [b, n, s, d] -> [s, b, n·d]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.heads_per_partition * self.head_dim)

    def _forward_packed(self, query, key, value, packed_seq_params: Any) -> torch.Tensor:
        """THD: q [t, np, hn], k/v [t, ng, hn] (t: this CP rank's tokens) -> [t, np·hn]."""
        from rlrt_megatron.models.cp_comm import all_gather_rows
        from rlrt_megatron.models.packed_attention import (
            context_parallel_causal_attention,
            cp_local_positions,
            packed_causal_attention,
        )

        if packed_seq_params.qkv_format != "thd":
            raise ValueError(f"packed sequences must be THD, not {packed_seq_params.qkv_format!r}")
        cu = packed_seq_params.cu_seqlens_q_padded
        if cu is None:
            cu = packed_seq_params.cu_seqlens_q
        cu = cu.tolist()
        dropout = self.dropout if self.training else 0.0
        if self.cp_size == 1:
            context = self._in_rng(
                dropout,
                lambda: packed_causal_attention(
                    query, key, value, cu, scale=self.softmax_scale, dropout=dropout
                ),
            )
        else:
            cp_rank = self.cp_group.rank()
            groups = key.shape[1]
            kv = all_gather_rows(torch.cat([key, value], dim=1), self.cp_group)
            # Rank-major rows -> the global packed order the chunks index into.
            rank_major = torch.cat(
                [cp_local_positions(cu, self.cp_size, r) for r in range(self.cp_size)]
            )
            order = torch.empty_like(rank_major)
            order[rank_major] = torch.arange(rank_major.numel())
            kv = kv.index_select(0, order.to(kv.device))
            context = self._in_rng(
                dropout,
                lambda: context_parallel_causal_attention(
                    query,
                    kv[:, :groups],
                    kv[:, groups:],
                    cu,
                    cp_size=self.cp_size,
                    cp_rank=cp_rank,
                    scale=self.softmax_scale,
                    dropout=dropout,
                ),
            )
        return context.reshape(context.shape[0], self.heads_per_partition * self.head_dim)

    def _in_rng(self, dropout: float, attend):
        if dropout > 0:
            from megatron.core import tensor_parallel

            with tensor_parallel.get_cuda_rng_tracker().fork():
                return attend()
        return attend()

    def _attend(self, q, k, v, dropout: float) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=dropout,
            is_causal=True,
            scale=self.softmax_scale,
            enable_gqa=self.heads_per_partition != self.groups_per_partition,
        )


def with_sdpa_core_attention(block_spec: Any) -> Any:
    """A copy of a decoder block (or layer) spec whose local ``DotProductAttention`` modules are
    `SDPADotProductAttention`. Layers with another core attention (e.g. Transformer Engine's)
    are left alone."""
    import copy

    from megatron.core.transformer.dot_product_attention import DotProductAttention

    block_spec = copy.deepcopy(block_spec)  # spec objects may be shared with other builds
    layers = getattr(block_spec, "layer_specs", None) or [block_spec]
    for layer in layers:
        attention = layer.submodules.self_attention.submodules
        if attention.core_attention is DotProductAttention:
            attention.core_attention = SDPADotProductAttention
    return block_spec

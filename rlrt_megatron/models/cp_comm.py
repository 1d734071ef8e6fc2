"""Differentiable collectives over the context-parallel (CP) group, for any backend (gloo, nccl).

Two gathers along dim 0, with different backward contracts:

* :func:`all_gather_rows` — every rank contributes equally many rows (its K/V of the packed
  micro-batch) and every rank's *own* downstream computation uses the gathered tensor
  differently (its own queries). The gradient of a rank's rows is therefore the **sum** over
  ranks of the gathered tensor's gradient at those rows: a reduce-scatter (NCCL), or an
  all-reduce then a slice where the backend has no reduce-scatter (gloo).
* :func:`gather_replicated_rows` — ranks contribute different numbers of rows (the response
  logits they own) and every rank then computes **the same** function of the gathered tensor
  (the same loss). Each rank's gradient of its rows is then its slice of the output gradient:
  no communication in the backward. Megatron's schedule multiplies a CP rank's loss by the CP
  size and DDP averages gradients over DP × CP, so the parameter gradient comes out exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def _backend(group) -> str:
    return dist.get_backend(group)


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        size = dist.get_world_size(group)
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(parts, local, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        grad = grad.contiguous()
        rows = grad.shape[0] // size
        if _backend(group) == "nccl":
            out = torch.empty((rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        total = grad.clone()
        dist.all_reduce(total, group=group)
        return total[rank * rows : (rank + 1) * rows].contiguous(), None


def all_gather_rows(local: torch.Tensor, group) -> torch.Tensor:
    """[n, ...] on every rank -> [size·n, ...], rank-major; backward: reduce-scatter (sum)."""
    if group is None or dist.get_world_size(group) == 1:
        return local
    return _AllGatherRows.apply(local, group)


class _GatherReplicatedRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: Sequence[int], group) -> torch.Tensor:
        rank = dist.get_rank(group)
        if local.shape[0] != counts[rank]:
            raise ValueError(f"rank {rank} has {local.shape[0]} rows, counts say {counts[rank]}")
        width = max(counts)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.start = sum(counts[:rank])
        ctx.rows = counts[rank]
        return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.start : ctx.start + ctx.rows].contiguous(), None, None


def gather_replicated_rows(local: torch.Tensor, counts: Sequence[int], group) -> torch.Tensor:
    """Concatenate every rank's rows ([counts[r], ...] on rank r) in rank order.

    Contract: every rank computes the same function of the result (see the module docstring);
    the backward returns this rank's slice of the output gradient without communicating.
    """
    if group is None or dist.get_world_size(group) == 1:
        return local
    return _GatherReplicatedRows.apply(local, list(counts), group)

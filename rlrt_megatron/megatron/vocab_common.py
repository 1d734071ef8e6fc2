"""Plumbing shared by the vocab-parallel functions: shard geometry, chunking, collectives.

A tensor-parallel (TP) rank holds logits for a contiguous slice of the *padded* vocabulary:
global ids ``[vocab_start, vocab_start + V_local)``. Megatron pads the real vocabulary (size
``vocab_size``) at the end, so on every rank the real columns are a prefix of the local slice:
``n_valid = clamp(vocab_size - vocab_start, 0, V_local)`` columns. Every function here reads only
``logits[:, :n_valid]``: padded columns take no part in any max, sum or top-k (they carry
probability exactly 0), and their gradient is exactly 0.

Nothing here imports megatron: the TP process group is an argument (``None``: one process).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Defined with the checkpoint's layout checks (models/ sits below megatron/); importable here too.
from rlrt_megatron.models.qwen3_checkpoint import pad_vocab_size  # noqa: F401

# Target size of a chunk's fp32 working set (all [chunk, V_local] fp32 buffers of one function
# together). 256 MiB keeps the transient memory of a full Qwen3 vocabulary (151,936 columns at TP=1)
# around 2-5% of the bf16 logits of an 8k-token micro-batch, and chunks large enough
# (>= ~100 tokens) that the per-chunk collectives stay cheap.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def tp_size(group: dist.ProcessGroup | None) -> int:
    """World size of the TP group; 1 for ``None`` (single process)."""
    return 1 if group is None else dist.get_world_size(group)


def tp_rank(group: dist.ProcessGroup | None) -> int:
    """Rank inside the TP group; 0 for ``None``."""
    return 0 if group is None else dist.get_rank(group)


@dataclass(frozen=True)
class Shard:
    """Where this rank's [N, V_local] logits sit in the global vocabulary.

    Attributes:
        group: the TP process group (``None``: single process, no collectives).
        vocab_start: global id of local column 0.
        v_local: number of local columns (padded).
        n_valid: number of local columns that are real tokens (a prefix of the slice).
        vocab_size: real (unpadded) global vocabulary size.
        world: TP world size.
    """

    group: dist.ProcessGroup | None
    vocab_start: int
    v_local: int
    n_valid: int
    vocab_size: int
    world: int

    @staticmethod
    def make(
        v_local: int, group: dist.ProcessGroup | None, vocab_start: int, vocab_size: int | None
    ) -> Shard:
        world = tp_size(group)
        if vocab_start < 0:
            raise ValueError(f"vocab_start must be >= 0, got {vocab_start}")
        if vocab_size is None:
            # No padding declared: every column of every rank is a real token.
            vocab_size = v_local * world
            n_valid = v_local
        else:
            n_valid = max(0, min(v_local, vocab_size - vocab_start))
        return Shard(group, vocab_start, v_local, n_valid, vocab_size, world)

    def all_reduce(self, t: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
        """In-place all-reduce over the TP group (no-op for a single process)."""
        if self.world > 1:
            dist.all_reduce(t, op=op, group=self.group)
        return t

    def all_gather_cat(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """All-gather ``t`` from every TP rank and concatenate along ``dim`` (rank order)."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def local_index(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ids -> (local column clamped into range, mask of ids held by this rank)."""
        loc = ids - self.vocab_start
        inside = (loc >= 0) & (loc < self.n_valid)
        return loc.clamp(0, max(self.n_valid - 1, 0)), inside


def chunk_rows(chunk_size: int | None, n_valid: int, n_buffers: int) -> int:
    """Tokens per chunk: ``chunk_size`` if given, else what keeps ``n_buffers`` fp32
    [chunk, n_valid] buffers within ``DEFAULT_CHUNK_BYTES``."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    per_token = max(1, n_buffers * max(n_valid, 1) * 4)
    return max(1, DEFAULT_CHUNK_BYTES // per_token)


def chunks(n: int, rows: int) -> Iterator[tuple[int, int]]:
    """[start, end) row ranges of at most ``rows`` rows covering ``range(n)``."""
    for s in range(0, n, rows):
        yield s, min(s + rows, n)


class Workspace:
    """``n`` fp32 [rows, n_valid] scratch buffers, allocated once per call and reused by every
    chunk. Fresh chunk-sized allocations would be mmapped by malloc and page-faulted anew for each
    chunk (measured ~3x slower on CPU); the peak memory is the same."""

    def __init__(self, n: int, rows: int, n_valid: int, device: torch.device) -> None:
        self.buf = torch.empty((n, rows, n_valid), dtype=torch.float32, device=device)

    def __getitem__(self, i_c: tuple[int, int]) -> torch.Tensor:
        """Buffer ``i`` cut to the first ``c`` rows (contiguous)."""
        i, c = i_c
        return self.buf[i, :c]


def workspace(n: int, rows: int, n_tokens: int, n_valid: int, device: torch.device) -> Workspace:
    """A :class:`Workspace` of ``n`` buffers for chunks of ``min(rows, n_tokens)`` rows."""
    return Workspace(n, max(1, min(rows, n_tokens)), n_valid, device)


def upcast(
    logits: torch.Tensor, s: int, e: int, n_valid: int, temperature: float, out: torch.Tensor
) -> torch.Tensor:
    """``out`` [e − s, n_valid] fp32 <- ``logits[s:e, :n_valid] / temperature``.

    Always a copy into scratch, so callers may work on it in place without ever touching the
    caller's logits.
    """
    out.copy_(logits[s:e, :n_valid])
    if temperature != 1.0:
        out.div_(temperature)
    return out


def row_max(z: torch.Tensor) -> torch.Tensor:
    """Max over the last dim; -inf for a rank with no real columns."""
    if z.shape[-1] == 0:
        return torch.full(z.shape[:-1], -math.inf, dtype=z.dtype, device=z.device)
    return z.amax(dim=-1)


def row_min(z: torch.Tensor) -> torch.Tensor:
    """Min over the last dim; +inf for a rank with no real columns."""
    if z.shape[-1] == 0:
        return torch.full(z.shape[:-1], torch.inf, dtype=z.dtype, device=z.device)
    return z.amin(dim=-1)


def finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """Replace ±inf shifts by 0 (a max over an empty set), so ``exp(z - shift)`` stays defined."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def flatten_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """[..., V_local] -> ([N, V_local], leading shape). A view for contiguous input."""
    if logits.dim() < 1:
        raise ValueError("logits must have a vocabulary dimension")
    lead = logits.shape[:-1]
    return logits.reshape(-1, logits.shape[-1]), lead

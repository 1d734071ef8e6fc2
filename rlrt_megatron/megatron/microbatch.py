"""The model inputs of one micro-batch of the actor's forward passes (pure Python/torch).

RL batches mix short and long sequences (and the teacher view of a rollout is longer than its
student view by the whole context). Cutting a batch into micro-batches of a fixed *number of
sequences* wastes most of each padded micro-batch on pad tokens; cutting by a *token budget*
after sorting by length keeps every micro-batch about equally expensive and nearly pad-free:
:func:`rlrt_megatron.megatron.forward.plan_microbatches` does that cutting (rollouts with their
teacher views); this module lays the chosen sequences out.

Responses are aligned at the tail of their sequences (prompt ⊕ response): the logit at position
p predicts token p + 1, so a sequence with prompt length P scores its response at logit positions
[P − 1, P − 1 + T) of the sequence.

Two layouts of a micro-batch: :class:`PaddedBatch` (rows right-padded to the longest, [B, S])
and :class:`PackedBatch` (sequences back to back in one row, [1, N], with ``cu_seqlens``
boundaries: the THD layout of Transformer Engine / flash-attention varlen). Packing spends
compute on real tokens only; every packed sequence is padded to a small multiple (2·CP under
context parallelism) and that padding sits after the sequence's last token, where causal
attention hides it from every real token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class _Sizes:
    """What both layouts answer alike (``input_ids`` and ``response_len`` fields)."""

    input_ids: torch.Tensor
    response_len: torch.Tensor

    @property
    def max_response_len(self) -> int:
        return int(self.response_len.max().item()) if self.response_len.numel() else 0

    @property
    def num_tokens(self) -> int:
        """Tokens the model processes (padding included)."""
        return self.input_ids.numel()


@dataclass
class PaddedBatch(_Sizes):
    """Right-padded sequences of one micro-batch.

    ``input_ids``/``position_ids`` [B, S]; ``response_start`` [B] (logit position of the first
    response token, P − 1); ``response_len`` [B].
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    response_start: torch.Tensor
    response_len: torch.Tensor



    def response_positions(self) -> torch.Tensor:
        """Flat [B·S] positions of every sequence's response logits, sequence by sequence."""
        width = self.input_ids.shape[1]
        return _response_positions(
            [i * width for i in range(self.input_ids.shape[0])],
            self.response_start,
            self.response_len,
        )


def _response_positions(
    offsets: Sequence[int], response_start: torch.Tensor, response_len: torch.Tensor
) -> torch.Tensor:
    parts = [
        offset + int(start) + torch.arange(int(n))
        for offset, start, n in zip(offsets, response_start, response_len, strict=True)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


@dataclass
class PackedBatch(_Sizes):
    """Sequences of one micro-batch packed back to back into one row (THD layout).

    ``input_ids`` / ``position_ids`` [1, N] (positions restart at 0 in every sequence: RoPE
    sees each sequence as if alone); ``cu_seqlens`` [n + 1] int32, the boundaries of the
    *padded* sequences (each a multiple of ``pad_to_multiple_of``); ``seq_len`` [n] their real
    lengths; ``response_start`` [n] (logit position of the first response token within its
    sequence, P − 1); ``response_len`` [n].
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    seq_len: torch.Tensor
    response_start: torch.Tensor
    response_len: torch.Tensor


    @property
    def max_seqlen(self) -> int:
        """The longest padded sequence."""
        return int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max().item())


    def response_positions(self) -> torch.Tensor:
        """Positions in the packed row of every sequence's response logits, in sequence order."""
        return _response_positions(
            self.cu_seqlens[:-1].tolist(), self.response_start, self.response_len
        )


def packed_length(n: int, multiple: int) -> int:
    """A sequence of ``n`` tokens padded to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    *,
    pad_to_multiple_of: int = 1,
    total_multiple_of: int | None = None,
) -> PackedBatch:
    """Concatenate prompt ⊕ response per sequence and pack the sequences into one row.

    Each sequence is padded to a multiple of ``pad_to_multiple_of`` (2·CP under context
    parallelism); the last one further so that the row is a multiple of
    ``total_multiple_of`` (sequence parallelism splits the row over TP ranks; default
    ``pad_to_multiple_of``).
    """
    if total_multiple_of is None:
        total_multiple_of = pad_to_multiple_of
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("no sequences to pack")
    if total_multiple_of % pad_to_multiple_of:
        raise ValueError(
            f"total_multiple_of {total_multiple_of} must be a multiple of pad_to_multiple_of "
            f"{pad_to_multiple_of}"
        )
    seqs = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) < 1:
            raise ValueError(f"row {i}: empty prompt (the first response token needs context)")
        if len(r) < 1:
            raise ValueError(f"row {i}: empty response")
        seqs.append(list(p) + list(r))
    lengths = [packed_length(len(x), pad_to_multiple_of) for x in seqs]
    lengths[-1] += packed_length(sum(lengths), total_multiple_of) - sum(lengths)
    total = sum(lengths)
    input_ids = torch.full((1, total), pad_id, dtype=torch.long)
    positions = torch.empty((1, total), dtype=torch.long)
    cu = [0]
    for seq, length in zip(seqs, lengths, strict=True):
        start = cu[-1]
        input_ids[0, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        positions[0, start : start + length] = torch.arange(length)
        cu.append(start + length)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=positions,
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        seq_len=torch.tensor([len(x) for x in seqs], dtype=torch.long),
        response_start=torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long),
        response_len=torch.tensor([len(r) for r in responses], dtype=torch.long),
    )


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    *,
    pad_to_multiple_of: int = 1,
) -> PaddedBatch:
    """Concatenate prompt ⊕ response per row and right-pad to a common length."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) < 1:
            raise ValueError(f"row {i}: empty prompt (the first response token needs context)")
        if len(r) < 1:
            raise ValueError(f"row {i}: empty response")
        rows.append(list(p) + list(r))
    width = max(len(r) for r in rows)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    positions = torch.arange(width, dtype=torch.long).expand(len(rows), width).contiguous()
    return PaddedBatch(
        input_ids=input_ids,
        position_ids=positions,
        response_start=torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long),
        response_len=torch.tensor([len(r) for r in responses], dtype=torch.long),
    )

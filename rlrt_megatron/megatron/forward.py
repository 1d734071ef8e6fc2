"""Shared plumbing of the actor's passes: DP shares, paired micro-batches, megatron's schedule.

A *rollout* is (prompt ids, response ids) for the student view and optionally (teacher prompt
ids, the same response ids) for the teacher view; both sequences are prompt ⊕ response, so the
response sits at the tail of each and the two views are aligned token by token.

Both views of a rollout always go into the **same micro-batch** (students first, then the
teachers of those rollouts): the last pipeline stage then holds the logits of both views at the
same time and can compute pair statistics (KL, top-k at the student's ids) from this one
micro-batch's response logits, never from [T, V] logits kept across micro-batches.

Micro-batches are cut by a token budget on their padded size ((number of sequences) × (longest
sequence)), longest rollouts first, so they cost about the same and hold little padding. They
run through megatron's ``get_forward_backward_func()`` (no pipelining, or 1F1B when PP > 1).
Micro-batches differ in shape; with PP > 1 the model config's ``variable_seq_lengths`` is turned
on so the stages exchange each activation's shape before the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlrt_megatron.megatron.microbatch import PaddedBatch, pad_sequences

Ids = Sequence[int]
# Token id used for right padding: padded positions come after every real token, so causal
# attention never lets a real token see them, and they are never scored.
PAD_ID = 0


def device() -> torch.device:
    """Where model inputs go: the current CUDA device, or the CPU without CUDA."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_rollouts(
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    teacher_prompts: Sequence[Ids | None] | None,
    vocab_size: int | None = None,
) -> None:
    """Raise a ValueError naming the first malformed rollout (before any rank starts a
    collective: a bad token id would otherwise fail on the first pipeline stage only)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("no rollouts")
    if teacher_prompts is not None and len(teacher_prompts) != len(prompts):
        raise ValueError(f"{len(teacher_prompts)} teacher prompts for {len(prompts)} rollouts")
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        teacher = None if teacher_prompts is None else teacher_prompts[i]
        parts = {"prompt": p, "response": r}
        if teacher is not None:
            parts["teacher prompt"] = teacher
        for what, ids in parts.items():
            if len(ids) < 1:
                raise ValueError(f"rollout {i}: empty {what}")
            if vocab_size is not None and not (0 <= min(ids) and max(ids) < vocab_size):
                raise ValueError(f"rollout {i}: {what} has token ids outside [0, {vocab_size})")


def rollout_costs(
    prompts: Sequence[Ids], responses: Sequence[Ids], teacher_prompts: Sequence[Ids | None] | None
) -> list[int]:
    """Tokens each rollout puts through the model: its student sequence plus its teacher's."""
    costs = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        teacher = None if teacher_prompts is None else teacher_prompts[i]
        costs.append(len(p) + len(r) + (0 if teacher is None else len(teacher) + len(r)))
    return costs


def dp_share(lengths: Sequence[int], dp_size: int, dp_rank: int) -> list[int]:
    """The indices this DP rank processes: longest first, each to the least-loaded rank (ties:
    the lowest rank), so every rank does about the same number of tokens. Deterministic, so all
    ranks agree on the split without communicating. Returned in ascending index order."""
    load = [0] * dp_size
    owned: list[list[int]] = [[] for _ in range(dp_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        rank = min(range(dp_size), key=lambda r: (load[r], r))
        load[rank] += lengths[i]
        owned[rank].append(i)
    return sorted(owned[dp_rank])


@dataclass
class MicroBatch:
    """One micro-batch: student sequences of ``rows`` (rows 0..b−1 of ``inputs``), then the
    teacher sequences of ``rows[j]`` for j in ``paired`` (rows b, b+1, ... of ``inputs``).

    ``rows`` are indices into the caller's rollout list.
    """

    rows: list[int]
    paired: list[int]
    inputs: PaddedBatch

    @property
    def num_students(self) -> int:
        return len(self.rows)

    def response_index(self, sequences: Sequence[int]) -> torch.Tensor:
        """Flat indices into the [b·S] positions of ``inputs`` of the response logits of the
        given sequence rows, concatenated in that order ([n_tokens] int64)."""
        width = self.inputs.input_ids.shape[1]
        parts = [
            seq * width
            + int(self.inputs.response_start[seq])
            + torch.arange(int(self.inputs.response_len[seq]))
            for seq in sequences
        ]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def student_index(self, positions: Sequence[int] | None = None) -> torch.Tensor:
        """Response positions of the students at ``positions`` in ``rows`` (default: all)."""
        return self.response_index(range(len(self.rows)) if positions is None else positions)

    def teacher_index(self) -> torch.Tensor:
        """Response positions of the teacher sequences, in ``paired`` order."""
        return self.response_index(range(len(self.rows), len(self.rows) + len(self.paired)))


def plan_microbatches(
    rows: Sequence[int],
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    teacher_prompts: Sequence[Ids | None] | None,
    *,
    max_tokens: int,
    pad_to_multiple_of: int = 1,
) -> list[MicroBatch]:
    """Pack ``rows`` (with their teacher sequences where ``teacher_prompts[row]`` is given) into
    micro-batches of at most ``max_tokens`` padded tokens, longest first."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")

    def teacher(r: int) -> Ids | None:
        return None if teacher_prompts is None else teacher_prompts[r]

    def width(r: int) -> int:
        t = teacher(r)
        n = max(len(prompts[r]), len(t) if t is not None else 0) + len(responses[r])
        return -(-n // pad_to_multiple_of) * pad_to_multiple_of

    def count(r: int) -> int:
        return 1 if teacher(r) is None else 2

    for r in rows:
        if count(r) * width(r) > max_tokens:
            raise ValueError(
                f"rollout {r} needs {count(r)} sequence(s) of {width(r)} tokens, more than the "
                f"micro-batch token budget {max_tokens}: raise the budget"
            )
    groups: list[list[int]] = []
    current: list[int] = []
    for r in sorted(rows, key=lambda r: (-width(r), r)):
        if current:
            seqs = sum(count(x) for x in current) + count(r)
            if seqs * width(current[0]) > max_tokens:  # the first member is the widest
                groups.append(current)
                current = []
        current.append(r)
    if current:
        groups.append(current)

    batches = []
    for group in groups:
        paired = [j for j, r in enumerate(group) if teacher(group[j]) is not None]
        seq_prompts = [prompts[r] for r in group] + [teacher(group[j]) for j in paired]
        seq_responses = [responses[r] for r in group] + [responses[group[j]] for j in paired]
        inputs = pad_sequences(
            seq_prompts, seq_responses, PAD_ID, pad_to_multiple_of=pad_to_multiple_of
        )
        batches.append(MicroBatch(rows=group, paired=paired, inputs=inputs))
    return batches


def vocab_kwargs(model: Any, logits: torch.Tensor, temperature: float) -> dict[str, Any]:
    """Keyword arguments of the vocab-parallel functions for this rank's logits [..., V_local]."""
    from megatron.core import parallel_state as mpu

    tp = mpu.get_tensor_model_parallel_world_size()
    return dict(
        group=mpu.get_tensor_model_parallel_group() if tp > 1 else None,
        vocab_start=mpu.get_tensor_model_parallel_rank() * logits.shape[-1],
        vocab_size=model.vocab_size,
        temperature=temperature,
    )


# on_logits(micro_batch, logits [b, S, V_local]) -> (loss to backpropagate, unused dict)
LogitsFn = Callable[[MicroBatch, torch.Tensor], tuple[torch.Tensor, dict]]


def run_schedule(
    model: Any, microbatches: list[MicroBatch], on_logits: LogitsFn, *, forward_only: bool
) -> None:
    """Run ``microbatches`` through megatron's forward(-backward) schedule.

    ``on_logits`` runs on the last pipeline stage for each micro-batch (in order) with the
    micro-batch's logits [b, S, V_local]; with ``forward_only=False`` its returned loss is
    backpropagated after megatron divides it by the number of micro-batches (callers undo that).
    Every rank of a model-parallel group must pass the same micro-batches.
    """
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not microbatches:
        raise ValueError("no micro-batches to run")
    if mpu.get_pipeline_model_parallel_world_size() > 1:
        # Micro-batches have different [S, b] shapes: stages send each shape before the tensor.
        model.config.variable_seq_lengths = True
    dev = device()

    def forward_step(data_iterator, chunk):
        mb = next(data_iterator)
        ids = mb.inputs.input_ids.to(dev)
        positions = mb.inputs.position_ids.to(dev)
        output = chunk(ids, positions, None)  # right padding + causal mask: no attention mask

        def loss_func(logits):
            return on_logits(mb, logits)

        return output, loss_func

    def run():
        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(microbatches),
            model=model.chunks,
            num_microbatches=len(microbatches),
            seq_length=max(mb.inputs.input_ids.shape[1] for mb in microbatches),
            micro_batch_size=max(mb.inputs.input_ids.shape[0] for mb in microbatches),
            forward_only=forward_only,
        )

    if forward_only:
        with torch.no_grad():
            run()
    else:
        run()


def result_owner() -> bool:
    """Whether this rank publishes its DP share's results: the last PP stage's TP rank 0 (all
    TP ranks of the last stage hold the same, TP-reduced values)."""
    from megatron.core import parallel_state as mpu

    return mpu.is_pipeline_last_stage() and mpu.get_tensor_model_parallel_rank() == 0


def publish(tensors: dict[str, torch.Tensor], owner: bool) -> None:
    """Make every rank hold every DP share's results, in place: owners keep their values,
    everyone else contributes zeros to a world all-reduce (DP shares are disjoint rows, so each
    entry comes from exactly one rank and the sum is exact)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    dev = device()
    for tensor in tensors.values():
        if not owner:
            tensor.zero_()
        moved = tensor.to(dev)  # nccl reduces device tensors only; a no-op on CPU
        dist.all_reduce(moved)
        tensor.copy_(moved)

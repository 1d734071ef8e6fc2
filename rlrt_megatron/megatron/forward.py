"""Shared plumbing of the actor's passes: DP shares, paired micro-batches, megatron's schedule.

A *rollout* is (prompt ids, response ids) for the student view and optionally (teacher prompt
ids, the same response ids) for the teacher view; both sequences are prompt ⊕ response, so the
response sits at the tail of each and the two views are aligned token by token.

Both views of a rollout always go into the **same micro-batch** (students first, then the
teachers of those rollouts): the last pipeline stage then holds the logits of both views at the
same time and can compute pair statistics (KL, top-k at the student's ids) from this one
micro-batch's response logits, never from [T, V] logits kept across micro-batches.

Layouts (:class:`SequenceLayout`, from the model): **packed** (the default; sequences back to
back in one row with per-sequence causal attention and RoPE restarting at each sequence, see
:mod:`.microbatch`) cuts micro-batches by *real* tokens up to ``max_tokens``; **padded** cuts by
padded size ((number of sequences) × (longest sequence)), longest rollouts first. Under context
parallelism (CP > 1, packed only) every sequence is split over the CP ranks in the load-balanced
2·CP chunk order and each rank feeds the model its chunks only.

**Separate teacher weights** (the frozen initial model or an EMA, see :mod:`.teacher_weights`):
the two views of a rollout cannot share a forward pass, but pair statistics still need both
views' logits at once. :func:`plan_microbatches` with ``separate_teacher=True`` plans the same
micro-batches (the budget still counts both views: the teacher's response logits are held while
the student view runs) but keeps the teacher sequences apart (``MicroBatch.teacher_inputs``);
:func:`run_pairs` then runs, per micro-batch, the teacher sequences forward-only with the
teacher weights swapped in, keeps their response logits (one micro-batch's worth, last stage),
swaps back and runs the student sequences (with backward in the update). See :func:`run_pairs`
for what that costs.

Whatever the layout, ``on_logits`` receives the micro-batch's **response logits**
[n_response_tokens, V_local], sequence by sequence (under CP gathered from the CP ranks that own
them, with a backward that hands each rank its own rows), and :meth:`MicroBatch.response_index`
indexes into them. Micro-batches run through megatron's ``get_forward_backward_func()`` (no
pipelining, or 1F1B when PP > 1); with PP > 1 the model config's ``variable_seq_lengths`` is
turned on so the stages exchange each activation's shape before the tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlrt_megatron.megatron.microbatch import (
    PackedBatch,
    PaddedBatch,
    pack_sequences,
    packed_length,
    pad_sequences,
)

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


@dataclass(frozen=True)
class SequenceLayout:
    """How the actor lays out micro-batches.

    Attributes:
        packing: packed (THD) micro-batches; else right-padded rows.
        cp_size: context-parallel ranks each packed sequence is split over.
        tp_multiple: with sequence parallelism, the token count per CP rank must be a multiple
            of TP (1 without sequence parallelism).
    """

    packing: bool = False
    cp_size: int = 1
    tp_multiple: int = 1

    def __post_init__(self) -> None:
        if self.cp_size > 1 and not self.packing:
            raise ValueError("context parallelism needs packed micro-batches")

    @classmethod
    def of(cls, model: Any) -> SequenceLayout:
        """The layout of a built model (its ``packing`` flag) in the initialized parallel state."""
        from megatron.core import parallel_state as mpu

        tp = mpu.get_tensor_model_parallel_world_size()
        return cls(
            packing=bool(getattr(model, "packing", False)),
            cp_size=mpu.get_context_parallel_world_size(),
            tp_multiple=tp if model.config.sequence_parallel else 1,
        )

    @property
    def sequence_multiple(self) -> int:
        """Each packed sequence is padded to a multiple of this (2·CP chunks under CP)."""
        return 2 * self.cp_size if self.cp_size > 1 else 1

    def sequence_cost(self, n: int) -> int:
        """Tokens a sequence of ``n`` real tokens occupies in a packed micro-batch."""
        return packed_length(n, self.sequence_multiple)


@dataclass
class MicroBatch:
    """One micro-batch: student sequences of ``rows`` (sequences 0..b−1 of ``inputs``), then the
    teacher sequences of ``rows[j]`` for j in ``paired`` (sequences b, b+1, ...).

    ``rows`` are indices into the caller's rollout list; ``inputs`` is a :class:`PaddedBatch`
    or a :class:`PackedBatch`. With separate teacher weights (``teacher_inputs`` set) ``inputs``
    holds the student sequences only and ``teacher_inputs`` the teacher sequences of ``paired``,
    in that order: two model inputs that :func:`run_pairs` runs one after the other.
    """

    rows: list[int]
    paired: list[int]
    inputs: PaddedBatch | PackedBatch
    teacher_inputs: PaddedBatch | PackedBatch | None = None

    @property
    def num_students(self) -> int:
        return len(self.rows)

    @property
    def packed(self) -> bool:
        return isinstance(self.inputs, PackedBatch)

    def response_index(self, sequences: Sequence[int]) -> torch.Tensor:
        """Rows of the response logits ``on_logits`` receives ([n_response_tokens, V], sequence
        by sequence) that hold the given sequences' responses, concatenated in that order."""
        lengths = [int(n) for n in self.inputs.response_len]
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        parts = [starts[seq] + torch.arange(lengths[seq]) for seq in sequences]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def student_index(self, positions: Sequence[int] | None = None) -> torch.Tensor:
        """Response rows of the students at ``positions`` in ``rows`` (default: all)."""
        return self.response_index(range(len(self.rows)) if positions is None else positions)

    def teacher_index(self) -> torch.Tensor:
        """Response rows of the teacher sequences, in ``paired`` order (shared pass)."""
        return self.response_index(range(len(self.rows), len(self.rows) + len(self.paired)))

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(student, teacher) response logits of a shared pass, as views (no copy): the
        students' [n_student_tokens, V] (indexed by :meth:`student_index`) and the paired
        teachers' [n_teacher_tokens, V] in ``paired`` order (``None`` without pairs)."""
        n = int(sum(int(x) for x in self.inputs.response_len[: len(self.rows)]))
        return logits[:n], (logits[n:] if self.paired else None)

    def student_view(self) -> MicroBatch:
        """The student sequences alone (a separate-teacher micro-batch's first input)."""
        return MicroBatch(rows=self.rows, paired=[], inputs=self.inputs)

    def teacher_view(self) -> MicroBatch | None:
        """The teacher sequences alone, as the "students" of a micro-batch of their own (their
        response logits come in ``paired`` order); ``None`` without pairs."""
        if self.teacher_inputs is None:
            return None
        rows = [self.rows[j] for j in self.paired]
        return MicroBatch(rows=rows, paired=[], inputs=self.teacher_inputs)


def plan_microbatches(
    rows: Sequence[int],
    prompts: Sequence[Ids],
    responses: Sequence[Ids],
    teacher_prompts: Sequence[Ids | None] | None,
    *,
    max_tokens: int,
    pad_to_multiple_of: int = 1,
    layout: SequenceLayout | None = None,
    separate_teacher: bool = False,
) -> list[MicroBatch]:
    """Cut ``rows`` (with their teacher sequences where ``teacher_prompts[row]`` is given) into
    micro-batches of at most ``max_tokens`` tokens, biggest rollouts first.

    ``layout`` (default: padded, rows a multiple of ``pad_to_multiple_of``) decides what a token
    costs: packed micro-batches count each sequence's real tokens (plus its padding to
    2·CP under context parallelism), padded ones count (sequences) × (longest sequence).
    ``separate_teacher``: the same grouping, but the teacher sequences become a model input of
    their own (``MicroBatch.teacher_inputs``, for :func:`run_pairs` with teacher weights).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    layout = layout or SequenceLayout(tp_multiple=pad_to_multiple_of)

    def teacher(r: int) -> Ids | None:
        return None if teacher_prompts is None else teacher_prompts[r]

    def lengths(r: int) -> list[int]:
        t = teacher(r)
        n = len(prompts[r]) + len(responses[r])
        return [n] if t is None else [n, len(t) + len(responses[r])]

    if layout.packing:

        def cost(r: int) -> int:
            return sum(layout.sequence_cost(n) for n in lengths(r))

        def fits(group: list[int], r: int) -> bool:
            return sum(cost(x) for x in group) + cost(r) <= max_tokens

    else:

        def width(r: int) -> int:
            return packed_length(max(lengths(r)), layout.tp_multiple)

        def cost(r: int) -> int:
            return len(lengths(r)) * width(r)

        def fits(group: list[int], r: int) -> bool:
            seqs = sum(len(lengths(x)) for x in group) + len(lengths(r))
            return seqs * width(group[0]) <= max_tokens  # the first member is the widest

    for r in rows:
        if cost(r) > max_tokens:
            raise ValueError(
                f"rollout {r} needs {cost(r)} tokens ({len(lengths(r))} sequence(s)), more than "
                f"the micro-batch token budget {max_tokens}: raise the budget (actor.max_tokens)"
            )
    groups: list[list[int]] = []
    if layout.packing:
        # First-fit decreasing: each rollout goes into the first micro-batch with room, so the
        # micro-batches end up nearly full of real tokens.
        for r in sorted(rows, key=lambda r: (-cost(r), r)):
            target = next((g for g in groups if fits(g, r)), None)
            if target is None:
                groups.append([r])
            else:
                target.append(r)
    else:
        current: list[int] = []
        for r in sorted(rows, key=lambda r: (-max(lengths(r)), r)):
            if current and not fits(current, r):
                groups.append(current)
                current = []
            current.append(r)
        if current:
            groups.append(current)

    batches = []
    for group in groups:
        paired = [j for j, r in enumerate(group) if teacher(group[j]) is not None]
        student_prompts = [prompts[r] for r in group]
        student_responses = [responses[r] for r in group]
        teacher_prompts_ = [teacher(group[j]) for j in paired]
        teacher_responses = [responses[group[j]] for j in paired]
        if separate_teacher:
            batches.append(
                MicroBatch(
                    rows=group,
                    paired=paired,
                    inputs=_layout_inputs(student_prompts, student_responses, layout),
                    teacher_inputs=_layout_inputs(teacher_prompts_, teacher_responses, layout)
                    if paired
                    else None,
                )
            )
        else:
            inputs = _layout_inputs(
                student_prompts + teacher_prompts_, student_responses + teacher_responses, layout
            )
            batches.append(MicroBatch(rows=group, paired=paired, inputs=inputs))
    return batches


def _layout_inputs(
    seq_prompts: Sequence[Ids], seq_responses: Sequence[Ids], layout: SequenceLayout
) -> PaddedBatch | PackedBatch:
    """The model input of these sequences (prompt ⊕ response each) in ``layout``."""
    if layout.packing:
        return pack_sequences(
            seq_prompts,
            seq_responses,
            PAD_ID,
            pad_to_multiple_of=layout.sequence_multiple,
            total_multiple_of=layout.sequence_multiple * layout.tp_multiple,
        )
    return pad_sequences(seq_prompts, seq_responses, PAD_ID, pad_to_multiple_of=layout.tp_multiple)


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


# on_logits(micro_batch, response logits [n_response_tokens, V_local]) -> (loss to
# backpropagate, unused dict)
LogitsFn = Callable[[MicroBatch, torch.Tensor], tuple[torch.Tensor, dict]]


def _model_inputs(mb: MicroBatch, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(input ids, position ids, packed-sequence params or None) this rank feeds the model."""
    from megatron.core import parallel_state as mpu

    if not mb.packed:
        return mb.inputs.input_ids.to(dev), mb.inputs.position_ids.to(dev), None
    from megatron.core.packed_seq_params import PackedSeqParams

    from rlrt_megatron.models.packed_attention import cp_local_positions

    inputs: PackedBatch = mb.inputs  # type: ignore[assignment]
    ids, positions = inputs.input_ids, inputs.position_ids
    cp = mpu.get_context_parallel_world_size()
    if cp > 1:
        local = cp_local_positions(inputs.cu_seqlens, cp, mpu.get_context_parallel_rank())
        ids, positions = ids[:, local], positions[:, local]
    cu = inputs.cu_seqlens.to(dev)
    longest = inputs.max_seqlen
    params = PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        cu_seqlens_q_padded=cu,
        cu_seqlens_kv_padded=cu,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )
    return ids.to(dev), positions.to(dev), params


def _response_logits(mb: MicroBatch, logits: torch.Tensor) -> torch.Tensor:
    """This micro-batch's response logits [n_response_tokens, V_local], sequence by sequence,
    from the model's output [b, s, V_local] (under CP: this rank's chunks only)."""
    from megatron.core import parallel_state as mpu

    flat = logits.reshape(-1, logits.shape[-1])
    positions = mb.inputs.response_positions()
    cp = mpu.get_context_parallel_world_size()
    if cp == 1:
        return flat.index_select(0, positions.to(flat.device))
    from rlrt_megatron.models.cp_comm import gather_replicated_rows
    from rlrt_megatron.models.packed_attention import cp_local_positions

    cu = mb.inputs.cu_seqlens  # type: ignore[union-attr]
    total = int(cu[-1])
    owner = torch.empty(total, dtype=torch.long)
    local_index = torch.empty(total, dtype=torch.long)
    for rank in range(cp):
        held = cp_local_positions(cu, cp, rank)
        owner[held] = rank
        local_index[held] = torch.arange(held.numel())
    owners = owner[positions]
    rank = mpu.get_context_parallel_rank()
    # Rank-major: every rank's response rows in sequence order, rank after rank.
    by_rank = [torch.nonzero(owners == r).flatten() for r in range(cp)]
    mine = local_index[positions[by_rank[rank]]]
    gathered = gather_replicated_rows(
        flat.index_select(0, mine.to(flat.device)),
        [int(x.numel()) for x in by_rank],
        mpu.get_context_parallel_group(),
    )
    order = torch.empty(positions.numel(), dtype=torch.long)
    order[torch.cat(by_rank)] = torch.arange(positions.numel())
    return gathered.index_select(0, order.to(gathered.device))


def run_schedule(
    model: Any, microbatches: list[MicroBatch], on_logits: LogitsFn, *, forward_only: bool
) -> None:
    """Run ``microbatches`` through megatron's forward(-backward) schedule.

    ``on_logits`` runs on the last pipeline stage for each micro-batch (in order) with the
    micro-batch's response logits [n_response_tokens, V_local] (see the module docstring);
    with ``forward_only=False`` its returned loss is backpropagated after megatron divides it by
    the number of micro-batches (callers undo that). Under context parallelism every CP rank
    receives the same response logits and must return the same loss (megatron multiplies it by
    CP and DDP averages over DP × CP, which together give the exact gradient).
    Every rank of a model-parallel group must pass the same micro-batches.
    """
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not microbatches:
        raise ValueError("no micro-batches to run")
    if any(mb.teacher_inputs is not None for mb in microbatches):
        raise ValueError("micro-batches with separate teacher inputs run through run_pairs")
    if mpu.get_pipeline_model_parallel_world_size() > 1:
        # Micro-batches have different [S, b] shapes: stages send each shape before the tensor.
        model.config.variable_seq_lengths = True
    if mpu.get_context_parallel_world_size() > 1 and not all(mb.packed for mb in microbatches):
        raise ValueError("context parallelism needs packed micro-batches")
    dev = device()
    cp = mpu.get_context_parallel_world_size()

    def forward_step(data_iterator, chunk):
        mb = next(data_iterator)
        ids, positions, packed = _model_inputs(mb, dev)
        # Right padding + causal mask, or packed sequences: no attention mask either way.
        if packed is None:
            output = chunk(ids, positions, None)
        else:
            output = chunk(ids, positions, None, packed_seq_params=packed)

        def loss_func(logits):
            return on_logits(mb, _response_logits(mb, logits))

        return output, loss_func

    def run():
        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(microbatches),
            model=model.chunks,
            num_microbatches=len(microbatches),
            seq_length=max(mb.inputs.input_ids.shape[1] for mb in microbatches) // cp,
            micro_batch_size=max(mb.inputs.input_ids.shape[0] for mb in microbatches),
            forward_only=forward_only,
        )

    if forward_only:
        with torch.no_grad():
            run()
    else:
        run()


# on_pair(micro_batch, student response logits [n_student_tokens, V_local], teacher response
# logits [n_teacher_tokens, V_local] in ``paired`` order or None) -> (loss, unused dict)
PairFn = Callable[[MicroBatch, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, dict]]
TeacherSwap = Callable[[], contextlib.AbstractContextManager]


def run_pairs(
    model: Any,
    microbatches: list[MicroBatch],
    on_pair: PairFn,
    *,
    forward_only: bool,
    teacher_swap: TeacherSwap | None = None,
) -> None:
    """Run ``microbatches`` and call ``on_pair`` (last pipeline stage) with each micro-batch's
    student and teacher response logits.

    ``teacher_swap`` ``None`` (the teacher uses the student's weights): one
    :func:`run_schedule` call over all micro-batches, both views in one pass;
    :meth:`MicroBatch.split_logits` hands ``on_pair`` views of the one logits tensor.

    With ``teacher_swap`` (a context-manager factory that puts the teacher weights into the
    model and the policy's back after; micro-batches planned with ``separate_teacher=True``),
    each micro-batch is a schedule call of its own, in two steps:

    1. the teacher sequences, forward-only, inside ``teacher_swap()``; the last stage keeps
       their response logits (detached: the teacher is a stop-gradient target);
    2. the student sequences (forward-only, or forward-backward when ``forward_only`` is False)
       with the policy's weights; ``on_pair`` gets the kept teacher logits.

    Never more than one micro-batch's teacher logits are held (all of a mini-batch's would be
    terabytes at the paper's lengths). With backward, gradients accumulate in the DDP buffers
    across the calls and megatron's ``finalize_model_grads`` (the DP all-reduce, the sequence-
    parallel norm and tied-embedding reductions, all linear in the gradients) runs once, after
    the last micro-batch: it is switched off for the earlier calls. Megatron divides each loss
    by the number of micro-batches of its call, which is 1 here, not ``len(microbatches)``
    (callers undo that division, see :func:`schedule_divisor`).

    The cost of the separate teacher: the parameters are swapped twice per micro-batch (an
    in-place copy of this rank's shards; from CPU memory with ``offload_teacher``) and, under
    pipeline parallelism, micro-batches are not pipelined (each call fills and drains the
    pipeline: stages idle (PP − 1)/PP of the time instead of about (PP − 1)/(M + PP − 1)).
    """
    if teacher_swap is None:
        if any(mb.teacher_inputs is not None for mb in microbatches):
            raise ValueError("micro-batches planned with separate_teacher need a teacher_swap")

        def on_logits(mb: MicroBatch, logits: torch.Tensor):
            student, teacher = mb.split_logits(logits)
            return on_pair(mb, student, teacher)

        run_schedule(model, microbatches, on_logits, forward_only=forward_only)
        return
    if any(mb.paired and mb.teacher_inputs is None for mb in microbatches):
        raise ValueError("with a teacher_swap, plan the micro-batches with separate_teacher=True")
    if not microbatches:
        raise ValueError("no micro-batches to run")
    if not forward_only:
        for chunk in model.chunks:
            ddp = getattr(chunk, "ddp_config", None)
            if ddp is not None and ddp.overlap_grad_reduce:
                raise ValueError(
                    "a separate teacher accumulates gradients over several schedule calls: it "
                    "needs DDP without overlap_grad_reduce"
                )
    config = model.config
    finalize = config.finalize_model_grads_func
    kept: dict[str, torch.Tensor] = {}

    def keep_teacher(mb: MicroBatch, logits: torch.Tensor):
        kept["teacher"] = logits.detach()
        return logits.new_zeros(()), {}

    try:
        for i, mb in enumerate(microbatches):
            teacher_mb = mb.teacher_view()
            if teacher_mb is not None:
                with teacher_swap():
                    run_schedule(model, [teacher_mb], keep_teacher, forward_only=True)

            def on_student(student_mb: MicroBatch, logits: torch.Tensor, mb=mb):
                return on_pair(mb, logits, kept.pop("teacher", None))

            if not forward_only:
                config.finalize_model_grads_func = finalize if i == len(microbatches) - 1 else None
            run_schedule(model, [mb.student_view()], on_student, forward_only=forward_only)
    finally:
        config.finalize_model_grads_func = finalize
        kept.clear()


def schedule_divisor(microbatches: list[MicroBatch], separate_teacher: bool) -> int:
    """What megatron divides each micro-batch's loss by under :func:`run_pairs`: the number of
    micro-batches of one schedule call (all of them in a shared pass, 1 per call with a
    separate teacher)."""
    return 1 if separate_teacher else len(microbatches)


def result_owner() -> bool:
    """Whether this rank publishes its DP share's results: the last PP stage's TP rank 0 and CP
    rank 0 (all TP and CP ranks of the last stage hold the same, reduced/gathered values)."""
    from megatron.core import parallel_state as mpu

    return (
        mpu.is_pipeline_last_stage()
        and mpu.get_tensor_model_parallel_rank() == 0
        and mpu.get_context_parallel_rank() == 0
    )


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

"""``rlrt score``: per-token log-probs, entropies, teacher log-probs and KL of given responses.

Loads a Hugging Face Qwen3 checkpoint into megatron-core at ``--tp`` × ``--pp`` × ``--cp`` (the
command starts the TP·PP·CP worker processes itself; context parallelism splits every packed
sequence over ``--cp`` ranks, for sequences too long for one device) and scores each input line with
:func:`~rlrt_megatron.megatron.scoring.score_rollouts`, the same path the trainer uses for its
old log-probs and D̄_t; so it doubles as an end-to-end check of that path against any reference.

Input (jsonl, one rollout a line; blank lines are skipped)::

    {"prompt": str, "response": str, "context": str | null}
    {"prompt_ids": [int], "response_ids": [int], "teacher_prompt_ids": [int] | null}

``prompt`` is rendered as one user message through the tokenizer's chat template (as-is with
``--raw-prompt``); the teacher prompt is the same with the user message wrapped around
``context`` by ``--teacher-template``. ``response`` is tokenized as plain text without special
tokens. Text and id fields may be mixed per part (e.g. ``prompt`` with ``response_ids``), except
that ``context`` needs the prompt as text. Every line is checked (JSON, keys, empty response, ids
within the model's vocab, length within ``max_position_embeddings``) before any worker starts.

Output (jsonl, one line per input rollout, same order; written atomically)::

    {"tokens": [str], "token_ids": [int], "logprobs": [float], "entropy": [float],
     "teacher_logprobs": [float] | null, "kl": [float] | null}

with ``kl[t]`` = KL(P_S^t ‖ P_T^t) over the full vocabulary at response position t.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlrt_megatron.atomic_files import atomic_write_text
from rlrt_megatron.command_registry import register_command
from rlrt_megatron.errors import CommandError
from rlrt_megatron.megatron.score_inputs import (
    ScoreInputError,
    ScoreRequest,
    load_score_requests,
    parse_score_line,
)
from rlrt_megatron.teacher.templates import PEER_TEMPLATE

__all__ = ["ScoreInputError", "ScoreRequest", "load_score_requests", "parse_score_line"]

_DTYPES = ("float32", "bfloat16")


def _score_worker(
    rank: int,
    model_dir: str,
    tp: int,
    pp: int,
    dtype: str,
    prompts: list[list[int]],
    responses: list[list[int]],
    teachers: list[list[int] | None] | None,
    max_tokens: int,
    cp: int = 1,
    packing: bool = True,
) -> dict[str, list[list[float]] | None] | None:
    """One rank of ``rlrt score``; rank 0 returns the per-rollout lists (trimmed to each
    response's length), the others ``None`` (every rank holds the result; one copy is enough)."""
    import torch

    from rlrt_megatron.megatron.parallel import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
    )
    from rlrt_megatron.megatron.scoring import score_rollouts
    from rlrt_megatron.models.qwen3_megatron import build_qwen3_model

    initialize_parallel(
        ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, context_parallel=cp)
    )
    try:
        torch_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
        model = build_qwen3_model(model_dir, dtype=torch_dtype, packing=packing)
        for chunk in model.chunks:
            chunk.eval()
        result = score_rollouts(
            model, prompts, responses, teacher_prompts=teachers, max_tokens=max_tokens
        )
    finally:
        destroy_parallel()
    if rank != 0:
        return None

    def rows(tensor: torch.Tensor | None) -> list[list[float]] | None:
        if tensor is None:
            return None
        return [tensor[i, : len(r)].float().tolist() for i, r in enumerate(responses)]

    return {
        "logprobs": rows(result.student_log_prob),
        "entropy": rows(result.student_entropy),
        "teacher_logprobs": rows(result.teacher_log_prob),
        "kl": rows(result.kl),
    }


def _write_atomically(path: Path, lines: list[str]) -> None:
    """One line each, atomically (`rlrt_megatron.atomic_files`): readers never see half a file."""
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="HF Qwen3 checkpoint folder")
    parser.add_argument("--data", type=Path, required=True, help="input jsonl (see rlrt score)")
    parser.add_argument("--output", type=Path, required=True, help="output jsonl (atomic)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    parser.add_argument(
        "--cp",
        type=int,
        default=1,
        help="context-parallel size: each sequence is split over this many ranks (default 1)",
    )
    parser.add_argument(
        "--no-packing",
        action="store_true",
        help="right-padded micro-batches instead of packed ones (not with --cp > 1)",
    )
    parser.add_argument(
        "--dtype", choices=_DTYPES, default="float32", help="model dtype (default float32)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=8192,
        help="tokens per micro-batch, both views of a rollout counted: real tokens when packed, "
        "padded ones with --no-packing (default 8192)",
    )
    parser.add_argument(
        "--raw-prompt",
        action="store_true",
        help="use the prompt text as-is instead of the tokenizer's chat template",
    )
    parser.add_argument(
        "--teacher-template",
        default=PEER_TEMPLATE,
        help="teacher user message with {prompt} and {context} (default: the peer template)",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before the workers are killed"
    )


def _run_score(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from rlrt_megatron.megatron.launcher import LaunchTimeout, WorkerError, launch
    from rlrt_megatron.models.qwen3_checkpoint import CheckpointError, validate_qwen3_layout

    if args.tp < 1 or args.pp < 1 or args.cp < 1:
        raise CommandError(
            f"--tp, --pp and --cp must be >= 1, got --tp {args.tp} --pp {args.pp} --cp {args.cp}"
        )
    if args.cp > 1 and args.no_packing:
        raise CommandError("--cp > 1 splits packed sequences: it cannot be used with --no-packing")
    if args.max_tokens < 1:
        raise CommandError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    for field in ("{prompt}", "{context}"):
        if field not in args.teacher_template:
            raise CommandError(f"--teacher-template must contain {field}")
    model_dir, output = args.model.resolve(), args.output.resolve()
    try:
        checkpoint = validate_qwen3_layout(model_dir, args.tp, args.pp)
    except CheckpointError as error:
        raise CommandError(str(error)) from None
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    try:
        requests = load_score_requests(
            args.data,
            tokenizer,
            vocab_size=checkpoint.vocab_size,
            max_positions=checkpoint.max_position_embeddings,
            raw_prompt=args.raw_prompt,
            teacher_template=args.teacher_template,
        )
    except ScoreInputError as error:
        raise CommandError(str(error)) from None
    multiple = 2 * args.cp if args.cp > 1 else 1
    for request in requests:
        # The micro-batch planner's check, so it fails here and not in the workers.
        views = [request.prompt_ids] + (
            [] if request.teacher_prompt_ids is None else [request.teacher_prompt_ids]
        )
        lengths = [len(v) + len(request.response_ids) for v in views]
        if args.no_packing:
            need = len(lengths) * max(lengths)
        else:
            need = sum(-(-n // multiple) * multiple for n in lengths)
        if need > args.max_tokens:
            raise CommandError(
                f"{args.data}:{request.line}: needs {need} tokens in one micro-batch, more than "
                f"--max-tokens {args.max_tokens}"
            )
    teachers = [r.teacher_prompt_ids for r in requests]
    nprocs = args.tp * args.pp * args.cp
    print(
        f"scoring {len(requests)} rollouts with {model_dir} at TP={args.tp} PP={args.pp} "
        f"CP={args.cp} ({nprocs} processes, {args.dtype}, "
        f"{'padded' if args.no_packing else 'packed'})"
    )
    try:
        results = launch(
            _score_worker,
            nprocs,
            str(model_dir),
            args.tp,
            args.pp,
            args.dtype,
            [r.prompt_ids for r in requests],
            [r.response_ids for r in requests],
            teachers if any(t is not None for t in teachers) else None,
            args.max_tokens,
            args.cp,
            not args.no_packing,
            timeout_s=args.timeout,
        )
    except (WorkerError, LaunchTimeout) as error:
        raise CommandError(str(error)) from None
    scores = next((value for value in results.values() if value is not None), None)
    if scores is None:  # a rank other than 0 under torchrun/Slurm: rank 0 writes the file
        return 0
    lines = []
    for i, request in enumerate(requests):
        teacher = request.teacher_prompt_ids is not None
        record = {
            "tokens": [tokenizer.decode([t]) for t in request.response_ids],
            "token_ids": request.response_ids,
            "logprobs": scores["logprobs"][i],
            "entropy": scores["entropy"][i],
            "teacher_logprobs": scores["teacher_logprobs"][i] if teacher else None,
            "kl": scores["kl"][i] if teacher else None,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    _write_atomically(output, lines)
    print(f"wrote {output}")
    return 0


register_command(
    "score",
    "per-token log-probs, entropies and (with a teacher context) teacher log-probs and KL of "
    "given responses, with a HF Qwen3 checkpoint loaded at --tp/--pp/--cp",
    _add_score_arguments,
    _run_score,
)

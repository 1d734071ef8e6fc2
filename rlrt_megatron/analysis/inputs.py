"""Input trajectories of the analyses and the launched scoring passes they need.

Trajectories use ``rlrt score``'s jsonl formats (see :mod:`rlrt_megatron.megatron.score_inputs`):
``{"prompt", "response", "context"}`` or the id forms, plus the fields some analyses need —
``answer`` (the ground truth, graded with the math reward), ``correct`` (bool, instead of
``answer`` where no grading is needed), ``problem`` (groups rollouts of one problem; defaults to
the prompt), ``solution`` (a worked solution, optional) and ``ground_truth_teacher_prompt_ids``
(the teacher prompt with a known correct solution, written by ``rlrt analyze rollouts`` where no
correct peer exists). Every line is checked before any worker starts; errors name ``file:line``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrt_megatron.data.readers import json_lines
from rlrt_megatron.errors import CommandError
from rlrt_megatron.megatron.score_inputs import (
    ScoreInputError,
    ScoreRequest,
    load_score_requests,
    parse_score_line,
)
from rlrt_megatron.teacher.templates import PEER_TEMPLATE


@dataclass(frozen=True)
class Trajectory:
    """One input line: its ids (``request``), the decoded JSON object and ``file:line``."""

    request: ScoreRequest
    record: dict[str, Any]
    where: str
    teacher: str | None = None
    """Where the teacher view comes from: "context" (the line's ``context`` or
    ``teacher_prompt_ids``), "ground_truth" (a known correct solution), or None (no teacher)."""

    @property
    def problem(self) -> str:
        """The problem this rollout belongs to: ``problem`` if given, else the prompt."""
        return problem_key(self.record, self.request.prompt_ids)


def problem_key(record: dict[str, Any], prompt_ids: Any = None) -> str:
    """The problem a rollout line belongs to: ``problem`` if given, else the prompt (text, or
    ids as JSON)."""
    key = record.get("problem", record.get("prompt", record.get("prompt_ids", prompt_ids)))
    return key if isinstance(key, str) else json.dumps(key)


def read_problem_counts(path: Path) -> dict[str, tuple[int, int]]:
    """{problem: (correct rollouts, rollouts)} from a graded rollouts jsonl, in file order.

    Lines of ``rlrt analyze rollouts`` carry ``problem_correct`` / ``problem_rollouts`` (the
    counts over all K sampled, including rollouts it could not write out): those are used;
    otherwise lines are counted by their ``correct`` (bool). CommandError naming ``path:line``.
    """
    counts: dict[str, list[int]] = {}
    given: dict[str, tuple[int, int]] = {}
    for where, _, record in json_lines(path, CommandError):
        if not isinstance(record, dict):
            raise CommandError(f"{where}: expected a JSON object")
        problem = problem_key(record)
        if "problem_correct" in record and "problem_rollouts" in record:
            pair = (record["problem_correct"], record["problem_rollouts"])
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
                raise CommandError(f"{where}: problem_correct/problem_rollouts must be integers")
            if given.setdefault(problem, pair) != pair:
                raise CommandError(f"{where}: problem {problem!r} has other counts on another line")
        elif not isinstance(record.get("correct"), bool):
            raise CommandError(
                f"{where}: needs 'correct' (true/false) or 'problem_correct' and "
                "'problem_rollouts' (graded rollouts of the base model)"
            )
        entry = counts.setdefault(problem, [0, 0])
        entry[0] += int(record.get("correct") is True)
        entry[1] += 1
    if not counts:
        raise CommandError(f"{path} has no rollouts (it is empty)")
    return {p: given.get(p, (c, n)) for p, (c, n) in counts.items()}


@dataclass(frozen=True)
class ModelInfo:
    """A checked model folder: its path, tokenizer and sizes."""

    path: Path
    tokenizer: Any
    vocab_size: int
    max_positions: int


def open_model(path: Path, tp: int = 1, pp: int = 1) -> ModelInfo:
    """Resolve ``path`` (HF folder, checkpoint step or run dir when the project's resolver
    knows it) and check that TP×PP can split it; CommandError naming the path otherwise."""
    from transformers import AutoTokenizer

    from rlrt_megatron.models.qwen3_checkpoint import CheckpointError, validate_qwen3_layout

    if tp < 1 or pp < 1:
        raise CommandError(f"--tp and --pp must be >= 1, got --tp {tp} --pp {pp}")
    folder = Path(path).resolve()
    try:
        from rlrt_megatron.megatron.checkpoint import CheckpointLoadError, resolve_hf_model

        folder = resolve_hf_model(folder)
    except ImportError:  # an older checkout without the resolver: HF folders only
        pass
    except CheckpointLoadError as error:
        raise CommandError(str(error)) from None
    try:
        checkpoint = validate_qwen3_layout(folder, tp, pp)
    except CheckpointError as error:
        raise CommandError(str(error)) from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return ModelInfo(folder, tokenizer, checkpoint.vocab_size, checkpoint.max_position_embeddings)


def load_pairs_for(
    args: Any,
    model: ModelInfo,
    *,
    need: tuple[str, ...] = (),
    ground_truth_teacher: bool = False,
) -> list[Trajectory]:
    """:func:`load_trajectories` of ``--data`` with a teacher view, under the options every
    teacher-scoring subcommand shares (``--skip-without-context``, ``--raw-prompt``,
    ``--teacher-template``)."""
    return load_trajectories(
        args.data,
        model,
        need_teacher=True,
        skip_without_teacher=args.skip_without_context,
        need=need,
        raw_prompt=args.raw_prompt,
        teacher_template=args.teacher_template,
        ground_truth_teacher=ground_truth_teacher,
    )


def known_solution(answer: Any, solution: Any = None) -> str:
    """The known correct solution c shown to a ground-truth teacher: the worked ``solution`` when
    the data has one, else the boxed final answer (the trainer's RLSD context,
    :func:`rlrt_megatron.teacher.contexts.ground_truth_context`)."""
    from rlrt_megatron.teacher.contexts import GroupInputs, ground_truth_context

    text = solution if isinstance(solution, str) else None
    return ground_truth_context(
        GroupInputs(messages=(), responses=(), ground_truth=str(answer), solution=text)
    )


def _ground_truth_teacher_ids(
    record: dict[str, Any],
    where: str,
    line: int,
    model: ModelInfo,
    *,
    raw_prompt: bool,
    teacher_template: str,
) -> list[int] | None:
    """The teacher prompt ids of a line without a teacher context, built from a known correct
    solution: ``ground_truth_teacher_prompt_ids`` if given, else the teacher template around
    :func:`known_solution` (needs ``prompt`` as text and ``answer``); None when neither."""
    ids = record.get("ground_truth_teacher_prompt_ids")
    if ids is not None:
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise CommandError(
                f"{where}: 'ground_truth_teacher_prompt_ids' must be a non-empty list of integers"
            )
    elif isinstance(record.get("prompt"), str) and record.get("answer") is not None:
        context = known_solution(record["answer"], record.get("solution"))
        try:
            request = parse_score_line(
                record | {"context": context},
                where,
                line,
                model.tokenizer,
                raw_prompt=raw_prompt,
                teacher_template=teacher_template,
            )
        except ScoreInputError as error:
            raise CommandError(str(error)) from None
        ids = request.teacher_prompt_ids
    else:
        return None
    bad = [i for i in ids if not 0 <= i < model.vocab_size]
    if bad:
        raise CommandError(
            f"{where}: ground-truth teacher prompt has token id {bad[0]} outside the vocabulary "
            f"[0, {model.vocab_size})"
        )
    return list(ids)


def load_trajectories(
    path: Path,
    model: ModelInfo,
    *,
    need_teacher: bool,
    need: tuple[str, ...] = (),
    raw_prompt: bool = False,
    teacher_template: str = PEER_TEMPLATE,
    skip_without_teacher: bool = False,
    ground_truth_teacher: bool = False,
) -> list[Trajectory]:
    """Read, tokenize and check every line of ``path``.

    ``need_teacher``: every line must give a teacher context (``context`` or
    ``teacher_prompt_ids``), or, with ``skip_without_teacher``, lines without one are left out
    (e.g. rollouts of ``rlrt analyze rollouts`` whose group had no other correct rollout).
    ``ground_truth_teacher``: a line without a teacher context gets the teacher that has seen a
    known correct solution instead (``ground_truth_teacher_prompt_ids``, or the teacher template
    around :func:`known_solution` of ``solution`` / ``answer``), so that problems no rollout
    solved keep their rollouts (the paper's reflection injection, "feeding a known correct
    solution c").
    ``need``: keys every line must have (any one of ``a|b``). Raises CommandError naming
    ``path:line``.
    """
    try:
        requests = load_score_requests(
            path,
            model.tokenizer,
            vocab_size=model.vocab_size,
            max_positions=model.max_positions,
            raw_prompt=raw_prompt,
            teacher_template=teacher_template,
        )
    except ScoreInputError as error:
        raise CommandError(str(error)) from None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = []
    skipped = 0
    for request in requests:
        where = f"{path}:{request.line}"
        record = json.loads(lines[request.line - 1])
        teacher = None if request.teacher_prompt_ids is None else "context"
        if teacher is None and need_teacher and ground_truth_teacher:
            ids = _ground_truth_teacher_ids(
                record,
                where,
                request.line,
                model,
                raw_prompt=raw_prompt,
                teacher_template=teacher_template,
            )
            if ids is not None:
                request = dataclasses.replace(request, teacher_prompt_ids=ids)
                teacher = "ground_truth"
                longest = len(ids) + len(request.response_ids)
                if longest > model.max_positions:
                    raise CommandError(
                        f"{where}: ground-truth teacher prompt + response is {longest} tokens, "
                        f"longer than the model's max_position_embeddings {model.max_positions}"
                    )
        if need_teacher and request.teacher_prompt_ids is None and skip_without_teacher:
            skipped += 1
            continue
        if need_teacher and request.teacher_prompt_ids is None:
            hint = " (or 'prompt' text and 'answer' for a ground-truth teacher)"
            raise CommandError(
                f"{where}: no teacher context: give 'context' (e.g. a correct peer rollout) or "
                f"'teacher_prompt_ids'{hint if ground_truth_teacher else ''}"
            )
        for key in need:
            if not any(k in record and record[k] is not None for k in key.split("|")):
                raise CommandError(f"{where}: missing key {key.replace('|', ' or ')!r}")
        if "correct" in record and not isinstance(record["correct"], bool):
            raise CommandError(f"{where}: 'correct' must be true or false")
        if "answer" in record and not isinstance(record["answer"], str | int | float):
            raise CommandError(f"{where}: 'answer' must be a string or a number")
        out.append(Trajectory(request, record, where, teacher))
    if skipped:
        print(f"{path}: left out {skipped} rollouts without a teacher context")
    if not out:
        raise CommandError(f"{path}: no rollout with a teacher context")
    return out


def score_pairs_for(
    args: Any, model: ModelInfo, trajectories: list[Trajectory], *, topk: int = 0
) -> list[dict[str, list]] | None:
    """:func:`score_pairs` with the scoring options every ``rlrt analyze`` subcommand shares
    (``--tp``, ``--pp``, ``--cp``, ``--dtype``, ``--max-tokens``, ``--timeout``)."""
    return score_pairs(
        model,
        trajectories,
        tp=args.tp,
        pp=args.pp,
        cp=getattr(args, "cp", 1),
        dtype=args.dtype,
        topk=topk,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
    )


def score_pairs(
    model: ModelInfo,
    trajectories: list[Trajectory],
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "float32",
    topk: int = 0,
    max_tokens: int = 8192,
    timeout_s: float = 3600.0,
    cp: int = 1,
) -> list[dict[str, list]] | None:
    """:func:`rlrt_megatron.analysis.views.pair_views` of every trajectory, in TP×PP launched
    worker processes. Per trajectory a dict of per-position lists; ``None`` on a rank other than
    0 under an external launcher (rank 0 writes the outputs)."""
    from rlrt_megatron.analysis.views import pair_views_worker
    from rlrt_megatron.megatron.launcher import LaunchTimeout, WorkerError, launch

    check_budget(trajectories, max_tokens)
    try:
        results = launch(
            pair_views_worker,
            tp * pp * cp,
            str(model.path),
            tp,
            pp,
            dtype,
            [t.request.prompt_ids for t in trajectories],
            [t.request.response_ids for t in trajectories],
            [t.request.teacher_prompt_ids for t in trajectories],
            topk,
            max_tokens,
            cp,
            timeout_s=timeout_s,
        )
    except (WorkerError, LaunchTimeout) as error:
        raise CommandError(str(error)) from None
    merged = next((value for value in results.values() if value is not None), None)
    if merged is None:
        return None
    return [{name: merged[name][i] for name in merged} for i in range(len(trajectories))]


def _positive_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_budget(trajectories: list[Trajectory], max_tokens: int) -> None:
    """Fail in the driver (naming the line) when a rollout cannot fit one micro-batch."""
    if max_tokens < 1:
        raise CommandError(f"--max-tokens must be >= 1, got {max_tokens}")
    for t in trajectories:
        r = t.request
        longest = max(len(r.prompt_ids), len(r.teacher_prompt_ids or []))
        need = (1 if r.teacher_prompt_ids is None else 2) * (longest + len(r.response_ids))
        if need > max_tokens:
            raise CommandError(
                f"{t.where}: needs {need} tokens in one micro-batch, more than --max-tokens "
                f"{max_tokens}"
            )


def write_atomically(path: Path, text: str | bytes) -> None:
    """Replace ``path`` in one step (`rlrt_megatron.atomic_files.atomic_write`)."""
    from rlrt_megatron.atomic_files import atomic_write

    atomic_write(path, text)


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())


def add_model_arguments(parser: Any, *, models: bool = False, model_flag: bool = True) -> None:
    """--model (one, several with ``models``, none without ``model_flag``), --tp, --pp,
    --dtype, --max-tokens, --raw-prompt, --teacher-template, --timeout."""
    from pathlib import Path as _Path

    if not model_flag:
        pass
    elif models:
        parser.add_argument(
            "--model", type=_Path, nargs="+", required=True, help="checkpoint folder(s)"
        )
    else:
        parser.add_argument("--model", type=_Path, required=True, help="HF Qwen3 folder")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    parser.add_argument(
        "--cp",
        type=_positive_int,
        default=1,
        help="context-parallel size: long sequences split over this many ranks (default 1)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="model dtype"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=8192,
        help="tokens per packed micro-batch, both views of a rollout (8192)",
    )
    parser.add_argument(
        "--raw-prompt", action="store_true", help="prompt text as-is (no chat template)"
    )
    parser.add_argument(
        "--teacher-template",
        default=PEER_TEMPLATE,
        help="teacher user message with {prompt} and {context} (default: the peer template)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="worker timeout (s)")
    parser.add_argument(
        "--skip-without-context",
        action="store_true",
        help="leave out rollouts without a teacher context (default: an error naming the line)",
    )

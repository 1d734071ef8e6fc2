"""Prompts of a run (and of evaluation and analysis): read, chat-templated with the model's
tokenizer, length-filtered, batched.

Each record is rendered once, with the tokenizer's own chat template, to the token ids the
engines sample from and the actor scores; the iterator over them is resumable (its position goes
into every checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrt_megatron.data.prompt_format import PromptFormatError, apply_prompt_format
from rlrt_megatron.data.readers import read_prompts
from rlrt_megatron.data.records import DatasetError, PromptRecord
from rlrt_megatron.data.sampler import PromptIterator
from rlrt_megatron.data.templating import encode_chat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TemplatedPrompt:
    record: PromptRecord
    ids: list[int]


def load_tokenizer(model_path: str | Path) -> Any:
    """The checkpoint's own Hugging Face tokenizer (a clear error if the folder has none)."""
    from transformers import AutoTokenizer

    path = Path(model_path)
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)"
        )
    return AutoTokenizer.from_pretrained(str(path))


def load_prompts(
    files: Sequence[str],
    tokenizer: Any,
    *,
    max_prompt_tokens: int,
    on_bad_row: str = "raise",
    enable_thinking: bool | None = None,
    prompt_format: str = "raw",
) -> tuple[list[TemplatedPrompt], dict[str, int]]:
    """All prompts of ``files``, templated; prompts longer than ``max_prompt_tokens`` dropped.

    ``prompt_format`` rewrites each question's answer instruction first
    (`rlrt_megatron.data.prompt_format`; ``boxed``: DAPO-Math-17k's "Answer:" instruction becomes
    "... within \\boxed{}"). A row it cannot rewrite is a bad row: with ``on_bad_row="raise"`` a
    `DatasetError` names the file and row, with ``"skip"`` it is dropped and counted.

    Returns the prompts and counts (``rows``, ``bad_rows`` skipped as malformed or not in the
    format's expected form, ``too_long`` dropped by length, ``kept``).
    """
    if not files:
        raise DatasetError("no prompt files given")
    prompts: list[TemplatedPrompt] = []
    counts = {"rows": 0, "bad_rows": 0, "too_long": 0}
    for file in files:
        records, stats = read_prompts(file, on_bad_row=on_bad_row)
        if stats.num_rows == 0:
            raise DatasetError(f"{file}: the file holds no rows")
        if stats.num_bad:
            shown = "; ".join(stats.errors[:3])
            logger.warning(
                "%s: skipped %d of %d rows as malformed (data.on_bad_row=skip); first: %s",
                file,
                stats.num_bad,
                stats.num_rows,
                shown,
            )
        if not records:
            raise DatasetError(f"{file}: all {stats.num_rows} rows are malformed (skipped)")
        counts["rows"] += stats.num_rows
        counts["bad_rows"] += stats.num_bad
        for record in records:
            try:
                record = apply_prompt_format(record, prompt_format)
            except PromptFormatError as e:
                if on_bad_row == "raise":
                    raise DatasetError(
                        f"{file}: row {record.index} (0-based): key 'prompt': {e}; "
                        f"data.prompt_format={prompt_format!r} rewrites only that form "
                        "(use prompt_format: raw, or on_bad_row: skip to drop such rows)"
                    ) from None
                counts["bad_rows"] += 1
                continue
            ids = encode_chat(tokenizer, record.prompt, enable_thinking=enable_thinking)
            if len(ids) > max_prompt_tokens:
                counts["too_long"] += 1
                continue
            prompts.append(TemplatedPrompt(record, ids))
    counts["kept"] = len(prompts)
    if not prompts:
        raise DatasetError(
            f"no prompt of {list(files)} fits data.max_prompt_tokens={max_prompt_tokens}"
        )
    return prompts, counts


def prompt_batches(
    prompts: Sequence[TemplatedPrompt], prompts_per_step: int, seed: int
) -> PromptIterator[TemplatedPrompt]:
    """Endless shuffled batches of ``prompts_per_step`` prompts (reshuffled every epoch)."""
    return PromptIterator(list(prompts), prompts_per_step, seed=seed, shuffle=True, drop_last=True)

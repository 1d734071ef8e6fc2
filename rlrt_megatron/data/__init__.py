"""Prompt datasets: readers (verl parquet, jsonl), validation, chat templating, length filtering,
a resumable shuffled iterator, and a synthetic verifiable arithmetic task."""

from rlrt_megatron.data.readers import read_jsonl, read_parquet, read_prompts, write_jsonl
from rlrt_megatron.data.records import DatasetError, PromptRecord, ReadStats
from rlrt_megatron.data.sampler import PromptIterator
from rlrt_megatron.data.templating import (
    encode_chat,
    filter_by_prompt_length,
    join_contents,
    render_chat,
)

__all__ = [
    "DatasetError",
    "PromptIterator",
    "PromptRecord",
    "ReadStats",
    "encode_chat",
    "filter_by_prompt_length",
    "join_contents",
    "read_jsonl",
    "read_parquet",
    "read_prompts",
    "render_chat",
    "write_jsonl",
]

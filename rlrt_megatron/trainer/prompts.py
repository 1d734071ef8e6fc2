"""The run's prompts: moved to `rlrt_megatron.data.prompts` (evaluation and analysis load prompts
too, and sit below the trainer); the names stay importable from here."""

from rlrt_megatron.data.prompts import (
    TemplatedPrompt,
    load_prompts,
    load_tokenizer,
    prompt_batches,
)

__all__ = ["TemplatedPrompt", "load_prompts", "load_tokenizer", "prompt_batches"]

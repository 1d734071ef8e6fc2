"""Response text exactly as vLLM's fast incremental detokenizer builds it (no vLLM import): the
vLLM engine uses it when it skips per-step detokenization, in-rank generation always."""

from __future__ import annotations

from typing import Any


def decode_response(tokenizer: Any, prompt: list[int], ids: list[int]) -> str:
    """The text of response ``ids`` after ``prompt`` as vLLM's ``FastIncrementalDetokenizer``
    builds it: a `DecodeStream` primed with the prompt, stepped token by token, special tokens
    skipped; an out-of-range id decodes to nothing, and an "Invalid prefix" error (non-monotonic
    UTF-8 output of some tokenizers) restarts the stream from that token."""
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(ids=prompt, skip_special_tokens=True)
    pieces = []
    for token_id in ids:
        try:
            piece = stream.step(tokenizer, token_id)
        except (OverflowError, TypeError):
            piece = None
        except Exception as e:
            if not str(e).startswith("Invalid prefix encountered"):
                raise
            stream = DecodeStream(skip_special_tokens=True)
            piece = stream.step(tokenizer, token_id)
        if piece:
            pieces.append(piece)
    return "".join(pieces)

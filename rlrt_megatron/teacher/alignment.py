"""Aligning the response tokens of the student and teacher sequences.

Both views score the *same* response tokens y_1..y_T; only the prompts differ (the teacher's
carries the context). With causal LM logits, the distribution of y_t in a sequence whose prompt
has P tokens sits at logit position P + t − 1. Responses are therefore aligned at the tail of
both (unpadded) sequences, and these helpers give the slices.
"""

from __future__ import annotations

import torch


def response_logit_positions(prompt_len: int, response_len: int) -> slice:
    """Positions of a sequence's logits that predict its response tokens: [P−1, P+T−1)."""
    if prompt_len < 1:
        raise ValueError(
            f"prompt_len must be >= 1 (the first response token needs context), got {prompt_len}"
        )
    if response_len < 0:
        raise ValueError(f"response_len must be >= 0, got {response_len}")
    return slice(prompt_len - 1, prompt_len - 1 + response_len)


def build_view(prompt_ids: list[int], response_ids: list[int]) -> tuple[torch.Tensor, slice]:
    """One view's input ids (prompt ⊕ response) and the logit slice scoring the response."""
    if not response_ids:
        raise ValueError("response is empty: there is nothing to score")
    ids = torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long)
    return ids, response_logit_positions(len(prompt_ids), len(response_ids))


def gather_response_logprobs(
    logprobs: torch.Tensor, input_ids: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Log-probs of a sequence's response tokens from its full log-softmax.

    Shapes: ``logprobs`` [S, V] (log-softmax of the logits of one unpadded sequence),
    ``input_ids`` [S] → [S − prompt_len]. Used by single-process references and tests; the
    distributed actor computes the same in vocab-parallel chunks.
    """
    positions = response_logit_positions(prompt_len, input_ids.shape[0] - prompt_len)
    targets = input_ids[prompt_len:]
    return logprobs[positions].gather(-1, targets.unsqueeze(-1)).squeeze(-1)

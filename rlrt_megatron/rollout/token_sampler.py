"""Next-token sampling for in-rank generation: vLLM's sampler semantics as tensor functions.

`processed_logits` applies temperature, top-k and top-p to a batch of logits [B, V] the way
vLLM's v1 sampler does (temperature first, then top-k, then top-p on the remaining mass, ties at
the k-th value kept); its ``log_softmax`` is vLLM's ``processed_logprobs``, the behaviour
policy μ that the DAPO surrogate's truncated importance correction divides by.

`sample_rows` draws one token per row by inversion of the CDF (one uniform number per row, where
vLLM's exponential race draws one per vocabulary entry: the same distribution, not the same
draws), each row's number from its *prompt's* generator: a prompt's samples come out the same
however the batch is split across ranks.
"""

from __future__ import annotations

import torch


def processed_logits(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """logits [B, V] float32 → temperature-scaled logits with the tokens outside top-k / top-p
    set to -inf. ``temperature`` > 0 (greedy decoding does not call this); ``top_k`` <= 0
    disables top-k; ``top_p`` = 1 disables top-p."""
    out = logits / temperature
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = out.topk(top_k, dim=-1).values[:, -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop the ascending prefix whose mass is <= 1 - top_p; the most likely token stays.
        drop = cumulative <= 1.0 - top_p
        drop[:, -1] = False
        out = out.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return out


def sample_rows(
    probs: torch.Tensor, row_prompt: torch.Tensor, generators: list[torch.Generator | None]
) -> torch.Tensor:
    """One token id per row of ``probs`` [B, V] by inverse-CDF sampling: the first token whose
    cumulative probability exceeds u ~ U(0, 1) (scaled by the row's total, which float32
    rounding leaves a little off 1); a zero-probability token is never chosen. Row ``b``'s u
    comes from ``generators[row_prompt[b]]`` (None: the global generator). Returns [B] int64."""
    uniform = torch.empty(probs.shape[0], 1)
    prompts = row_prompt.tolist()
    start = 0
    # Rows of one prompt are contiguous (the batch keeps prompt order): one draw per run.
    while start < len(prompts):
        end = start
        while end < len(prompts) and prompts[end] == prompts[start]:
            end += 1
        uniform[start:end].uniform_(generator=generators[prompts[start]])
        start = end
    cdf = probs.cumsum(dim=-1)
    # The generators are CPU ones (seeded per prompt); the draws follow the probabilities.
    token = torch.searchsorted(cdf, uniform.to(probs.device) * cdf[:, -1:], right=True)
    return token.squeeze(-1).clamp(max=probs.shape[-1] - 1)

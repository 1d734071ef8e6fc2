"""Supervised warm-up of a small Hugging Face causal LM on (prompt, response) pairs.

RL needs a policy that already solves *some* problems: a group of K rollouts where all are wrong
carries no signal. The CPU quickstart therefore starts from a randomly initialised tiny Qwen3,
teaches it the answer format (and a minority of the arithmetic) by a short SFT in plain PyTorch,
and hands the resulting checkpoint folder to the RL stack.

Each example is rendered exactly as the policy will see it: the prompt through the tokenizer's
chat template with the assistant header (what `rlrt_megatron.data.templating.render_chat`
produces), then the response tokens and the end-of-turn token. The loss is the mean next-token
cross-entropy over the response tokens and the end-of-turn token only.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Tokenizer files copied verbatim next to the trained weights, so the output folder has exactly
# the layout of the input one (vLLM, mbridge and transformers load it the same way).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass(frozen=True, kw_only=True)
class WarmupConfig:
    """Hyper-parameters of the SFT warm-up."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 32
    """Examples per step (drawn without replacement, reshuffled every epoch)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (tiny models train well with large rates)."""
    warmup_steps: int = 20
    """Linear warm-up steps before the cosine decay to ``min_lr_ratio · lr``."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    seed: int = 0
    """Seeds the example order and torch (dropout-free models then train deterministically)."""
    log_every: int = 0
    """Print the loss every this many steps (0: silent)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WarmupConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"WarmupConfig.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"WarmupConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(
                f"WarmupConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"
            )


@dataclass
class WarmupResult:
    """What `sft_warmup` did: the output folder, the loss of every step and the wall time."""

    out_dir: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def encode_example(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of one chat-templated example and the index where the response starts.

    ids = template(user: prompt) + assistant header + response + eos. The prompt and response
    are tokenized separately, as at rollout time (the engine samples tokens after the prompt ids).
    """
    if not prompt or not response:
        raise ValueError(f"prompt and response must be non-empty, got {prompt!r}, {response!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token (the end-of-turn token to train on)")
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    response_ids = tokenizer.encode(response, add_special_tokens=False)
    return prompt_ids + response_ids + [tokenizer.eos_token_id], len(prompt_ids)


def collate(
    examples: Sequence[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` [B, T].

    ``labels`` hold the input ids on response tokens and -100 elsewhere (prompt and padding);
    the model shifts them by one, so the response's first token is predicted from the header.
    """
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, start : len(ids)] = torch.tensor(ids[start:])
    return input_ids, attention_mask, labels


def _lr_factor(step: int, config: WarmupConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def sft_warmup(
    model_dir: str | Path,
    out_dir: str | Path,
    pairs: Sequence[tuple[str, str]],
    config: WarmupConfig | None = None,
) -> WarmupResult:
    """Fine-tune the checkpoint in ``model_dir`` on (prompt, response) pairs; save to ``out_dir``.

    The model is trained in float32 with AdamW on a linear-warm-up + cosine schedule; the loss is
    the token-mean cross-entropy over response (+ eos) tokens of each batch. ``out_dir`` receives
    ``save_pretrained``'s weights and config plus the input folder's tokenizer files, i.e. a
    complete checkpoint folder. Same inputs and seed give the same weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or WarmupConfig()
    if not pairs:
        raise ValueError("pairs must not be empty")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if model_dir.resolve() == out_dir.resolve():
        raise ValueError(f"out_dir must differ from model_dir ({model_dir})")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples = [encode_example(tokenizer, prompt, response) for prompt, response in pairs]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))

    result = WarmupResult(out_dir=out_dir)
    start = time.perf_counter()
    order: list[int] = []
    for step in range(config.steps):
        if len(order) < config.batch_size:  # a new epoch: reshuffle all examples
            order = list(range(len(examples)))
            rng.shuffle(order)
            order *= math.ceil(config.batch_size / len(order))
        batch, order = order[: config.batch_size], order[config.batch_size :]
        input_ids, attention_mask, labels = collate([examples[i] for i in batch], pad_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        if config.log_every and (step + 1) % config.log_every == 0:
            print(f"sft step {step + 1}/{config.steps} loss {loss.item():.4f}", flush=True)
    result.seconds = time.perf_counter() - start

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in _TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
    return result

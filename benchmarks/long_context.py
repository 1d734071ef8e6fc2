"""Peak memory per rank of one long sequence's update at CP=1 vs CP=2 (8k / 16k / 32k tokens).

A Qwen3-shaped model (hidden 256, 2 layers, 4 query / 2 KV heads of 64; float32) runs one GRPO
update (forward + backward + optimizer step) on one rollout of N tokens (64 prompt tokens, the
rest response) with packed micro-batches, in fresh processes per setting:

    CP=1   one process holds all N tokens' activations
    CP=2   two gloo processes, each with N/2 tokens (the load-balanced 2·CP chunk order); each
           layer all-gathers K and V over the CP group (rlrt_megatron.models.sdpa_attention)

Reported per setting: the peak memory of rank 0 above its level before the update (CUDA
allocator peak on GPUs, resident set sampled every ms on the CPU), the wall time, and the
CP=2/CP=1 memory ratio. What does not split over CP: the gathered K/V of the layer being
computed, the response logits (gathered so that every CP rank computes the same loss), weights,
gradients and optimizer state (set up before the measurement).

Usage:  python benchmarks/long_context.py [--tokens 8192 16384 32768] [--hidden 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT_TOKENS = 64


def _rank(rank: int, model_dir: str, tokens: int, cp: int) -> dict[str, float]:
    import torch
    from _actor_bench import PeakMemory

    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import ParallelConfig, destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    torch.manual_seed(0)
    actor = PolicyActor(
        ActorConfig(
            hf_path=model_dir,
            parallel=ParallelConfig(context_parallel=cp),
            optimizer=AdamWConfig(lr=1e-5),
            dtype=torch.float32,
            max_tokens=tokens,
            packing=True,
        )
    )
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 500, (PROMPT_TOKENS,), generator=g).tolist()
    response = torch.randint(0, 500, (tokens - PROMPT_TOKENS,), generator=g).tolist()
    old = torch.full((1, len(response)), -6.0)
    batch = TrainBatch(
        prompts=[prompt],
        responses=[response],
        old_logprobs=old,
        token_advantages=torch.ones(1, len(response)),
        pg_rows=torch.ones(1, dtype=torch.bool),
        distill_rows=torch.zeros(1, dtype=torch.bool),
    )
    update = UpdateConfig(method="grpo", mini_batches=1, max_tokens=tokens)
    actor.train_step(batch, update)  # warm-up: optimizer state, allocator caches
    with PeakMemory() as probe:
        actor.train_step(batch, update)
    destroy_parallel()
    return {"peak": probe.above_base, "seconds": probe.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    from _actor_bench import build_bench_model

    from rlrt_megatron.megatron.launcher import launch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_bench_model(tmp, max_positions=max(args.tokens), hidden=args.hidden)
        for tokens in args.tokens:
            result = {}
            for cp in (1, 2):
                out = launch(_rank, cp, str(model), tokens, cp, timeout_s=3600)
                result[cp] = out[0]
                print(
                    f"  {tokens:>6} tokens CP={cp}: peak {out[0]['peak'] / 2**20:8.1f} MiB, "
                    f"{out[0]['seconds']:.1f} s",
                    flush=True,
                )
            rows.append((tokens, result))
    print()
    print(f"update of one N-token sequence, hidden {args.hidden}, 2 layers, float32, packed")
    print(
        f"{'tokens':>8} | {'CP=1 peak MiB':>14} | {'CP=2 peak MiB/rank':>19} | {'ratio':>6} |"
        f" {'CP=1 s':>7} | {'CP=2 s':>7}"
    )
    for tokens, r in rows:
        print(
            f"{tokens:>8} | {r[1]['peak'] / 2**20:>14.1f} | {r[2]['peak'] / 2**20:>19.1f} | "
            f"{r[2]['peak'] / r[1]['peak']:>6.2f} | {r[1]['seconds']:>7.1f} | "
            f"{r[2]['seconds']:>7.1f}"
        )


if __name__ == "__main__":
    main()

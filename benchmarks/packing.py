"""Padded vs packed micro-batches on a long-tailed length mix: tokens processed and update speed.

RL response lengths are long-tailed: most rollouts stop early, some run to the length cap. This
benchmark draws such a mix (response lengths lognormal, 10% of them exactly at the cap; prompts
of 32-128 tokens), with a teacher view on the correct half of the rollouts as RLRT scores them
(the teacher prompt carries a peer response), and runs, in one process and side by side:

    padded   right-padded micro-batches cut by (sequences) × (longest), longest first
    packed   sequences back to back (THD), first-fit by real tokens (the default)

both with the same ``--max-tokens`` budget, on the same Qwen3-shaped model (hidden 256, 2
layers, float32). Reported: tokens the model processes (real + padding), the padding fraction,
micro-batches, and scoring (student + teacher views, forward only) and update (GRPO forward +
backward + step) real tokens per second, each the median of ``--repeats`` runs after a warm-up.

Usage:  python benchmarks/packing.py [--rollouts 64] [--cap 1024] [--max-tokens 8192]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def length_mix(n: int, cap: int, seed: int) -> tuple[list[int], list[int]]:
    """(prompt lengths, response lengths): responses lognormal with median cap/8, 10% at cap."""
    import random

    rng = random.Random(seed)
    responses = []
    for i in range(n):
        if i % 10 == 0:
            responses.append(cap)
        else:
            responses.append(max(1, min(cap, int(rng.lognormvariate(math.log(cap / 8), 0.9)))))
    prompts = [rng.randint(32, 128) for _ in range(n)]
    return prompts, responses


def _rank(rank: int, model_dir: str, args: dict) -> dict:
    import torch

    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.forward import SequenceLayout, plan_microbatches
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    prompt_lens, response_lens = length_mix(args["rollouts"], args["cap"], seed=3)

    def ids(n: int) -> list[int]:
        return torch.randint(0, 500, (n,), generator=g).tolist()

    prompts = [ids(n) for n in prompt_lens]
    responses = [ids(n) for n in response_lens]
    # The correct half gets a teacher view: its prompt carries a peer's response.
    teachers = [
        None if i % 2 else ids(prompt_lens[i] + response_lens[(i + 1) % len(responses)] + 16)
        for i in range(len(responses))
    ]
    b, t = len(responses), max(response_lens)
    mask = torch.arange(t)[None] < torch.tensor(response_lens)[:, None]
    batch = TrainBatch(
        prompts=prompts,
        responses=responses,
        old_logprobs=torch.where(mask, torch.full((b, t), -6.0), torch.zeros(b, t)),
        token_advantages=torch.where(mask, torch.randn(b, t, generator=g), torch.zeros(b, t)),
        pg_rows=torch.ones(b, dtype=torch.bool),
        distill_rows=torch.zeros(b, dtype=torch.bool),
    )
    real_update = sum(p + r for p, r in zip(prompt_lens, response_lens, strict=True))
    real_score = real_update + sum(
        len(c) + r for c, r in zip(teachers, response_lens, strict=True) if c is not None
    )
    results = {}
    for name, packing in (("padded", False), ("packed", True)):
        actor = PolicyActor(
            ActorConfig(
                hf_path=model_dir,
                optimizer=AdamWConfig(lr=1e-6),
                dtype=torch.float32,
                max_tokens=args["max_tokens"],
                packing=packing,
            )
        )
        layout = SequenceLayout.of(actor.model)
        rows = list(range(b))
        update_mbs = plan_microbatches(
            rows, prompts, responses, None, max_tokens=args["max_tokens"], layout=layout
        )
        score_mbs = plan_microbatches(
            rows, prompts, responses, teachers, max_tokens=args["max_tokens"], layout=layout
        )
        update = UpdateConfig(method="grpo", mini_batches=1, max_tokens=args["max_tokens"])
        score_s, update_s = [], []
        for repeat in range(args["repeats"] + 1):  # the first run warms up
            start = time.perf_counter()
            actor.score(prompts, responses, teacher_prompts=teachers)
            middle = time.perf_counter()
            actor.train_step(batch, update)
            end = time.perf_counter()
            if repeat:
                score_s.append(middle - start)
                update_s.append(end - middle)
        results[name] = {
            "update_tokens": sum(mb.inputs.num_tokens for mb in update_mbs),
            "score_tokens": sum(mb.inputs.num_tokens for mb in score_mbs),
            "update_microbatches": len(update_mbs),
            "score_microbatches": len(score_mbs),
            "score_s": statistics.median(score_s),
            "update_s": statistics.median(update_s),
        }
        del actor
    destroy_parallel()
    results["real_update"] = real_update
    results["real_score"] = real_score
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--cap", type=int, default=1024, help="response length cap")
    parser.add_argument("--max-tokens", type=int, default=8192, help="micro-batch budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    if args.max_tokens < 2 * (128 + args.cap + 16 + args.cap):
        parser.error("--max-tokens must hold the widest rollout with its teacher view")

    from _actor_bench import build_bench_model

    from rlrt_megatron.megatron.launcher import launch

    with tempfile.TemporaryDirectory() as tmp:
        model = build_bench_model(tmp, max_positions=4 * args.cap, hidden=args.hidden)
        out = launch(_rank, 1, str(model), vars(args), timeout_s=3600)[0]
    prompts, responses = length_mix(args.rollouts, args.cap, seed=3)
    print()
    print(
        f"{args.rollouts} rollouts, responses lognormal (median {args.cap // 8}, 10% at the cap "
        f"{args.cap}, mean {statistics.mean(responses):.0f}), prompts 32-128; micro-batch budget "
        f"{args.max_tokens}; hidden {args.hidden}, 2 layers, float32; median of {args.repeats}"
    )
    print(
        f"{'layout':>7} | {'update tokens':>13} | {'x real':>6} | {'padding':>7} | {'mbs':>4} | "
        f"{'update tok/s':>12} | {'score tokens':>12} | {'x real':>6} | {'score tok/s':>11}"
    )
    for name in ("padded", "packed"):
        r = out[name]
        blowup = r["update_tokens"] / out["real_update"]
        print(
            f"{name:>7} | {r['update_tokens']:>13} | {blowup:>6.3f}"
            f" | {1 - out['real_update'] / r['update_tokens']:>7.1%} | "
            f"{r['update_microbatches']:>4} | {out['real_update'] / r['update_s']:>12.0f} | "
            f"{r['score_tokens']:>12} | {r['score_tokens'] / out['real_score']:>6.3f} | "
            f"{out['real_score'] / r['score_s']:>11.0f}"
        )
    padded, packed = out["padded"], out["packed"]
    print(
        f"packed / padded: update {padded['update_s'] / packed['update_s']:.2f}x faster, "
        f"scoring {padded['score_s'] / packed['score_s']:.2f}x faster"
    )


if __name__ == "__main__":
    main()

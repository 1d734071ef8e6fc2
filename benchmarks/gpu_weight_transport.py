"""Weight transport on one GPU: CUDA IPC buckets vs. the host hop of the object-store path.

Two processes on one GPU stand for a colocated trainer rank (the sender, holding the exported
bf16 weights of a Qwen3-0.6B-shaped model on the GPU) and an engine worker (the receiver, holding
a GPU copy of every parameter to overwrite, as vLLM's ``load_weights`` does). One full transfer
of all weights is timed per setting, after a warm-up, median of ``--repeats``:

    host hop N MiB: the sender packs each bucket into pinned host memory (device → host), copies it
                    into shared memory (what ``ray.put`` does into the object store), the receiver
                    copies it to the GPU (host → device) and into its parameters; the path weights
                    take with ``weight_transport=object_store`` on GPUs, without Ray's own costs
    CUDA IPC N MiB: the sender packs each bucket in GPU memory and sends its IPC handle; the
                    receiver maps it and copies device → device into its parameters
                    (``weight_transport=cuda_ipc``, `rlrt_megatron.transport.cuda_ipc`)

Both wait for the receiver's answer before the next bucket, as the real transports do.

Usage:  python benchmarks/gpu_weight_transport.py [--bucket-mib 64 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.multiprocessing as mp

# Qwen3-0.6B: hidden 1024, 28 layers, 16 query / 8 KV heads of 128, FFN 3072, vocab 151,936.
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 1024, 28, 16, 8, 128, 3072, 151936


def qwen3_shapes() -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (p + "self_attn.q_norm.weight", (HEAD_DIM,)),
            (p + "self_attn.k_norm.weight", (HEAD_DIM,)),
            (p + "mlp.gate_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, FFN)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    return shapes + [("model.norm.weight", (HIDDEN,))]


def receiver(inbox, outbox) -> None:
    """The engine worker: parameters on the GPU; load each bucket into them, answer its size."""
    from rlrt_megatron.transport.buckets import unpack_flat
    from rlrt_megatron.transport.cuda_ipc import SharedBucket, open_bucket

    torch.cuda.set_device(0)
    params = {n: torch.empty(s, dtype=torch.bfloat16, device="cuda") for n, s in qwen3_shapes()}
    outbox.put("ready")
    while (message := inbox.get()) is not None:
        if isinstance(message, SharedBucket):
            flat, metas = open_bucket(message), message.tensors
        else:  # (shared host buffer, metas): the host hop
            host, metas = message
            flat = host.to("cuda", non_blocking=False)
        for name, tensor in unpack_flat(flat, metas):
            params[name].copy_(tensor)
        torch.cuda.synchronize()
        del flat
        outbox.put(len(metas))


def one_transfer(weights, bucket_bytes: int, mode: str, inbox, outbox) -> float:
    from rlrt_megatron.transport.buckets import pack_flat_buckets
    from rlrt_megatron.transport.cuda_ipc import share_bucket

    torch.cuda.synchronize()
    start = time.perf_counter()
    device = "cuda" if mode == "ipc" else "cpu"
    for flat, metas in pack_flat_buckets(weights, bucket_bytes, device=device):
        if mode == "ipc":
            torch.cuda.synchronize()
            inbox.put(share_bucket(flat, metas))
        else:
            shared = torch.empty_like(flat).share_memory_()  # the object store's copy
            shared.copy_(flat)
            inbox.put((shared, metas))
        assert outbox.get() == len(metas)
        del flat
    torch.cuda.ipc_collect()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bucket-mib", type=float, nargs="+", default=[64, 512])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")

    g = torch.Generator(device="cuda").manual_seed(0)
    weights = [
        (n, torch.randn(s, generator=g, device="cuda", dtype=torch.bfloat16))
        for n, s in qwen3_shapes()
    ]
    nbytes = sum(t.numel() * t.element_size() for _, t in weights)
    print(
        f"{torch.cuda.get_device_name()}: {sum(t.numel() for _, t in weights) / 1e6:.0f}M"
        f" parameters, {len(weights)} tensors, {nbytes / 2**30:.2f} GiB bf16"
    )
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=receiver, args=(inbox, outbox))
    proc.start()
    assert outbox.get(timeout=300) == "ready"
    try:
        print(f"\n{'setting':<20} {'median s':>9} {'min s':>7} {'GiB/s':>7}")
        medians = {}
        for mode, label in (("host", "host hop"), ("ipc", "CUDA IPC")):
            for mib in args.bucket_mib:
                times = [
                    one_transfer(weights, int(mib * 2**20), mode, inbox, outbox)
                    for _ in range(args.repeats + 1)
                ][1:]
                median = statistics.median(times)
                medians[(mode, mib)] = median
                print(
                    f"{label + f' {mib:g} MiB':<20} {median:>9.3f} {min(times):>7.3f}"
                    f" {nbytes / 2**30 / median:>7.1f}"
                )
        for mib in args.bucket_mib:
            ratio = medians[("host", mib)] / medians[("ipc", mib)]
            print(f"CUDA IPC is {ratio:.1f}x faster than the host hop at {mib:g} MiB buckets")
    finally:
        inbox.put(None)
        proc.join(timeout=60)


if __name__ == "__main__":
    main()

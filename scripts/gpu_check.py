"""Throughput and MFU of megatron-core on one GPU: a randomly initialised Qwen3-0.6B-shaped model.

Run through ``scripts/gpu_check.sh`` (which also runs the ``gpu``-marked tests). Measures, in
bf16 (and FP8 if Transformer Engine is importable):

* forward tokens/s (no grad, logits computed),
* forward+backward tokens/s (loss = mean token cross-entropy, computed by megatron's fused
  vocab-parallel cross entropy, so no fp32 [tokens, vocab] tensor is materialised),

and MFU = achieved model FLOP/s / peak. **FLOPs per token** (matmuls only; norms, softmax,
RoPE and the embedding lookup are ignored, as in Megatron/PaLM accounting):

    forward  = 2 * N_matmul + 2 * L * S * n_q * d_head      (causal attention: QK^T and AV,
                                                              each 2*S*n_q*d_head, halved)
    N_matmul = L * (h*(n_q + 2*n_kv)*d_head + n_q*d_head*h + 3*h*ffn) + h*V   (QKV, out, SwiGLU,
                                                                               LM head)
    forward+backward = 3 * forward

MFU counts model FLOPs only (``--recompute full`` replays each layer's forward, work that MFU does
not credit, so it shows as lower MFU; hardware FLOPs utilisation would count it).

Peak: H100 SXM dense bf16 989 TFLOP/s (``--peak-tflops`` to change; FP8 dense peak is 2x, the
FP8 MFU below is still reported against the bf16 peak so the two rows compare directly).

``--smoke`` shrinks everything (2 layers, hidden 128, vocab 1024, 64 tokens) and runs on the CPU
when CUDA is absent (gloo + the CPU compat layer), to exercise the code without a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

H100_BF16_DENSE_TFLOPS = 989.0


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    def matmul_params(self) -> int:
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        attention += self.heads * self.head_dim * self.hidden
        mlp = 3 * self.hidden * self.ffn
        return self.layers * (attention + mlp) + self.hidden * self.vocab

    def forward_flops_per_token(self, seq: int) -> float:
        causal_attention = 2 * self.layers * seq * self.heads * self.head_dim
        return 2.0 * self.matmul_params() + causal_attention


QWEN3_0_6B = Shape(
    layers=28, hidden=1024, heads=16, kv_heads=8, head_dim=128, ffn=3072, vocab=151_936
)
SMOKE = Shape(layers=2, hidden=128, heads=4, kv_heads=2, head_dim=32, ffn=256, vocab=1024)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, runs on CPU too")
    parser.add_argument("--layers", type=int, help="override the number of layers")
    parser.add_argument("--batch", type=int, help="sequences per step (default 8; smoke 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048; smoke 64)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--skip-fp8", action="store_true")
    parser.add_argument(
        "--recompute",
        default="none",
        help="comma-separated activation recomputation modes to measure in bf16, side by side"
        " (none, selective, full; full recomputes one layer per block)",
    )
    parser.add_argument(
        "--attention",
        default="local",
        help="comma-separated core attentions to measure without Transformer Engine: local"
        " (megatron's unfused DotProductAttention), sdpa (PyTorch fused kernels); each is"
        " combined with every --recompute mode",
    )
    return parser.parse_args(argv)


def _init_single_rank() -> None:
    from rlrt_megatron.megatron.launcher import free_port
    from rlrt_megatron.megatron.parallel import ParallelConfig, initialize_parallel

    for name, value in dict(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    ).items():
        os.environ.setdefault(name, value)
    initialize_parallel(ParallelConfig(seed=1234))


def build_model(shape: Shape, seq: int, overrides: dict, use_te: bool, attention: str = "local"):
    from megatron.core import tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        num_layers=shape.layers,
        hidden_size=shape.hidden,
        num_attention_heads=shape.heads,
        num_query_groups=shape.kv_heads,
        kv_channels=shape.head_dim,
        ffn_hidden_size=shape.ffn,
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        **overrides,
    )
    spec = (
        get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
        if use_te
        else get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    )
    if not use_te and attention == "sdpa":
        from rlrt_megatron.models.sdpa_attention import with_sdpa_core_attention

        spec = with_sdpa_core_attention(spec)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=shape.vocab,
        max_sequence_length=max(seq, 4096),
        share_embeddings_and_output_weights=True,  # Qwen3-0.6B ties them
        position_embedding_type="rope",
        rotary_base=1_000_000,
    )
    if torch.cuda.is_available():
        model = model.cuda()
    return model


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(model, shape: Shape, batch: int, seq: int, warmup: int, iters: int) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, shape.vocab, (batch, seq), generator=generator).to(device)
    labels = torch.roll(tokens, -1, dims=1)
    positions = torch.arange(seq, device=device).expand(batch, -1)
    results = {}

    model.eval()
    with torch.no_grad():
        for _ in range(warmup):
            model(tokens, positions, None)
        _sync()
        start = time.perf_counter()
        for _ in range(iters):
            logits = model(tokens, positions, None)
        _sync()
        results["forward_s"] = (time.perf_counter() - start) / iters
    assert torch.isfinite(logits.float()).all(), "non-finite logits"
    del logits

    model.train()
    for step in range(warmup + iters):
        if step == warmup:
            _sync()
            start = time.perf_counter()
        loss = model(tokens, positions, None, labels=labels).float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
    _sync()
    results["train_s"] = (time.perf_counter() - start) / iters
    results["loss"] = loss.item()
    if torch.cuda.is_available():
        results["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return results


def report(label: str, shape: Shape, batch: int, seq: int, timings: dict, peak: float | None):
    tokens = batch * seq
    forward_flops = shape.forward_flops_per_token(seq)
    lines = []
    for name, seconds, flops in (
        ("forward", timings["forward_s"], forward_flops),
        ("forward+backward", timings["train_s"], 3 * forward_flops),
    ):
        tok_s = tokens / seconds
        achieved = tok_s * flops / 1e12
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a (no peak for this device)"
        lines.append(
            f"  {label:<20} {name:<17} {tok_s:>12,.0f} tokens/s  {achieved:8.1f} TFLOP/s  MFU {mfu}"
        )
    print("\n".join(lines))
    extra = f", peak memory {timings['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in timings else ""
    print(f"  {label:<20} loss {timings['loss']:.3f}, batch {batch} x {seq}{extra}")


def run_with_oom_retry(
    shape, batch, seq, overrides, use_te, args, attention="local"
) -> tuple[int, dict]:
    """Measure; on CUDA OOM halve the batch (twice at most) instead of failing the check."""
    for _ in range(3):
        model = build_model(shape, seq, overrides, use_te, attention)
        try:
            return batch, measure(model, shape, batch, seq, args.warmup, args.iters)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            print(f"  out of memory at batch {batch}: retrying with {batch // 2}")
            batch //= 2
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise RuntimeError("out of memory even after halving the batch twice")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("CUDA is not available: this check needs a GPU (use --smoke for the CPU smoke run)")
        return 2
    shape = SMOKE if args.smoke else QWEN3_0_6B
    if args.layers:
        shape = Shape(**{**shape.__dict__, "layers": args.layers})
    batch = args.batch or (2 if args.smoke else 8)
    seq = args.seq_len or (64 if args.smoke else 2048)

    from rlrt_megatron.megatron.precision import (
        PrecisionConfig,
        PrecisionUnavailableError,
        check_precision_runtime,
        check_sequence_length,
        transformer_engine_version,
    )

    te_version = transformer_engine_version()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    peak = args.peak_tflops if cuda else None
    print(
        f"device {device}; torch {torch.__version__}; Transformer Engine {te_version or 'absent'}"
    )
    print(f"model: {shape}; batch {batch} x seq {seq}; warmup {args.warmup}, iters {args.iters}")
    print(
        f"FLOPs/token forward {shape.forward_flops_per_token(seq) / 1e9:.2f} GFLOP "
        f"(matmul params {shape.matmul_params() / 1e6:.1f} M); peak "
        f"{peak if peak else 'n/a'} TFLOP/s (bf16 dense)"
    )
    _init_single_rank()

    from rlrt_megatron.megatron.actor import recompute_overrides

    bf16 = PrecisionConfig(dtype="bf16" if cuda else "fp32")
    base_label = "bf16" if cuda else "fp32"
    used_batch = batch
    attentions = ["te"] if te_version else [a.strip() for a in args.attention.split(",")]
    for attention in attentions:
        for mode in [m.strip() for m in args.recompute.split(",") if m.strip()]:
            # Same batch for every row so the rows compare (an OOM halves it for the rest);
            # peak memory shows what SDPA and recomputation save.
            overrides = {**bf16.transformer_config_overrides(), **recompute_overrides(mode)}
            label = f"{base_label}/{attention}" + ("" if mode == "none" else f"+{mode}")
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            used_batch, timings = run_with_oom_retry(
                shape, used_batch, seq, overrides, te_version is not None, args, attention
            )
            report(label, shape, used_batch, seq, timings, peak)

    if args.skip_fp8:
        print("  fp8    skipped (--skip-fp8)")
        return 0
    fp8 = PrecisionConfig(fp8_recipe="delayed", fp8_amax_history_len=16)
    try:
        check_precision_runtime(fp8)
        check_sequence_length(fp8, seq, tensor_parallel=1)
    except (PrecisionUnavailableError, ValueError) as why:
        print(f"  fp8    not run: {why}")
        return 0
    used_batch, timings = run_with_oom_retry(
        shape, used_batch, seq, fp8.transformer_config_overrides(), True, args
    )
    report("fp8", shape, used_batch, seq, timings, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Actor variants that must change speed or memory, never the numbers.

Two gloo ranks (TP=2) score the same rollouts and run the same RLRT update with
- core attention: megatron's unfused ``DotProductAttention`` ("local", right-padded micro-batches)
  vs PyTorch SDPA ("sdpa", the default without Transformer Engine) on packed micro-batches (the
  default) and on padded ones;
- activation recomputation (`ActorConfig.recompute`): none / selective / full (blocks of one and
  of two layers), with either attention;
- RMSNorm, SwiGLU and RoPE compiled by ``torch.compile`` (`ActorConfig.compile_elementwise`),
  alone and under full recomputation.
The scores, the updated parameters and the step's metrics must agree with the local, no-recompute
run up to reduction-order noise (float32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _dist import run_distributed

pytestmark = pytest.mark.distributed

# name: (attention, recompute, recompute_num_layers, packing, compile_elementwise)
VARIANTS = {
    "local": ("local", "none", 1, False, False),
    "sdpa": ("sdpa", "none", 1, True, False),
    "sdpa-padded": ("sdpa", "none", 1, False, False),
    "local-selective": ("local", "selective", 1, False, False),
    "sdpa-selective": ("sdpa", "selective", 1, True, False),
    "sdpa-full1": ("sdpa", "full", 1, True, False),
    "sdpa-full2": ("sdpa", "full", 2, True, False),
    "sdpa-compiled": ("sdpa", "none", 1, True, True),
    "sdpa-compiled-full1": ("sdpa", "full", 1, True, True),
}
REFERENCE = "local"
FUSED_CLASSES = {"CompiledRMSNorm", "CompiledSwiGLUMLP"}


def _worker(rank: int, out_dir: str, hf_path: str) -> None:
    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import ParallelConfig, destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig
    from rlrt_megatron.models.compiled_rope import compiled_rope_enabled

    out = Path(out_dir)
    batch = torch.load(out / "batch.pt")
    for name, (attention, recompute, layers, packing, compiled) in VARIANTS.items():
        actor = PolicyActor(
            ActorConfig(
                hf_path=hf_path,
                parallel=ParallelConfig(tensor_parallel=2),
                optimizer=AdamWConfig(lr=1e-2, eps=1e-3, clip_grad=1.0),
                dtype=torch.float32,
                recompute=recompute,
                recompute_num_layers=layers,
                attention=attention,
                packing=packing,
                compile_elementwise=compiled,
            )
        )
        fused = sorted({type(m).__name__ for m in actor.model.chunks[0].modules()} & FUSED_CLASSES)
        core = {
            type(m).__name__
            for n, m in actor.model.chunks[0].named_modules()
            if n.endswith("self_attention.core_attention")
        }
        granularity = actor.model.config.recompute_granularity
        rope = compiled_rope_enabled(actor.model.config)
        scores = actor.score(batch["prompts"], batch["responses"])
        metrics = actor.train_step(
            TrainBatch(**batch), UpdateConfig(method="rlrt", mini_batches=1, max_tokens=64)
        )
        params = {n: t.clone() for n, t in actor.export_hf_weights()}
        if rank == 0:
            torch.save(
                {
                    "params": params,
                    "metrics": metrics,
                    "granularity": granularity,
                    "core": core,
                    "fused": fused,
                    "compiled_rope": rope,
                    "logprobs": scores.student_log_prob,
                    "retains_host_memory": actor.retains_host_memory,
                },
                out / f"{name}.pt",
            )
        del actor
        destroy_parallel(keep_process_group=True)
    destroy_parallel()


def _batch() -> dict:
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (4, 3, 5, 2)]
    responses = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (6, 8, 3, 5)]
    t = max(len(r) for r in responses)
    mask = torch.arange(t)[None] < torch.tensor([len(r) for r in responses])[:, None]
    old = torch.where(mask, -3.0 + 0.1 * torch.randn(4, t, generator=g), torch.zeros(4, t))
    advantages = torch.tensor([1.2, -0.8, 0.6, -1.0])[:, None] * mask
    return dict(
        prompts=prompts,
        responses=responses,
        old_logprobs=old,
        rollout_logprobs=old,
        token_advantages=advantages,
        pg_rows=torch.ones(4, dtype=torch.bool),
        distill_rows=torch.zeros(4, dtype=torch.bool),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen3_dir) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("variants")
    torch.save(_batch(), out / "batch.pt")
    run_distributed(_worker, 2, str(out), str(tiny_qwen3_dir), timeout_s=600)
    return {name: torch.load(out / f"{name}.pt") for name in VARIANTS}


def test_variants_reach_megatron(runs):
    for name, (attention, recompute, _, _, compiled) in VARIANTS.items():
        expected = "SDPADotProductAttention" if attention == "sdpa" else "DotProductAttention"
        assert runs[name]["core"] == {expected}, name
        assert runs[name]["fused"] == (sorted(FUSED_CLASSES) if compiled else []), name
        assert runs[name]["compiled_rope"] == compiled, name
        assert runs[name]["granularity"] == (None if recompute == "none" else recompute), name
        # host_allocator "auto" on a CPU rank: glibc keeps freed memory (host_allocator.py)
        assert runs[name]["retains_host_memory"] is True, name


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != REFERENCE])
def test_variant_gives_the_same_scores_and_update(runs, name):
    reference, ours = runs[REFERENCE], runs[name]
    torch.testing.assert_close(ours["logprobs"], reference["logprobs"], atol=1e-5, rtol=0)
    moved = max(
        (reference["params"][n] - ours["params"][n]).abs().max().item() for n in reference["params"]
    )
    assert moved < 1e-6, f"{name}: parameters differ by {moved:.2e} from the reference"
    for key in ("loss", "grad_norm"):
        assert ours["metrics"][0][key] == pytest.approx(reference["metrics"][0][key], rel=1e-5)


def test_bad_settings_name_the_field():
    from rlrt_megatron.megatron.actor import ActorConfig

    with pytest.raises(ValueError, match="recompute must be one of"):
        ActorConfig(hf_path="x", recompute="everything")
    with pytest.raises(ValueError, match="recompute_num_layers must be >= 1"):
        ActorConfig(hf_path="x", recompute="full", recompute_num_layers=0)
    with pytest.raises(ValueError, match="attention must be one of"):
        ActorConfig(hf_path="x", attention="flash")
    with pytest.raises(ValueError, match="host_allocator must be one of"):
        ActorConfig(hf_path="x", host_allocator="tcmalloc")


def test_te_attention_without_transformer_engine_says_so():
    from rlrt_megatron.models.qwen3_bridge import resolve_attention, transformer_engine_available

    if transformer_engine_available():
        pytest.skip("Transformer Engine is importable here")
    assert resolve_attention("auto") == "sdpa"
    with pytest.raises(ValueError, match="needs Transformer Engine"):
        resolve_attention("te")

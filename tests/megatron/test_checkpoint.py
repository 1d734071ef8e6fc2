"""Distributed checkpoints across layouts, HF export, atomic commits (gloo, real megatron-core).

Two spawned runs share the work:

* **2 ranks**: at DP=2 (distributed optimizer) take one AdamW step, save (step 1), take a second
  step (the reference continuation). Then, in the same processes, re-initialize at TP=2 and at
  PP=2, load that DP=2 checkpoint (a DP→TP and DP→PP reshard), take the same second step; save
  at TP=2 too, and export HF folders.
* **1 rank**: load the DP=2 and the TP=2 checkpoints at TP=PP=DP=1, take the second step,
  re-save; simulate interrupted saves.

The tests compare what they wrote: parameters right after loading are bit-identical to the saved
ones; the re-saved single-rank checkpoint holds exactly the same global tensors (model and
optimizer state) as the DP=2 one; the second step after loading matches the uninterrupted run.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _dist import run_distributed

pytestmark = pytest.mark.distributed

BATCH, SEQ = 2, 16
ADAMW = dict(lr=1e-2, eps=1e-3, weight_decay=0.1, clip_grad=1.0)
STEP_ATOL = 1e-6  # one Adam step after loading: only the gradient reduction order differs


# ---------------------------------------------------------------------------------------------
# Worker code (runs in the spawned ranks).
# ---------------------------------------------------------------------------------------------


def _loss(vocab_size: int, tokens: torch.Tensor, logits: torch.Tensor):
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel

    shard = logits.shape[-1]
    first = mpu.get_tensor_model_parallel_rank() * shard
    padded = torch.arange(first, first + shard) >= vocab_size
    shifted = logits[:, :-1].float().masked_fill(padded, torch.finfo(torch.float32).min)
    loss = tensor_parallel.vocab_parallel_cross_entropy(shifted, tokens[:, 1:]).mean()
    return loss, {"loss": loss.detach()}


def _train_step(model, optimizer, scheduler, tokens: torch.Tensor) -> None:
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    local = tokens.chunk(mpu.get_data_parallel_world_size())[mpu.get_data_parallel_rank()]
    position_ids = torch.arange(local.shape[1]).expand_as(local)

    def forward_step(data_iterator, chunk):
        batch = next(data_iterator)
        return chunk(batch, position_ids, None), partial(_loss, model.vocab_size, batch)

    optimizer.zero_grad()
    for chunk in model.chunks:
        chunk.zero_grad_buffer()
    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([local]),
        model=model.chunks,
        num_microbatches=1,
        seq_length=local.shape[1],
        micro_batch_size=local.shape[0],
        forward_only=False,
    )
    ok, _, _ = optimizer.step()
    assert ok, "optimizer step skipped"
    scheduler.step(1)
    scheduler.end_update()  # one RL update per call: the schedule counts RL steps


def _build(
    ckpt_dir: str,
    tp: int,
    pp: int,
    *,
    dtype: torch.dtype = torch.float32,
    distributed_optimizer: bool = True,
):
    from megatron.core.distributed import DistributedDataParallelConfig

    from rlrt_megatron.megatron.optimizer import AdamWConfig, build_optimizer
    from rlrt_megatron.megatron.parallel import ParallelConfig, initialize_parallel
    from rlrt_megatron.models.qwen3_megatron import build_qwen3_model

    initialize_parallel(ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp))
    model = build_qwen3_model(
        ckpt_dir,
        dtype=dtype,
        wrap_with_ddp=True,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer
        ),
    )
    optimizer, scheduler = build_optimizer(
        model,
        AdamWConfig(
            **ADAMW,
            warmup_steps=2,
            decay_style="linear",
            decay_steps=10,
            use_distributed_optimizer=distributed_optimizer,
        ),
    )
    return model, optimizer, scheduler


def _weights(model) -> dict[str, torch.Tensor]:
    from rlrt_megatron.models.qwen3_megatron import export_hf_weights

    return {name: t.clone() for name, t in export_hf_weights(model)}


def _draw_random() -> list[torch.Tensor]:
    """One draw from each generator a trainer uses (Python, NumPy, torch, megatron's TP stream)."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    with tensor_parallel.get_cuda_rng_tracker().fork():
        tracked = torch.rand(3)
    return [
        torch.tensor([random.random()]),
        torch.tensor(np.random.rand(2)),
        torch.rand(3),
        tracked,
    ]


def _two_rank_worker(rank: int, out_dir: str, ckpt_dir: str) -> None:
    import torch.distributed as dist

    from rlrt_megatron.megatron.checkpoint import (
        capture_rng_state,
        export_hf_folder,
        find_latest,
        load_checkpoint,
        restore_rank_rng,
        restore_rng_state,
        save_checkpoint,
    )
    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.trainer.stack import load_on_rank, save_on_rank

    out = Path(out_dir)
    tokens = torch.load(out / "tokens.pt")

    # DP=2: step 1, save, step 2 (the reference continuation).
    model, optimizer, scheduler = _build(ckpt_dir, 1, 1)
    export_hf_folder(model, out / "hf_initial")  # untouched weights: must equal the source
    _train_step(model, optimizer, scheduler, tokens[0])
    save_checkpoint(
        out / "run_dp2",
        1,
        model,
        optimizer,
        scheduler,
        extra={"step": 1, "lambda_step": 3, "data_position": 17},
        rank_extra={"rank": rank, "rng": capture_rng_state()},
    )
    draws_after_save = _draw_random()
    saved = _weights(model)
    _train_step(model, optimizer, scheduler, tokens[1])
    if rank == 0:
        torch.save({"saved": saved, "continued": _weights(model)}, out / "dp2.pt")
    else:
        _weights(model)  # collective: every rank drains the exporter
    destroy_parallel(keep_process_group=True)

    # TP=2 and PP=2: load the DP=2 checkpoint, check, continue; TP=2 also saves and exports.
    for tag, (tp, pp) in {"tp2": (2, 1), "pp2": (1, 2)}.items():
        model, optimizer, scheduler = _build(ckpt_dir, tp, pp)
        loaded = load_checkpoint(find_latest(out / "run_dp2"), model, optimizer, scheduler)
        after_load = _weights(model)
        lr_after_load = optimizer.param_groups[0]["lr"]
        # The trainer restores the ranks' RNG only at the layout it was saved at (DP=2 here).
        restored_across_layouts = restore_rank_rng(loaded)
        restore_rng_state(loaded.rank_extra["rng"])
        same_draws = all(
            torch.equal(a, b) for a, b in zip(_draw_random(), draws_after_save, strict=True)
        )
        if tag == "tp2":  # the trainer's own save: each rank's RNG state goes in too
            actor = SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler)
            save_on_rank(actor, str(out / "run_tp2"), 1, loaded.extra, None)
            draws_after_tp2_save = _draw_random()
        _train_step(model, optimizer, scheduler, tokens[1])
        continued = _weights(model)
        scheduler_steps = scheduler.num_steps  # before the reload below
        if tag == "tp2":
            export_hf_folder(model, out / "hf_tp2_step2")
            export_hf_folder(model, out / "hf_tp2_step2_sharded", max_shard_bytes=40_000)
        trainer_rng_resumed = None
        if tag == "tp2":  # same layout: the trainer's load puts each rank's RNG state back
            load_on_rank(actor, str(find_latest(out / "run_tp2")))
            trainer_rng_resumed = all(
                torch.equal(a, b) for a, b in zip(_draw_random(), draws_after_tp2_save, strict=True)
            )
        if rank == 0:
            torch.save(
                {
                    "after_load": after_load,
                    "continued": continued,
                    "extra": loaded.extra,
                    "rank_extra": loaded.rank_extra,
                    "lr_after_load": lr_after_load,
                    "same_random_draws": same_draws,
                    "restored_across_layouts": restored_across_layouts,
                    "trainer_rng_resumed": trainer_rng_resumed,
                    "scheduler_steps": scheduler_steps,
                },
                out / f"{tag}.pt",
            )
        destroy_parallel(keep_process_group=True)
    dist.barrier()
    destroy_parallel()


def _one_rank_worker(rank: int, out_dir: str, ckpt_dir: str) -> None:
    from rlrt_megatron.megatron.checkpoint import (
        export_hf_folder,
        find_latest,
        load_checkpoint,
        save_checkpoint,
    )
    from rlrt_megatron.megatron.parallel import destroy_parallel

    out = Path(out_dir)
    tokens = torch.load(out / "tokens.pt")
    results = {}
    for source in ("run_dp2", "run_tp2"):
        model, optimizer, scheduler = _build(ckpt_dir, 1, 1)
        loaded = load_checkpoint(find_latest(out / source), model, optimizer, scheduler)
        after_load = _weights(model)
        save_checkpoint(out / f"resaved_{source}", 1, model, optimizer, scheduler)
        _train_step(model, optimizer, scheduler, tokens[1])
        results[source] = {
            "after_load": after_load,
            "continued": _weights(model),
            "extra": loaded.extra,
            "rank_extra": loaded.rank_extra,
        }
        if source == "run_dp2":
            export_hf_folder(model, out / "hf_dp1_step2", dtype=torch.bfloat16)
            _interrupted_saves(out / "run_interrupted", model, optimizer, scheduler, results)
        destroy_parallel(keep_process_group=True)
    # Weights only (no optimizer) from a checkpoint that has optimizer state.
    model, _, _ = _build(ckpt_dir, 1, 1)
    loaded = load_checkpoint(find_latest(out / "run_dp2"), model)
    results["weights_only"] = {"step": loaded.step, "weights": _weights(model)}
    destroy_parallel(keep_process_group=True)
    results["variants"] = _resume_variants(out, ckpt_dir, tokens)
    destroy_parallel()
    torch.save(results, out / "dp1.pt")


# Other optimizer set-ups, same layout: (dtype, distributed optimizer). A bf16 model with the
# non-distributed optimizer is left out: megatron's Float16OptimizerWithFloat16Params checks
# for `torch.cuda.*Tensor` parameter types, which the CPU compat layer does not patch.
VARIANTS = {
    "fp32-plain-optimizer": (torch.float32, False),
    "bf16-distributed": (torch.bfloat16, True),
}


def _resume_variants(out: Path, ckpt_dir: str, tokens: torch.Tensor) -> dict[str, dict]:
    """Per variant: weights after (step, save, step) uninterrupted and after resuming."""
    from rlrt_megatron.megatron.checkpoint import load_checkpoint, save_checkpoint
    from rlrt_megatron.megatron.parallel import destroy_parallel

    results = {}
    for name, (dtype, distributed) in VARIANTS.items():
        model, optimizer, scheduler = _build(
            ckpt_dir, 1, 1, dtype=dtype, distributed_optimizer=distributed
        )
        _train_step(model, optimizer, scheduler, tokens[0])
        path = save_checkpoint(out / f"run_{name}", 1, model, optimizer, scheduler)
        _train_step(model, optimizer, scheduler, tokens[1])
        uninterrupted = _weights(model)
        destroy_parallel(keep_process_group=True)
        model, optimizer, scheduler = _build(
            ckpt_dir, 1, 1, dtype=dtype, distributed_optimizer=distributed
        )
        load_checkpoint(path, model, optimizer, scheduler)
        _train_step(model, optimizer, scheduler, tokens[1])
        results[name] = {"uninterrupted": uninterrupted, "resumed": _weights(model)}
        destroy_parallel(keep_process_group=True)
    return results


class _Crash(RuntimeError):
    pass


def _interrupted_saves(run_dir: Path, model, optimizer, scheduler, results: dict) -> None:
    """Step 1 saved; saving step 2 crashes after the shards are written; then step 2 is saved
    again successfully over the leftovers."""
    from rlrt_megatron.megatron.checkpoint import find_latest, save_checkpoint

    def crash(staging: Path) -> None:
        raise _Crash(f"simulated crash while saving into {staging}")

    save_checkpoint(run_dir, 1, model, optimizer, scheduler, extra={"step": 1})
    try:
        save_checkpoint(
            run_dir, 2, model, optimizer, scheduler, extra={"step": 2}, _before_commit=crash
        )
    except _Crash:
        pass
    else:
        raise AssertionError("the simulated crash did not propagate")
    results["after_crash"] = {
        "latest_file": (run_dir / "latest").read_text().strip(),
        "find_latest": find_latest(run_dir).name,
        "entries": sorted(p.name for p in run_dir.iterdir()),
    }
    save_checkpoint(run_dir, 2, model, optimizer, scheduler, extra={"step": 2}, keep_last=1)
    results["after_retry"] = {
        "find_latest": find_latest(run_dir).name,
        "entries": sorted(p.name for p in run_dir.iterdir()),
    }


# ---------------------------------------------------------------------------------------------
# Fixtures and tests.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen3_untied_dir) -> Path:
    out = tmp_path_factory.mktemp("checkpoint")
    generator = torch.Generator().manual_seed(11)
    torch.save(torch.randint(0, 500, (2, BATCH, SEQ), generator=generator), out / "tokens.pt")
    run_distributed(_two_rank_worker, 2, str(out), str(tiny_qwen3_untied_dir), timeout_s=600)
    run_distributed(_one_rank_worker, 1, str(out), str(tiny_qwen3_untied_dir), timeout_s=600)
    return out


def _assert_equal(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(ref)
    for name in ref:
        assert torch.equal(ours[name], ref[name]), name


def _assert_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], atol: float):
    assert sorted(ours) == sorted(ref)
    worst = max((ours[n] - ref[n]).abs().max().item() for n in ref)
    assert worst <= atol, worst


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_dp2_checkpoint_loads_at_other_model_parallel_layouts(runs, layout):
    dp2 = torch.load(runs / "dp2.pt")
    result = torch.load(runs / f"{layout}.pt", weights_only=False)
    _assert_equal(result["after_load"], dp2["saved"])
    # Adam moments, step count and scheduler restored: the next step matches the original run.
    _assert_close(result["continued"], dp2["continued"], STEP_ATOL)
    assert result["extra"] == {"step": 1, "lambda_step": 3, "data_position": 17}
    assert result["rank_extra"]["rank"] == 0  # same world size (2): per-rank state restored
    assert result["same_random_draws"]  # RNG streams resume where the save left them
    assert result["restored_across_layouts"] is False  # the trainer keeps fresh seeds then
    # The trainer's save_on_rank / load_on_rank at one layout (TP=2): every rank's Python,
    # NumPy, torch and megatron-tracker draws after the load equal those after the save.
    assert result["trainer_rng_resumed"] is (True if layout == "tp2" else None)
    assert result["scheduler_steps"] == 2  # restored at 1, then one step
    assert result["lr_after_load"] == pytest.approx(ADAMW["lr"] / 2)  # warmup 2 steps, step 1


@pytest.mark.parametrize("source", ["run_dp2", "run_tp2"])
def test_checkpoint_loads_on_one_rank_and_continues(runs, source):
    dp2 = torch.load(runs / "dp2.pt")
    result = torch.load(runs / "dp1.pt", weights_only=False)[source]
    _assert_equal(result["after_load"], dp2["saved"])
    _assert_close(result["continued"], dp2["continued"], STEP_ATOL)
    assert result["extra"]["data_position"] == 17
    assert result["rank_extra"] is None  # saved at world size 2, loaded at 1


def _global_tensors(checkpoint_dir: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """All global tensors of a torch_dist checkpoint, read without process groups."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = scratch / f"{checkpoint_dir.parent.name}.pt"
    dcp_to_torch_save(str(checkpoint_dir), str(target))
    state = torch.load(target, weights_only=False)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("source", ["run_dp2", "run_tp2"])
def test_resaved_checkpoint_holds_identical_model_and_optimizer_state(
    runs, source, tmp_path, tiny_qwen3_untied_dir
):
    """Loaded at TP=PP=DP=1 and saved again: every global tensor (weights, fp32 main weights,
    Adam moments) is bit-identical. The vocab-padded tensors (embedding, output layer and their
    optimizer state) have a TP-dependent number of padding rows (520 rows padded to 640 at TP=1,
    768 at TP=2; megatron loads them with ``allow_shape_mismatch``): their real rows must match."""
    vocab = json.loads((Path(tiny_qwen3_untied_dir) / "config.json").read_text())["vocab_size"]
    original = _global_tensors(runs / source / "step_00000001", tmp_path)
    resaved = _global_tensors(runs / f"resaved_{source}" / "step_00000001", tmp_path)
    assert any("exp_avg_sq" in key for key in original), sorted(original)[:10]
    assert sorted(resaved) == sorted(original)
    padded = 0
    for key, tensor in original.items():
        other = resaved[key]
        if tensor.shape != other.shape:
            assert tensor.shape[1:] == other.shape[1:] and min(len(tensor), len(other)) >= vocab
            tensor, other, padded = tensor[:vocab], other[:vocab], padded + 1
        assert torch.equal(other, tensor), key
    assert padded == (8 if source == "run_tp2" else 0)  # 2 weights x (weight, fp32, 2 moments)


def test_weights_only_load(runs):
    result = torch.load(runs / "dp1.pt", weights_only=False)["weights_only"]
    assert result["step"] == 1
    _assert_equal(result["weights"], torch.load(runs / "dp2.pt")["saved"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_exact_for_other_optimizer_setups(runs, variant):
    result = torch.load(runs / "dp1.pt", weights_only=False)["variants"][variant]
    _assert_equal(result["resumed"], result["uninterrupted"])


def test_interrupted_save_keeps_previous_latest(runs):
    result = torch.load(runs / "dp1.pt", weights_only=False)
    crash = result["after_crash"]
    assert crash["latest_file"] == "step_00000001"
    assert crash["find_latest"] == "step_00000001"
    assert "step_00000002" not in crash["entries"]
    assert ".incomplete-step_00000002" in crash["entries"]  # left for inspection, not trusted
    retry = result["after_retry"]
    assert retry["find_latest"] == "step_00000002"
    assert retry["entries"] == ["latest", "step_00000002"]  # keep_last=1 pruned step 1


def _hf_logits(folder: Path, tokens: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    with torch.no_grad():
        return model(tokens).logits


def test_hf_export_of_loaded_weights_is_identical_to_source(runs, tiny_qwen3_untied_dir):
    from safetensors.torch import load_file

    folder = runs / "hf_initial"
    _assert_equal(
        load_file(folder / "model.safetensors"),
        load_file(Path(tiny_qwen3_untied_dir) / "model.safetensors"),
    )
    tokens = torch.load(runs / "tokens.pt")[0]
    assert torch.equal(_hf_logits(folder, tokens), _hf_logits(tiny_qwen3_untied_dir, tokens))
    source_files = {p.name for p in Path(tiny_qwen3_untied_dir).iterdir()}
    assert source_files <= {p.name for p in folder.iterdir()}  # tokenizer, generation config
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder)("1 + 1 =").input_ids


def test_hf_export_after_training_matches_across_layouts(runs):
    """The step-2 weights exported at TP=2 (one file and several shards) and at DP=1 (bf16)
    load in transformers and give the same logits as the trained parameters."""
    tokens = torch.load(runs / "tokens.pt")[0]
    dp2 = torch.load(runs / "dp2.pt")
    reference = _hf_logits(runs / "hf_tp2_step2", tokens)
    sharded = runs / "hf_tp2_step2_sharded"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert set(index["weight_map"]) == set(dp2["continued"])
    assert torch.equal(_hf_logits(sharded, tokens), reference)

    from safetensors.torch import load_file

    exported = load_file(runs / "hf_tp2_step2" / "model.safetensors")
    _assert_close(exported, dp2["continued"], STEP_ATOL)

    bf16 = runs / "hf_dp1_step2"
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(bf16 / "model.safetensors").values())
    bf16_logits = _hf_logits(bf16, tokens, dtype=torch.bfloat16).float()
    assert (bf16_logits - reference).abs().max().item() < 0.1 * reference.abs().max().item()


# ---------------------------------------------------------------------------------------------
# Pure file-system logic (no processes).
# ---------------------------------------------------------------------------------------------


def _fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    from rlrt_megatron.megatron.checkpoint import META_FILE, step_dir_name

    path = run_dir / step_dir_name(step)
    path.mkdir(parents=True)
    if complete:
        (path / META_FILE).write_text("{}")
    return path


def test_find_latest_follows_pointer_and_ignores_incomplete(tmp_path):
    from rlrt_megatron.megatron.checkpoint import find_latest, resolve_resume

    assert find_latest(tmp_path) is None
    assert resolve_resume(tmp_path, "auto") is None
    first = _fake_checkpoint(tmp_path, 1)
    (tmp_path / ".incomplete-step_00000003").mkdir()
    _fake_checkpoint(tmp_path, 4, complete=False)  # a directory without its meta file
    assert find_latest(tmp_path) == first  # no pointer yet: highest complete
    (tmp_path / "latest").write_text("step_00000001\n")
    assert find_latest(tmp_path) == first
    second = _fake_checkpoint(tmp_path, 2)  # renamed, pointer not yet updated (crash)
    assert find_latest(tmp_path) == second
    (tmp_path / "latest").write_text("step_00000009\n")  # dangling pointer
    assert find_latest(tmp_path) == second
    assert resolve_resume(tmp_path, "auto") == second
    assert resolve_resume(tmp_path, "none") is None
    assert resolve_resume(tmp_path, str(first)) == first


def test_resolve_resume_rejects_incomplete_directory(tmp_path):
    from rlrt_megatron.megatron.checkpoint import CheckpointLoadError, resolve_resume

    incomplete = _fake_checkpoint(tmp_path, 5, complete=False)
    with pytest.raises(CheckpointLoadError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, incomplete)

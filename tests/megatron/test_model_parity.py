"""Megatron Qwen3 on gloo (TP=2, TP=2+SP, PP=2, DP=2) against HF transformers on the same weights.

One spawn of two ranks runs every layout in turn (re-initializing megatron's model-parallel state
in the same processes) on a tied and an untied tiny checkpoint, and writes what it computed:
the exported HF weights, the logits, the gradients of one backward (mapped to HF names through
the exporter) and the parameters after one AdamW step through Megatron's DDP and distributed
optimizer. The tests compare those files with a single-process HF ``Qwen3ForCausalLM`` reference,
all in float32.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from _dist import run_distributed

pytestmark = pytest.mark.distributed

# name: (TP, PP, sequence parallel); DP is what is left of the 2 ranks.
LAYOUTS = {
    "tp2": (2, 1, False),
    "tp2_sp": (2, 1, True),
    "pp2": (1, 2, False),
    "dp2": (1, 1, False),
}
CHECKPOINTS = ("tied", "untied")
WORLD_SIZE = 2
BATCH, SEQ = 2, 16  # one sequence per DP rank at DP=2; SEQ divisible by TP for SP
# Adam's first step is lr * g / (|g| + eps): with a tiny eps it is lr * sign(g), which turns
# float32 noise in near-zero gradients (~1e-7 here) into full-size differences. eps=1e-3 keeps
# the step smooth in g (error <= lr * |dg| / eps) and still ~lr for typical gradients; this test
# checks Megatron's plumbing (DDP, sharding, clipping, weight-decay groups, param all-gather),
# the Adam math is torch's in both. A large weight decay makes the no-decay 1-D group visible.
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.1)
CLIP_GRAD = 1.0

LOGIT_ATOL = 1e-4
GRAD_ATOL = 1e-5
PARAM_ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# The distributed run (executed in the spawned ranks).
# ---------------------------------------------------------------------------------------------


def _next_token_nll(vocab_size: int, tokens: torch.Tensor, logits: torch.Tensor):
    """Loss for megatron's schedule: mean next-token NLL from TP-sharded logits [b, s, V/TP],
    with the padded vocab columns masked out."""
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel

    shard = logits.shape[-1]
    first = mpu.get_tensor_model_parallel_rank() * shard
    padded = torch.arange(first, first + shard) >= vocab_size
    shifted = logits[:, :-1].float().masked_fill(padded, torch.finfo(torch.float32).min)
    nll = tensor_parallel.vocab_parallel_cross_entropy(shifted, tokens[:, 1:])
    loss = nll.mean()
    return loss, {"loss": loss.detach()}


def _run_schedule(model, tokens: torch.Tensor, *, forward_only: bool):
    """One micro-batch through megatron's forward-backward schedule for this PP size."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    position_ids = torch.arange(tokens.shape[1]).expand_as(tokens)

    def forward_step(data_iterator, chunk):
        batch = next(data_iterator)
        output = chunk(batch, position_ids, None)
        loss_func = None if forward_only else partial(_next_token_nll, model.vocab_size, batch)
        return output, loss_func

    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([tokens]),
        model=model.chunks,
        num_microbatches=1,
        seq_length=tokens.shape[1],
        micro_batch_size=tokens.shape[0],
        forward_only=forward_only,
    )


def _export_main_grads(model) -> dict[str, torch.Tensor]:
    """The DDP gradient buffers, exported under HF names: each parameter's data is pointed at
    its ``main_grad`` while the exporter runs."""
    from rlrt_megatron.models.qwen3_megatron import export_hf_weights

    params = [p for module in model.modules for p in module.parameters()]
    saved = [p.data for p in params]
    for p in params:
        p.data = p.main_grad
    try:
        return {name: t.clone() for name, t in export_hf_weights(model)}
    finally:
        for p, data in zip(params, saved, strict=True):
            p.data = data


def _parity_worker(rank: int, out_dir: str, checkpoints: dict[str, str]) -> None:
    import torch.distributed as dist
    from megatron.core import tensor_parallel
    from megatron.core.distributed import DistributedDataParallelConfig

    from rlrt_megatron.megatron.optimizer import AdamWConfig, build_optimizer
    from rlrt_megatron.megatron.parallel import (
        ParallelConfig,
        destroy_parallel,
        initialize_parallel,
    )
    from rlrt_megatron.models.qwen3_megatron import build_qwen3_model, export_hf_weights

    out = Path(out_dir)
    tokens = torch.load(out / "tokens.pt")
    for layout, (tp, pp, sp) in LAYOUTS.items():
        state = initialize_parallel(ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp))
        local_tokens = tokens.chunk(state.data_parallel)[state.dp_rank]
        for ckpt in CHECKPOINTS:
            tag = f"{layout}-{ckpt}"
            # Forward, export and gradients: DDP with all-reduced (unsharded) gradients.
            model = build_qwen3_model(
                checkpoints[ckpt],
                dtype=torch.float32,
                sequence_parallel=sp,
                wrap_with_ddp=True,
                ddp_config=DistributedDataParallelConfig(
                    grad_reduce_in_fp32=True, use_distributed_optimizer=False
                ),
            )
            exported = {name: t.clone() for name, t in export_hf_weights(model)}
            # Without PP the export skips mbridge's per-parameter PP broadcasts; mbridge's own
            # export, in the same ranks, is what it must reproduce (names, order, bits).
            mbridge_export = [(n, t.clone()) for n, t in model.bridge.export_weights(model.modules)]
            if rank == 0:
                torch.save(exported, out / f"{tag}-export.pt")
                torch.save(mbridge_export, out / f"{tag}-export-mbridge.pt")

            with torch.no_grad():
                outputs = _run_schedule(model, local_tokens, forward_only=True)
            if state.is_last_stage:
                logits = tensor_parallel.gather_from_tensor_model_parallel_region(outputs[0])
                if state.tp_rank == 0:
                    logits = logits[..., : model.vocab_size]
                    torch.save(logits, out / f"{tag}-logits-dp{state.dp_rank}.pt")

            model.chunks[0].zero_grad_buffer()
            _run_schedule(model, local_tokens, forward_only=False)
            grads = _export_main_grads(model)
            if rank == 0:
                torch.save(grads, out / f"{tag}-grads.pt")

            # One AdamW step through DDP + the distributed optimizer.
            model = build_qwen3_model(
                checkpoints[ckpt], dtype=torch.float32, sequence_parallel=sp, wrap_with_ddp=True
            )
            optimizer, _ = build_optimizer(model, AdamWConfig(**ADAMW, clip_grad=CLIP_GRAD))
            optimizer.zero_grad()
            _run_schedule(model, local_tokens, forward_only=False)
            ok, grad_norm, _ = optimizer.step()
            assert ok, "optimizer step skipped"
            stepped = {name: t.clone() for name, t in export_hf_weights(model)}
            if rank == 0:
                torch.save({"params": stepped, "grad_norm": grad_norm}, out / f"{tag}-step.pt")
        destroy_parallel(keep_process_group=True)
    dist.barrier()
    destroy_parallel()


# ---------------------------------------------------------------------------------------------
# The single-process HF reference and the tests.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tiny_qwen3_dir, tiny_qwen3_untied_dir) -> dict[str, Path]:
    return {"tied": Path(tiny_qwen3_dir), "untied": Path(tiny_qwen3_untied_dir)}


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randint(0, 500, (BATCH, SEQ), generator=generator)


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory, checkpoints, tokens) -> Path:
    out = tmp_path_factory.mktemp("parity")
    torch.save(tokens, out / "tokens.pt")
    run_distributed(
        _parity_worker,
        WORLD_SIZE,
        str(out),
        {name: str(path) for name, path in checkpoints.items()},
        timeout_s=900,
    )
    return out


@pytest.fixture(scope="module")
def hf_reference(checkpoints, tokens) -> dict[str, dict]:
    """Per checkpoint: logits, token log-probs, grads of the mean next-token NLL, grad norm, and
    parameters after one clipped AdamW step (no weight decay on 1-D params, like Megatron)."""
    from transformers import Qwen3ForCausalLM

    references = {}
    for name, path in checkpoints.items():
        model = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32)
        logits = model(tokens).logits
        loss = -_token_logprobs(logits, tokens).mean()
        loss.backward()
        params = dict(model.named_parameters())  # a tied lm_head is listed once, as embed_tokens
        grads = {n: p.grad.detach().clone() for n, p in params.items()}
        grad_norm = torch.nn.utils.clip_grad_norm_(params.values(), CLIP_GRAD).item()
        decay = [p for p in params.values() if p.dim() > 1]
        no_decay = [p for p in params.values() if p.dim() <= 1]
        optimizer = torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **ADAMW
        )
        optimizer.step()
        references[name] = {
            "logits": logits.detach(),
            "grads": grads,
            "grad_norm": grad_norm,
            "stepped": {n: p.detach().clone() for n, p in params.items()},
        }
    return references


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logprobs.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def _max_abs_diff(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict:
    assert sorted(ours) == sorted(ref)
    return {name: (ours[name] - ref[name]).abs().max().item() for name in ref}


CASES = [(layout, ckpt) for layout in LAYOUTS for ckpt in CHECKPOINTS]
case_ids = [f"{layout}-{ckpt}" for layout, ckpt in CASES]


@pytest.mark.parametrize(("layout", "ckpt"), CASES, ids=case_ids)
def test_logits_and_logprobs_match_hf(parity_run, hf_reference, tokens, layout, ckpt):
    files = sorted(parity_run.glob(f"{layout}-{ckpt}-logits-dp*.pt"))
    logits = torch.cat([torch.load(f) for f in files])  # DP ranks in order
    ref = hf_reference[ckpt]["logits"]
    assert logits.shape == ref.shape
    assert (logits - ref).abs().max().item() <= LOGIT_ATOL
    logprob_diff = (_token_logprobs(logits, tokens) - _token_logprobs(ref, tokens)).abs().max()
    assert logprob_diff.item() <= LOGIT_ATOL


@pytest.mark.parametrize(("layout", "ckpt"), CASES, ids=case_ids)
def test_export_round_trip_is_bit_exact(parity_run, checkpoints, layout, ckpt):
    from safetensors.torch import load_file

    original = load_file(checkpoints[ckpt] / "model.safetensors")
    exported = torch.load(parity_run / f"{layout}-{ckpt}-export.pt")
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype, name
        assert torch.equal(exported[name], tensor), name


@pytest.mark.parametrize(("layout", "ckpt"), CASES, ids=case_ids)
def test_export_equals_mbridges_in_order(parity_run, layout, ckpt):
    exported = torch.load(parity_run / f"{layout}-{ckpt}-export.pt")
    reference: dict[str, torch.Tensor] = {}
    for name, tensor in torch.load(parity_run / f"{layout}-{ckpt}-export-mbridge.pt"):
        reference.setdefault(name, tensor)  # tied + PP: mbridge yields embed_tokens twice
    assert list(exported) == list(reference)  # dicts keep the yield order
    for name, tensor in reference.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name


@pytest.mark.parametrize(("layout", "ckpt"), CASES, ids=case_ids)
def test_gradients_match_hf(parity_run, hf_reference, layout, ckpt):
    grads = torch.load(parity_run / f"{layout}-{ckpt}-grads.pt")
    diffs = _max_abs_diff(grads, hf_reference[ckpt]["grads"])
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= GRAD_ATOL, f"{worst}: {diffs[worst]:.3g}"


@pytest.mark.parametrize(("layout", "ckpt"), CASES, ids=case_ids)
def test_adamw_step_matches_hf(parity_run, hf_reference, layout, ckpt):
    result = torch.load(parity_run / f"{layout}-{ckpt}-step.pt")
    ref = hf_reference[ckpt]
    assert math.isclose(result["grad_norm"], ref["grad_norm"], rel_tol=1e-5)
    assert ref["grad_norm"] > CLIP_GRAD, "the reference step should exercise grad clipping"
    diffs = _max_abs_diff(result["params"], ref["stepped"])
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= PARAM_ATOL, f"{worst}: {diffs[worst]:.3g}"

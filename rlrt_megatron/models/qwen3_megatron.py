"""Build a megatron-core GPTModel for a dense Qwen3 checkpoint, load it, export it back.

The model is megatron-core's ``GPTModel`` configured as Qwen3: RMSNorm, q/k RMSNorm per head,
SwiGLU, grouped-query attention, RoPE with the checkpoint's theta, no linear biases, tied or
untied embeddings. Any TP x PP layout the checkpoint allows (see
:func:`~rlrt_megatron.models.qwen3_checkpoint.validate_qwen3_layout`); DP is the rest of the world.

Conversion goes through :mod:`rlrt_megatron.models.qwen3_bridge` (mbridge). Call
:func:`~rlrt_megatron.megatron.parallel.initialize_parallel` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlrt_megatron.models.qwen3_bridge import make_qwen3_bridge
from rlrt_megatron.models.qwen3_checkpoint import (
    DEFAULT_VOCAB_DIVISIBLE_BY,
    Qwen3Checkpoint,
    validate_qwen3_layout,
)


@dataclass
class Qwen3MegatronModel:
    """A built model: its chunks (one per virtual pipeline stage; one without VPP), the
    megatron config and the vocab sizes.

    ``chunks`` are what megatron's schedules and optimizers take: wrapped in Megatron DDP when
    built with ``wrap_with_ddp`` (and in ``Float16Module`` for bf16/fp16).
    """

    chunks: list[torch.nn.Module]
    checkpoint: Qwen3Checkpoint
    config: Any  # megatron.core.transformer.TransformerConfig
    vocab_size: int  # real vocab: logit columns >= this are padding and must be masked
    padded_vocab_size: int  # Megatron's vocab (a multiple of divisible_by * TP)
    bridge: Any = field(repr=False)
    # Micro-batches are packed (THD: sequences back to back, attention kept inside each) rather
    # than right-padded; required for context parallelism. Set by the attention backend's
    # support: SDPA and Transformer Engine pack, megatron's local attention does not.
    packing: bool = False

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The chunks without DDP / Float16Module wrappers (the ``GPTModel`` instances)."""
        from megatron.core.utils import unwrap_model

        return [unwrap_model(chunk) for chunk in self.chunks]


def build_qwen3_model(
    hf_path: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    sequence_parallel: bool = False,
    make_vocab_size_divisible_by: int = DEFAULT_VOCAB_DIVISIBLE_BY,
    load_weights: bool = True,
    wrap_with_ddp: bool = False,
    ddp_config: Any = None,
    config_overrides: dict[str, Any] | None = None,
    attention: str = "auto",
    packing: bool = True,
) -> Qwen3MegatronModel:
    """Build this rank's part of the model for the initialized TP/PP layout.

    The folder and layout are validated here too, but after the process groups exist: call
    :func:`~rlrt_megatron.models.qwen3_checkpoint.validate_qwen3_layout` before
    ``initialize_parallel`` to fail first.

    Args:
        hf_path: HF Qwen3 checkpoint folder (``config.json`` + safetensors).
        dtype: parameter dtype (``torch.float32`` or ``torch.bfloat16``).
        sequence_parallel: Megatron sequence parallelism (TP > 1 only); sequence lengths must
            then be divisible by TP.
        make_vocab_size_divisible_by: the vocab is padded to a multiple of this times TP.
        load_weights: load the checkpoint's weights (else: Megatron's random init).
        wrap_with_ddp: wrap each chunk in Megatron ``DistributedDataParallel`` and set the
            config hooks (``finalize_model_grads_func``, ``no_sync_func``) that megatron's
            forward-backward schedules call.
        ddp_config: a ``DistributedDataParallelConfig``; default: fp32 grad accumulation and
            reduction, no overlap, ``use_distributed_optimizer=True``.
        config_overrides: extra ``TransformerConfig`` fields (e.g. ``recompute_granularity``).
        attention: "auto" (Transformer Engine when importable, else PyTorch SDPA), "te",
            "sdpa" or "local" (megatron-core's unfused DotProductAttention); see
            :mod:`~rlrt_megatron.models.qwen3_bridge`.
        packing: run the actor's passes on packed micro-batches (see
            :mod:`~rlrt_megatron.megatron.forward`); needs the "sdpa" or "te" attention and is
            required for context parallelism (``initialize_parallel`` with CP > 1).
    """
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel
    from megatron.core.transformer.module import Float16Module

    from rlrt_megatron.models.qwen3_bridge import resolve_attention

    tp = mpu.get_tensor_model_parallel_world_size()
    pp = mpu.get_pipeline_model_parallel_world_size()
    cp = mpu.get_context_parallel_world_size()
    checkpoint = validate_qwen3_layout(hf_path, tp, pp)
    backend = resolve_attention(attention)
    if packing and backend == "local":
        raise ValueError(
            "packed micro-batches need attention 'sdpa' or 'te' (megatron-core's local attention "
            "has no packed-sequence support): set actor.attention or actor.packing=false"
        )
    if cp > 1 and not packing:
        raise ValueError(f"context parallelism (CP={cp}) needs packed micro-batches: actor.packing")
    if sequence_parallel and tp == 1:
        raise ValueError("sequence_parallel needs tensor parallelism (TP > 1)")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    if mpu.get_virtual_pipeline_model_parallel_world_size() not in (None, 1):
        raise ValueError("virtual pipeline stages (VPP) are not supported by build_qwen3_model")

    overrides: dict[str, Any] = {
        "sequence_parallel": sequence_parallel,
        "context_parallel_size": cp,
        # A CUDA kernel (bf16 would select it); megatron falls back to torch softmax without it.
        "masked_softmax_fusion": torch.cuda.is_available(),
        # perform_initialization stays on even when loading: megatron sets the TP attributes
        # (tensor_model_parallel, partition_dim) of its weights only in its init functions.
        **(config_overrides or {}),
    }
    bridge = make_qwen3_bridge(
        checkpoint,
        dtype=dtype,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by * tp,
        config_overrides=overrides,
        attention=backend,
    )
    provider = bridge._model_provider(post_model_creation_callbacks=[])
    model = provider(
        pre_process=mpu.is_pipeline_first_stage(), post_process=mpu.is_pipeline_last_stage()
    )
    # mbridge.get_model (replaced here because it calls .cuda()) does the same: every param
    # gets the TP attributes the optimizer and grad-norm code read.
    for param in model.parameters():
        tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if load_weights:
        bridge.load_weights([model], str(checkpoint.path))

    padded = checkpoint.padded_vocab_size(tp, make_vocab_size_divisible_by)
    if bridge.padded_vocab_size != padded:  # the bridge padded the model it built
        raise RuntimeError(f"vocab padding mismatch: {bridge.padded_vocab_size} != {padded}")

    config = bridge.config
    chunk: torch.nn.Module = model
    if config.fp16 or config.bf16:
        chunk = Float16Module(config, chunk)
    chunks = [chunk]
    if wrap_with_ddp:
        chunks = _wrap_with_ddp(chunks, config, ddp_config)
    return Qwen3MegatronModel(
        chunks=chunks,
        checkpoint=checkpoint,
        config=config,
        vocab_size=checkpoint.vocab_size,
        padded_vocab_size=padded,
        bridge=bridge,
        packing=packing,
    )


def _wrap_with_ddp(chunks: list[torch.nn.Module], config: Any, ddp_config: Any):
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    if ddp_config is None:
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=True,
        )
    wrapped = [
        DistributedDataParallel(
            config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=index > 0
        )
        for index, chunk in enumerate(chunks)
    ]
    # What megatron's training loop sets before calling a forward-backward schedule.
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = wrapped[0].no_sync if len(wrapped) == 1 else [w.no_sync for w in wrapped]
    return wrapped


def export_hf_weights(model: Qwen3MegatronModel) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for every HF weight, gathered across TP and PP.

    Every rank yields every weight (the full, unsharded tensor in the model's dtype, vocab
    padding removed), one at a time: each step runs collectives over the TP and PP groups, so
    **every rank must drain the iterator, in the same order**, even ranks that discard the
    tensors. With TP=1 a tensor may be the live parameter: clone it before keeping it across an
    optimizer step. A tied checkpoint yields ``model.embed_tokens.weight`` once (no
    ``lm_head.weight``), as in its safetensors.
    """
    bridge = model.bridge
    # mbridge's export runs three object collectives over the PP group per parameter even when
    # that group is this rank alone (PP=1): a fixed cost per tensor on every sync, which grows
    # with the parameter count, not the size. Without PP it is skipped (`_export_without_pp`).
    no_pp = bridge.mpu.pp_size == 1 and bridge.mpu.ep_size == 1 and len(model.modules) == 1
    weights = _export_without_pp(model) if no_pp else bridge.export_weights(model.modules)
    seen: set[str] = set()
    with torch.no_grad():
        for name, tensor in weights:
            # With tied embeddings and PP > 1 the last stage's output_layer copy maps to
            # embed_tokens too: every rank skips the same second occurrence.
            if name in seen:
                continue
            seen.add(name)
            yield name, tensor.detach()


def _export_without_pp(model: Qwen3MegatronModel) -> Iterator[tuple[str, torch.Tensor]]:
    """mbridge's ``Bridge.export_weights`` for one model chunk without pipeline or expert
    parallelism: the same tensors in the same order (megatron's ``named_parameters`` order, then
    any router ``expert_bias`` buffers), gathered across TP and converted by the bridge's own
    ``_weight_merge_across_tp`` / ``_weight_to_hf_format``, without the per-parameter PP
    broadcasts that a one-rank PP group makes no-ops."""
    bridge, (module,) = model.bridge, model.modules
    local_to_global = bridge._weight_name_mapping_mcore_local_to_global(module, consider_ep=False)
    named = list(module.named_parameters())
    known = {name for name, _ in named}
    state = module.state_dict()
    named += [
        (key, state[key])
        for key in state
        if "_extra_state" not in key and "expert_bias" in key and key not in known
    ]
    tp_size = bridge.mpu.tp_size
    for local_name, param in named:
        name = local_to_global[local_name]
        if getattr(param, "tensor_model_parallel", False):
            shards = [param]
            if tp_size > 1:
                shards = [torch.empty_like(param) for _ in range(tp_size)]
                torch.distributed.all_gather(shards, param, group=bridge.mpu.tp_group)
            param = bridge._weight_merge_across_tp(name, shards, param)
        hf_names, hf_tensors = bridge._weight_to_hf_format(name, param)
        yield from zip(hf_names, hf_tensors, strict=True)

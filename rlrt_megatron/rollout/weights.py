"""The receiving end of weight sync, inside each vLLM worker: `WeightUpdateExtension`.

The sender packs the trainer's (HF name, tensor) stream into flat byte buckets
(`rlrt_megatron.transport`: the format, packing, the manifest, the broadcast and CUDA IPC
transports); `WeightUpdateExtension` unpacks them as zero-copy views inside each vLLM worker and
hands them to the model's own ``load_weights``, which knows vLLM's fused layouts (q/k/v →
qkv_proj, gate/up → gate_up_proj) and shards for tensor parallelism. So a sync is one remote call
per bucket per engine, never one per parameter.

The bucket format's names (`WeightBucket`, `TensorMeta`, `unpack_flat`, `WeightManifest`, ...)
are re-exported here, where they were first defined.
"""

from __future__ import annotations

import torch

from rlrt_megatron.transport.buckets import (
    ALIGNMENT,
    TensorMeta,
    WeightBucket,
    aligned,
    dtype_name,
    unpack_flat,
)
from rlrt_megatron.transport.manifest import WeightManifest, checkpoint_manifest

__all__ = [
    "ALIGNMENT",
    "TensorMeta",
    "WeightBucket",
    "WeightManifest",
    "WeightUpdateExtension",
    "aligned",
    "checkpoint_manifest",
    "dtype_name",
    "unpack_flat",
]


class WeightUpdateExtension:
    """Mixed into every vLLM worker through ``LLM(worker_extension_cls=...)``.

    Its methods run inside the worker (``self`` is the worker), called with
    ``LLM.collective_rpc``. The engine runs its core in-process (see
    `rlrt_megatron.rollout.engine`), so with one worker the bucket arrives as the very object the
    caller passed; with several (TP > 1) vLLM pickles it to each worker process, which a numpy
    buffer survives.

    An update is begin → load buckets → finish, using vLLM's own layerwise reload (the mechanism
    its built-in weight-transfer engines use). A bare ``model.load_weights`` on a running engine is
    not enough: after the first load vLLM post-processes many layers into kernel formats (on CPU it
    repacks every linear weight for oneDNN and drops the original parameter), so new values must go
    through the checkpoint-format loaders and be post-processed again. Between begin and finish the
    model is not usable; the engine never generates then.
    """

    def rlrt_begin_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        from rlrt_megatron.upstream_warnings import install_weight_reload_filter

        # finish warns "<Layer>: Failed to load weights" for the rope cache and the tied head on
        # every sync; both are expected (rlrt_megatron.upstream_warnings says why): drop exactly
        # those, in this worker, before the first reload.
        hf_config = self.vllm_config.model_config.hf_config
        install_weight_reload_filter(
            tied_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False))
        )
        initialize_layerwise_reload(self.model_runner.model)

    def rlrt_load_weight_bucket(self, bucket: WeightBucket) -> int:
        """Load one bucket in checkpoint (HF) format; returns the number of tensors it held."""
        from vllm.config import set_current_vllm_config

        model = self.model_runner.model
        with set_current_vllm_config(self.vllm_config):
            model.load_weights(weights=bucket.named_tensors(self.device))
        return len(bucket.tensors)

    def rlrt_finish_weight_update(self) -> None:
        """Post-process every reloaded layer into kernel format (and restore any layer that got
        no weights, with its old values)."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        model = self.model_runner.model
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(model, self.vllm_config.model_config)
            _refresh_tied_lm_head(model, self.vllm_config.model_config.hf_config)

    # -- direct transports (rlrt_megatron.transport.weight_group, rlrt_megatron.transport.cuda_ipc)

    def rlrt_join_weight_group(self, spec, first_rank: int) -> int:
        """Join a broadcast weight group as member ``first_rank`` + this worker's rank in its
        engine (every TP worker receives every bucket); blocks until the group is formed."""
        from rlrt_megatron.transport.weight_group import join_weight_group

        self.rlrt_leave_weight_group()
        rank = first_rank + int(self.rank)
        self._rlrt_weight_group = join_weight_group(spec, rank)
        return rank

    def rlrt_leave_weight_group(self) -> None:
        group = getattr(self, "_rlrt_weight_group", None)
        self._rlrt_weight_group = None
        if group is not None and hasattr(group.process_group, "shutdown"):
            group.process_group.shutdown()

    def rlrt_receive_broadcast(self) -> int:
        """Receive and load every bucket of one broadcast stream; returns the tensors loaded."""
        from vllm.config import set_current_vllm_config

        from rlrt_megatron.transport.weight_group import receive_buckets

        group = getattr(self, "_rlrt_weight_group", None)
        if group is None:
            raise RuntimeError("this worker has not joined a weight group")
        model = self.model_runner.model
        loaded = 0
        with set_current_vllm_config(self.vllm_config):
            for flat, metas in receive_buckets(group, self.device):
                model.load_weights(weights=unpack_flat(flat, metas))
                loaded += len(metas)
        return loaded

    def rlrt_load_ipc_bucket(self, shared) -> int:
        """Load one bucket that a colocated trainer rank shares by CUDA IPC (no copy until the
        model's own loaders copy into their parameters)."""
        from vllm.config import set_current_vllm_config

        from rlrt_megatron.transport.cuda_ipc import open_bucket

        flat = open_bucket(shared)
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.model.load_weights(weights=unpack_flat(flat, shared.tensors))
        torch.cuda.current_stream().synchronize()  # done reading before the sender frees it
        del flat
        return len(shared.tensors)


def _refresh_tied_lm_head(model, hf_config) -> None:
    """Re-derive the output layer's kernel data from the (shared) embedding after a reload.

    With tied embeddings the checkpoint has no ``lm_head.weight``, so the layerwise reload only
    processes ``embed_tokens`` (vLLM's documented limitation: a tied parameter reflects the
    processing of one parent layer only). On CPU, ``lm_head`` keeps a pre-packed oneDNN copy of
    the weight made at the first load, and would go on computing logits from the *old* embedding.
    Re-running its unquantized post-processing repacks it from the updated shared weight (a no-op
    on GPU). Quantized heads are left alone: their post-processing is not idempotent.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    if not getattr(hf_config, "tie_word_embeddings", False):
        return
    lm_head = getattr(model, "lm_head", None)
    quant_method = getattr(lm_head, "quant_method", None)
    if isinstance(quant_method, UnquantizedEmbeddingMethod):
        quant_method.process_weights_after_loading(lm_head)

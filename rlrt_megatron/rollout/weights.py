"""The weight-bucket format and its receiving end inside a vLLM worker.

A `WeightBucket` is one flat byte buffer holding several tensors back to back, plus one
`TensorMeta` per tensor (HF name, dtype, shape, byte offset). The sender
(`rlrt_megatron.cluster.weight_sync`) packs them; `WeightUpdateExtension` unpacks them as
zero-copy views inside each vLLM worker and hands them to the model's own ``load_weights``, which
knows vLLM's fused layouts (q/k/v → qkv_proj, gate/up → gate_up_proj) and shards for tensor
parallelism. So a sync is one remote call per bucket per engine, never one per parameter.

The buffer is a 1-D ``numpy.uint8`` array on purpose: Ray stores numpy arrays in its shared-memory
object store and hands them to actors on the same node without a copy. Dtypes numpy lacks
(bfloat16) are no obstacle: the bytes are reinterpreted with torch on the receiving side.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Every tensor starts at a multiple of this many bytes, so that reinterpreting a byte slice as any
# dtype is legal (torch requires the offset to be a multiple of the element size) and GPU copies
# stay aligned.
ALIGNMENT = 64

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def dtype_name(dtype: torch.dtype) -> str:
    """The name a dtype travels under in a `TensorMeta` (``torch.bfloat16`` → ``"bfloat16"``)."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise TypeError(
            f"dtype {dtype} cannot travel in a weight bucket (supported: {sorted(_DTYPES)})"
        )
    return name


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class WeightBucket:
    """Several tensors in one flat buffer: ``buffer`` is 1-D uint8, ``tensors`` its parts."""

    buffer: np.ndarray
    tensors: tuple[TensorMeta, ...]

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def named_tensors(self, device: torch.device | str = "cpu") -> list[tuple[str, torch.Tensor]]:
        """The bucket's tensors as views of one buffer on ``device`` (one copy when not CPU)."""
        with warnings.catch_warnings():
            # A buffer from Ray's object store is read-only; the views are only ever read.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            flat = torch.from_numpy(self.buffer)
        return unpack_flat(flat.to(device, non_blocking=True), self.tensors)


def unpack_flat(
    flat: torch.Tensor, tensors: tuple[TensorMeta, ...] | list[TensorMeta]
) -> list[tuple[str, torch.Tensor]]:
    """(name, view) for each `TensorMeta` of a flat 1-D uint8 buffer, without copying.

    Raises ValueError when a tensor does not fit in the buffer (a truncated transfer)."""
    if flat.dtype != torch.uint8 or flat.dim() != 1:
        raise ValueError(f"a weight bucket is a 1-D uint8 tensor, got {flat.dtype} {flat.shape}")
    out = []
    for meta in tensors:
        if meta.offset + meta.nbytes > flat.numel():
            raise ValueError(
                f"{meta.name}: bytes [{meta.offset}, {meta.offset + meta.nbytes}) lie outside the"
                f" {flat.numel()}-byte bucket"
            )
        part = flat[meta.offset : meta.offset + meta.nbytes]
        out.append((meta.name, part.view(_DTYPES[meta.dtype]).view(meta.shape)))
    return out


@dataclass(frozen=True)
class WeightManifest:
    """The tensors a full weight update must carry: the checkpoint's names and shapes.

    A sync that leaves a layer half-loaded would be post-processed with garbage for the rest (vLLM
    fuses q/k/v and gate/up), and an unknown name fails deep inside vLLM after other buckets were
    already applied; checking names and shapes against this before sending avoids both.
    """

    shapes: dict[str, tuple[int, ...]]
    optional: frozenset[str] = frozenset()
    """Names that may be sent but need not be (``lm_head.weight`` of a tied-embedding model)."""

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self.shapes:
            raise ValueError(
                f"{name!r} is not a weight of the engine's model (expected Hugging Face names such"
                f" as {next(iter(self.shapes))!r})"
            )
        if tuple(shape) != self.shapes[name]:
            raise ValueError(
                f"{name}: shape {tuple(shape)} does not match the engine's {self.shapes[name]}"
            )

    def missing(self, names: set[str]) -> list[str]:
        return sorted(set(self.shapes) - self.optional - names)

    def require_complete(self, names: set[str]) -> None:
        """Raise ValueError unless ``names`` (what a sync carried) covers every required tensor:
        the one check of every transport (object store, broadcast, CUDA IPC, the pool's own)."""
        if missing := self.missing(names):
            raise ValueError(
                f"the weight stream lacks {len(missing)} of the model's tensors, e.g."
                f" {missing[:3]}; a sync must carry the full model"
            )


def checkpoint_manifest(model_path: str | Path) -> WeightManifest:
    """Names and shapes of a Hugging Face checkpoint folder, from its safetensors headers only."""
    from safetensors import safe_open

    model_path = Path(model_path)
    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_path}")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[name] = tuple(f.get_slice(name).get_shape())
    optional: set[str] = set()
    config = json.loads((model_path / "config.json").read_text())
    if config.get("tie_word_embeddings") and "lm_head.weight" not in shapes:
        embedding = next((n for n in shapes if n.endswith("embed_tokens.weight")), None)
        if embedding is not None:
            shapes["lm_head.weight"] = shapes[embedding]
            optional.add("lm_head.weight")
    return WeightManifest(shapes=shapes, optional=frozenset(optional))


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

    # -- direct transports (rlrt_megatron.cluster.weight_group, rlrt_megatron.cluster.cuda_ipc) --

    def rlrt_join_weight_group(self, spec, first_rank: int) -> int:
        """Join a broadcast weight group as member ``first_rank`` + this worker's rank in its
        engine (every TP worker receives every bucket); blocks until the group is formed."""
        from rlrt_megatron.cluster.weight_group import join_weight_group

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

        from rlrt_megatron.cluster.weight_group import receive_buckets

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

        from rlrt_megatron.cluster.cuda_ipc import open_bucket

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

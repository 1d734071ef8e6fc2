"""Numeric precision (bf16 / fp32, FP8 recipes) and context parallelism for the Megatron actor.

:class:`PrecisionConfig` says what to run; :meth:`PrecisionConfig.transformer_config_overrides`
maps it to megatron-core 0.16 ``TransformerConfig`` fields (pass them as ``config_overrides`` to
:func:`~rlrt_megatron.models.qwen3_megatron.build_qwen3_model`, with ``dtype=config.torch_dtype``)
and :meth:`PrecisionConfig.model_parallel_kwargs` to ``initialize_model_parallel``.

:func:`check_precision_runtime` runs at start-up, **before any process group exists**: FP8 needs
CUDA, a GPU generation that has the recipe's FP8 kernels and Transformer Engine. Context
parallelism runs anywhere (Transformer Engine's CP attention where it imports, else the SDPA core
attention's all-gather CP; see :mod:`rlrt_megatron.models.sdpa_attention`); the actor takes its
size from ``ParallelConfig.context_parallel``. What is missing is named in one error.

FP8 recipes (megatron-core's ``Fp8Recipe`` names):

* ``delayed``: per-tensor scales from an amax history (``fp8_amax_history_len``,
  ``fp8_amax_compute_algo``, ``fp8_margin``); Hopper and later.
* ``tensorwise``: per-tensor current scaling (Transformer Engine >= 2.2).
* ``blockwise``: 1x128 / 128x128 block scales (Transformer Engine >= 2.3, Hopper).
* ``mxfp8``: MX block scaling (Transformer Engine >= 2.1, Blackwell, compute capability 10.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlrt_megatron.megatron.parallel import ParallelConfig

FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
# (minimum Transformer Engine version, minimum CUDA compute capability) per recipe. FP8 tensor
# cores start at Ada/Hopper (8.9); MX formats at Blackwell (10.0).
_RECIPE_REQUIREMENTS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "delayed": ((1, 0), (8, 9)),
    "tensorwise": ((2, 2), (8, 9)),
    "blockwise": ((2, 3), (9, 0)),
    "mxfp8": ((2, 1), (10, 0)),
}
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class PrecisionUnavailableError(RuntimeError):
    """The requested precision / context parallelism cannot run in this environment."""


@dataclass(frozen=True, kw_only=True)
class PrecisionConfig:
    """Training precision and context parallelism.

    Attributes:
        dtype: parameter and activation dtype: ``bf16`` (GPU training) or ``fp32`` (CPU tests,
            reference runs).
        fp8_recipe: ``none``, or an FP8 recipe for the linear layers (see the module docstring);
            needs ``dtype="bf16"`` (FP8 GEMMs run inside bf16 training).
        fp8_format: ``hybrid`` (E4M3 forward, E5M2 gradients; the usual choice) or ``e4m3``.
        fp8_margin: scaling-factor margin (delayed scaling).
        fp8_amax_history_len: amax history length (delayed scaling only).
        fp8_amax_compute_algo: ``max`` over the history or ``most_recent`` (delayed only).
        first_last_layers_bf16: keep the first and last transformer layers in bf16 under FP8
            (not with ``delayed``: megatron-core rejects that combination).
        context_parallel: CP size: each sequence is split over this many ranks; the world
            size must be divisible by TP * PP * CP (the actor reads
            ``ParallelConfig.context_parallel``).
        cp_comm_type: how attention exchanges K/V across CP ranks: ``p2p`` (ring),
            ``all_gather`` or ``a2a``.
    """

    dtype: Literal["bf16", "fp32"] = "bf16"
    fp8_recipe: Literal["none", "delayed", "tensorwise", "blockwise", "mxfp8"] = "none"
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"
    fp8_margin: int = 0
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    first_last_layers_bf16: bool = False
    context_parallel: int = 1
    cp_comm_type: Literal["p2p", "all_gather", "a2a"] = "p2p"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.fp8_recipe != "none" and self.fp8_recipe not in FP8_RECIPES:
            raise ValueError(
                f"fp8_recipe must be 'none' or one of {list(FP8_RECIPES)}, got {self.fp8_recipe!r}"
            )
        if self.fp8_format not in ("hybrid", "e4m3"):
            raise ValueError(f"fp8_format must be 'hybrid' or 'e4m3', got {self.fp8_format!r}")
        if self.fp8_recipe != "none" and self.dtype != "bf16":
            raise ValueError(f"FP8 ({self.fp8_recipe}) needs dtype='bf16', got {self.dtype!r}")
        if self.first_last_layers_bf16 and self.fp8_recipe in ("none", "delayed"):
            raise ValueError(
                "first_last_layers_bf16 needs an FP8 recipe other than 'delayed' (megatron-core "
                f"does not support it with delayed scaling), got fp8_recipe={self.fp8_recipe!r}"
            )
        if self.fp8_margin < 0 or self.fp8_amax_history_len < 1:
            raise ValueError("need fp8_margin >= 0 and fp8_amax_history_len >= 1")
        if self.fp8_amax_compute_algo not in ("max", "most_recent"):
            raise ValueError(f"unknown fp8_amax_compute_algo {self.fp8_amax_compute_algo!r}")
        if not isinstance(self.context_parallel, int) or self.context_parallel < 1:
            raise ValueError(
                f"context_parallel must be a positive integer, got {self.context_parallel!r}"
            )
        if self.cp_comm_type not in ("p2p", "all_gather", "a2a"):
            raise ValueError(f"unknown cp_comm_type {self.cp_comm_type!r}")

    @property
    def fp8(self) -> bool:
        return self.fp8_recipe != "none"

    @property
    def torch_dtype(self) -> torch.dtype:
        """The ``dtype`` argument of ``build_qwen3_model``."""
        return _DTYPES[self.dtype]

    def transformer_config_overrides(self) -> dict[str, Any]:
        """megatron-core ``TransformerConfig`` fields for this precision and CP size.

        ``bf16`` / ``params_dtype`` are set by ``build_qwen3_model`` from its ``dtype``; they are
        included so that a config built elsewhere gets them too.
        """
        overrides: dict[str, Any] = {
            "bf16": self.dtype == "bf16",
            "params_dtype": self.torch_dtype,
            "context_parallel_size": self.context_parallel,
        }
        if self.context_parallel > 1:
            overrides["cp_comm_type"] = self.cp_comm_type
        if self.fp8:
            overrides.update(
                fp8=self.fp8_format,
                fp8_recipe=self.fp8_recipe,
                fp8_margin=self.fp8_margin,
                first_last_layers_bf16=self.first_last_layers_bf16,
            )
            if self.fp8_recipe == "delayed":  # the amax history exists only for delayed scaling
                overrides.update(
                    fp8_amax_history_len=self.fp8_amax_history_len,
                    fp8_amax_compute_algo=self.fp8_amax_compute_algo,
                )
        return overrides

    def model_parallel_kwargs(self, parallel: ParallelConfig) -> dict[str, int]:
        """Arguments of megatron's ``parallel_state.initialize_model_parallel`` for ``parallel``
        combined with this config's CP size."""
        return {
            "tensor_model_parallel_size": parallel.tensor_parallel,
            "pipeline_model_parallel_size": parallel.pipeline_parallel,
            "context_parallel_size": self.context_parallel,
        }

    def data_parallel(self, parallel: ParallelConfig, world_size: int) -> int:
        """DP size: ``world_size / (TP * PP * CP)``; raises if that does not divide."""
        model_parallel = parallel.model_parallel * self.context_parallel
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by TP*PP*CP = "
                f"{parallel.tensor_parallel}*{parallel.pipeline_parallel}*{self.context_parallel}"
                f" = {model_parallel}"
            )
        return world_size // model_parallel


@dataclass(frozen=True)
class RuntimeCapabilities:
    """What this machine offers: CUDA, the GPU's compute capability, Transformer Engine."""

    cuda_available: bool
    compute_capability: tuple[int, int] | None
    transformer_engine_version: str | None
    device_name: str | None = None

    @classmethod
    def detect(cls) -> RuntimeCapabilities:
        cuda = torch.cuda.is_available()
        return cls(
            cuda_available=cuda,
            compute_capability=tuple(torch.cuda.get_device_capability()) if cuda else None,
            transformer_engine_version=transformer_engine_version(),
            device_name=torch.cuda.get_device_name() if cuda else None,
        )


def transformer_engine_version() -> str | None:
    """The importable Transformer Engine's version, or ``None`` (a TE build that fails to import,
    e.g. without CUDA, counts as absent)."""
    try:
        import transformer_engine
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return None
    return getattr(transformer_engine, "__version__", "0")


def _version_tuple(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def check_precision_runtime(
    config: PrecisionConfig,
    *,
    parallel: ParallelConfig | None = None,
    world_size: int | None = None,
    capabilities: RuntimeCapabilities | None = None,
) -> None:
    """Raise :class:`PrecisionUnavailableError` naming everything ``config`` needs that this
    environment lacks; ``ValueError`` for a layout CP does not divide. Call before starting any
    process group (it starts nothing itself)."""
    caps = capabilities or RuntimeCapabilities.detect()
    missing: list[str] = []
    if config.fp8:
        min_te, min_cc = _RECIPE_REQUIREMENTS[config.fp8_recipe]
        what = f"FP8 ({config.fp8_recipe} recipe)"
        if not caps.cuda_available:
            missing.append(f"{what} needs a CUDA GPU, and CUDA is not available here")
        elif caps.compute_capability is not None and caps.compute_capability < min_cc:
            missing.append(
                f"{what} needs compute capability >= {min_cc[0]}.{min_cc[1]}; "
                f"{caps.device_name or 'this GPU'} has "
                f"{caps.compute_capability[0]}.{caps.compute_capability[1]}"
            )
        if caps.transformer_engine_version is None:
            missing.append(
                f"{what} needs Transformer Engine (pip install "
                "'transformer-engine[pytorch]'), which is not importable here"
            )
        elif _version_tuple(caps.transformer_engine_version) < min_te:
            missing.append(
                f"{what} needs Transformer Engine >= {min_te[0]}.{min_te[1]}, found "
                f"{caps.transformer_engine_version}"
            )
    # Context parallelism needs neither CUDA nor Transformer Engine: without TE the SDPA core
    # attention all-gathers K/V over the CP group (rlrt_megatron.models.sdpa_attention).
    if missing:
        raise PrecisionUnavailableError("; ".join(missing))
    if parallel is not None and world_size is not None:
        config.data_parallel(parallel, world_size)


def check_sequence_length(config: PrecisionConfig, seq_length: int, tensor_parallel: int) -> None:
    """Sequence-length constraints: CP splits each sequence into ``2 * CP`` chunks (load-balanced
    causal attention); FP8 GEMMs need the token dimension per TP rank to be a multiple of 16
    (as megatron pads to with sequence parallel)."""
    if config.context_parallel > 1 and seq_length % (2 * config.context_parallel):
        raise ValueError(
            f"sequence length {seq_length} must be divisible by "
            f"2*CP = {2 * config.context_parallel}"
        )
    if config.fp8:
        multiple = 16 * tensor_parallel * config.context_parallel
        if seq_length % multiple:
            raise ValueError(
                f"FP8 needs the sequence length ({seq_length}) to be a multiple of "
                f"16*TP*CP = {multiple}: pad the batch"
            )

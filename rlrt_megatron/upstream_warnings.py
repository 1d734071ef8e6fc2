"""Harmless upstream warnings, each silenced once at its source, by its exact text.

Nothing here hides a message by level or by logger alone: every filter names the message, and
the comment beside it says why that message is expected and harmless in this project.
Dependency-free (standard library only), so any layer may install the filters.

1. vLLM's layerwise weight reload (``vllm.model_executor.model_loader.reload.layerwise``,
   ``finalize_layerwise_processing``) warns ``"<Layer>: Failed to load weights"`` for every layer
   that had loadable tensors but received none during a reload, and puts the layer's previous
   tensors back. Our weight sync (`rlrt_megatron.rollout.weights.WeightUpdateExtension`) sends the
   checkpoint's tensors only, so on every sync:

   * the rotary embedding (``RotaryEmbedding``; ``YaRNScalingRotaryEmbedding`` with YaRN rope
     scaling) reports it: its only tensor is the non-persistent ``cos_sin_cache`` buffer, computed
     from the config (θ, head size, positions), never part of a checkpoint and never trained. The
     old cache put back is the right one.
   * with tied embeddings, the output layer (``ParallelLMHead``) reports it: the checkpoint has no
     ``lm_head.weight`` (it *is* ``embed_tokens.weight``), which the sync does send.
     `WeightUpdateExtension` re-derives the head's kernel data from the updated embedding after
     the reload (``_refresh_tied_lm_head``). Without tied embeddings the head is sent (the sync's
     manifest requires it) and this message would mean a real failure: it is not filtered then.

2. megatron-core (and mbridge) warn at import time, once per process, that Apex and/or
   Transformer Engine are missing and that they fall back to local implementations (torch norm,
   torch AdamW/SGD, local ``multi_tensor_applier``). This project never uses Apex: the model is
   built from mbridge's local spec (torch norms) or the Transformer Engine spec on GPUs, and the
   optimizer state layout is handled for the torch optimizers (`rlrt_megatron.megatron.checkpoint`).
   So the Apex-only message is always dropped. The "Transformer Engine and Apex are not installed"
   messages are dropped only under a CPU build of torch (the CPU stack, for which no Transformer
   Engine build exists); with a CUDA build they stay, since there they report a missing install
   that FP8 / context parallel need (`rlrt check-env` says the same).

3. Ray (2.60) logs a WARNING at every ``ray.init`` that starts a local cluster with a stored
   token: "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to
   opt out ...". It reports its default, secure setting (the one this project wants), once per
   run, on the console of every `rlrt train`. Dropped by its exact opening text on its logger
   (`RAY_AUTH_LOGGER`) when the console is quiet (`init_ray(quiet=True)`); the opposite
   warning ("Token authentication is *disabled*", a real exposure) always stays.
"""

from __future__ import annotations

import logging
import re
import warnings

VLLM_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
"""The logger of vLLM's layerwise reload, which emits ``"%s: Failed to load weights"``."""

FAILED_TO_LOAD = "{layer}: Failed to load weights"
ROTARY_LAYERS = frozenset({"RotaryEmbedding", "YaRNScalingRotaryEmbedding"})
"""vLLM's rope layers for Qwen3 (plain and YaRN-scaled): a config-derived cache, no weights."""
TIED_HEAD_LAYER = "ParallelLMHead"

APEX_NORM_WARNING = "Apex is not installed. Falling back to Torch Norm"
TE_APEX_WARNINGS = (
    "Transformer Engine and Apex are not installed. Falling back to Torch optimizers.",
    "Transformer Engine and Apex are not installed. Falling back to local implementations of "
    "multi_tensor_applier and multi_tensor_scale",
    "Transformer Engine and Apex are not installed. Falling back to local implementations of "
    "multi_tensor_applier, multi_tensor_l2norm, and multi_tensor_scale",
)
# Where those warnings are raised: megatron-core's modules and mbridge's model files.
_WARNING_MODULES = r"(megatron|mbridge)(\..*)?\Z"


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_AUTH_ENABLED = "Token authentication is enabled for this Ray cluster."


class MessagePrefixFilter(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``; passes the others."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge: let logging report it
            return True
        return not message.startswith(self.prefixes)


def silence_ray_auth_notice() -> None:
    """Drop Ray's "token authentication is enabled" notice (item 3 of the module docstring);
    idempotent."""
    logger = logging.getLogger(RAY_AUTH_LOGGER)
    if not any(isinstance(f, MessagePrefixFilter) for f in logger.filters):
        logger.addFilter(MessagePrefixFilter(RAY_AUTH_ENABLED))


class UnloadedLayerFilter(logging.Filter):
    """Drops vLLM's "Failed to load weights" records of the layers that are expected to get no
    weights in a sync (see the module docstring); passes every other record."""

    def __init__(self, *, tied_embeddings: bool) -> None:
        super().__init__()
        layers = set(ROTARY_LAYERS)
        if tied_embeddings:
            layers.add(TIED_HEAD_LAYER)
        self.tied_embeddings = tied_embeddings
        self.dropped = frozenset(FAILED_TO_LOAD.format(layer=layer) for layer in layers)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge: let logging report it
            return True
        return message not in self.dropped


def install_weight_reload_filter(*, tied_embeddings: bool) -> UnloadedLayerFilter:
    """Attach an `UnloadedLayerFilter` to vLLM's reload logger (replacing one installed before,
    so calling it before every sync is cheap and never stacks filters)."""
    logger = logging.getLogger(VLLM_RELOAD_LOGGER)
    for existing in list(logger.filters):
        if isinstance(existing, UnloadedLayerFilter):
            if existing.tied_embeddings == tied_embeddings:
                return existing
            logger.removeFilter(existing)
    new = UnloadedLayerFilter(tied_embeddings=tied_embeddings)
    logger.addFilter(new)
    return new


def megatron_fallback_messages(*, cpu_torch: bool) -> tuple[str, ...]:
    """The exact import-time warning texts silenced (see the module docstring)."""
    return (APEX_NORM_WARNING, *TE_APEX_WARNINGS) if cpu_torch else (APEX_NORM_WARNING,)


def silence_megatron_fallback_warnings(*, cpu_torch: bool | None = None) -> None:
    """Add ``ignore`` filters for `megatron_fallback_messages`, raised from megatron/mbridge
    modules only; call it before megatron-core is first imported (the warnings fire at import).
    ``cpu_torch`` defaults to whether the installed torch is a CPU build (``torch.version.cuda``
    is None; asked without touching a GPU driver)."""
    if cpu_torch is None:
        import torch

        cpu_torch = torch.version.cuda is None
    for text in megatron_fallback_messages(cpu_torch=cpu_torch):
        # warnings' `message` is a regex matched at the start: escape it and anchor the end.
        warnings.filterwarnings(
            "ignore", message=re.escape(text) + r"\Z", category=UserWarning, module=_WARNING_MODULES
        )

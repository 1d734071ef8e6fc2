"""HF Qwen3 <-> megatron-core weight conversion: mbridge's Qwen3 bridge, adapted.

mbridge 0.15.1 does the real work (QKV interleaving per query group, [gate; up] per TP shard of
``linear_fc1``, vocab padding, TP scatter on load, TP gather + PP broadcast on export) and was
checked here to be exact (fp32 logits vs HF to ~6e-6; exported weights bit-identical). We
subclass its ``Qwen3Bridge`` instead of writing a converter; the overrides are all it needed:

* **Layer spec.** It hard-codes the Transformer Engine spec (``NameError: TENorm`` without TE).
  We choose (``attention``): the TE spec ("te"), or the local megatron-core spec with its
  ``DotProductAttention`` ("local") or with PyTorch SDPA as core attention ("sdpa", see
  :mod:`~rlrt_megatron.models.sdpa_attention`); "auto" is TE when it imports, else SDPA.
* **Two more names.** The local spec keeps the norms as separate modules
  (``input_layernorm.weight``, ``pre_mlp_layernorm.weight``) where TE fuses them into
  ``linear_qkv`` / ``linear_fc1``: mapped to HF ``input_layernorm`` / ``post_attention_layernorm``.
* **RoPE theta.** transformers 5.x moved ``rope_theta`` into ``rope_parameters``; we take it from
  :class:`~rlrt_megatron.models.qwen3_checkpoint.Qwen3Checkpoint`, which reads either.
* **Tied embeddings.** Upstream edits the class-level ``_DIRECT_MAPPING`` in place, so one tied
  bridge makes every later bridge in the process map ``output_layer`` to ``embed_tokens``; we
  copy it per instance.
* **Config defaults.** Sequence parallel is an explicit choice (upstream turns it on whenever
  TP>1); ``masked_softmax_fusion`` (a CUDA kernel that bf16 would select) is off without CUDA.
* ``get_model`` calls ``.cuda()``: not used; :mod:`rlrt_megatron.models.qwen3_megatron` builds the
  model from this bridge's provider.

These override private methods: mbridge is pinned exactly (see pyproject.toml) and checked here.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import torch

from rlrt_megatron.models.qwen3_checkpoint import Qwen3Checkpoint

TESTED_MBRIDGE_VERSIONS = frozenset({"0.15.1"})


AttentionBackend = Literal["auto", "te", "sdpa", "local"]
ATTENTION_BACKENDS: tuple[str, ...] = typing.get_args(AttentionBackend)


def transformer_engine_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a TE build that fails at import (no CUDA)
        return False
    return True


def _check_mbridge_version() -> None:
    from importlib.metadata import version

    installed = version("mbridge")
    if installed not in TESTED_MBRIDGE_VERSIONS:
        raise RuntimeError(
            f"mbridge {installed} is installed; rlrt_megatron overrides private methods of "
            f"mbridge {', '.join(sorted(TESTED_MBRIDGE_VERSIONS))} (pip install 'mbridge==0.15.1')"
        )


def resolve_attention(attention: str) -> str:
    """ "auto" -> "te" when Transformer Engine imports, else "sdpa"; check the others."""
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, not {attention!r}")
    if attention == "auto":
        return "te" if transformer_engine_available() else "sdpa"
    if attention == "te" and not transformer_engine_available():
        raise ValueError(
            "attention='te' needs Transformer Engine (pip install 'transformer-engine[pytorch]'),"
            " which is not importable here; use 'sdpa' or 'local'"
        )
    return attention


def make_qwen3_bridge(
    checkpoint: Qwen3Checkpoint,
    *,
    dtype: torch.dtype,
    make_vocab_size_divisible_by: int,
    config_overrides: dict[str, Any],
    attention: str = "auto",
):
    """Build the bridge for the initialized model-parallel state (call after
    ``initialize_parallel``). ``make_vocab_size_divisible_by`` is the full multiple (already
    times TP); ``config_overrides`` go to megatron's TransformerConfig; ``attention`` picks the
    layer spec (see the module docstring)."""
    _check_mbridge_version()
    backend = resolve_attention(attention)
    from mbridge.models.qwen3 import Qwen3Bridge
    from transformers import AutoConfig

    class RlrtQwen3Bridge(Qwen3Bridge):
        # Local-spec norm names (see the module docstring). `pre_mlp_layernorm` contains "mlp",
        # so mbridge routes it through _MLP_MAPPING; `input_layernorm` through _OTHER_MAPPING.
        _MLP_MAPPING = {
            **Qwen3Bridge._MLP_MAPPING,
            "pre_mlp_layernorm.weight": [
                "model.layers.{layer_number}.post_attention_layernorm.weight"
            ],
        }
        _OTHER_MAPPING = {
            "input_layernorm.weight": ["model.layers.{layer_number}.input_layernorm.weight"],
        }

        def _adjust_mapping_for_shared_weights(self) -> None:
            self._DIRECT_MAPPING = dict(Qwen3Bridge._DIRECT_MAPPING)
            if checkpoint.tie_word_embeddings:
                self._DIRECT_MAPPING["output_layer.weight"] = "model.embed_tokens.weight"

        def _build_config(self):
            return self._build_base_config(qk_layernorm=True, **config_overrides)

        def _get_gptmodel_args(self) -> dict:
            return dict(
                vocab_size=checkpoint.vocab_size,
                max_sequence_length=checkpoint.max_position_embeddings,
                position_embedding_type="rope",
                rotary_base=checkpoint.rope_theta,
            )

        def _get_transformer_layer_spec(self, vp_stage: int | None = None):
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

            self.has_vp_stage = True  # read by the upstream provider
            spec = get_gpt_decoder_block_spec(
                self.config, use_transformer_engine=backend == "te", vp_stage=vp_stage
            )
            if backend == "sdpa":
                from rlrt_megatron.models.sdpa_attention import with_sdpa_core_attention

                spec = with_sdpa_core_attention(spec)
            return spec

    hf_config = AutoConfig.from_pretrained(checkpoint.path)
    return RlrtQwen3Bridge(
        hf_config, dtype=dtype, make_vocab_size_divisible_by=make_vocab_size_divisible_by
    )

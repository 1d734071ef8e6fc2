"""The model folder an evaluation loads: resolved from a run or checkpoint, validated before any
engine starts (a wrong folder should fail in a second, not after a minute of engine start-up)."""

from __future__ import annotations

import json
from pathlib import Path

from rlrt_megatron.megatron.checkpoint import CheckpointLoadError, resolve_hf_model
from rlrt_megatron.models.qwen3_checkpoint import CheckpointError, Qwen3Checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ModelFolderError(ValueError):
    """The model to evaluate is missing, incomplete, or inconsistent; the message says how."""


def resolve_eval_model(path: str | Path) -> Path:
    """The HF folder ``path`` designates (a HF folder, a checkpoint ``step_N``, a run's
    ``checkpoints/`` or a run folder: see `resolve_hf_model`), validated by `check_model_folder`."""
    try:
        folder = resolve_hf_model(path)
    except CheckpointLoadError as e:
        raise ModelFolderError(str(e)) from None
    check_model_folder(folder)
    return folder


def check_model_folder(folder: Path) -> Qwen3Checkpoint:
    """Raise `ModelFolderError` unless ``folder`` has a tokenizer, a valid Qwen3 config and
    safetensors weights whose names and shapes are what the config describes."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"{folder}: no tokenizer files ({' / '.join(TOKENIZER_FILES)})")
    try:
        checkpoint = Qwen3Checkpoint.from_folder(folder)
    except (CheckpointError, KeyError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{folder}: not a usable Qwen3 checkpoint ({e})") from None
    _check_weight_shapes(checkpoint)
    return checkpoint


def expected_shapes(c: Qwen3Checkpoint) -> dict[str, tuple[int, ...]]:
    """The HF tensor names and shapes a dense Qwen3 with this config holds (lm_head only when
    the embeddings are untied)."""
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    h, f = c.hidden_size, c.intermediate_size
    shapes = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, h)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "self_attn.q_norm.weight": (c.head_dim,),
                p + "self_attn.k_norm.weight": (c.head_dim,),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
            }
        )
    return shapes


def _check_weight_shapes(checkpoint: Qwen3Checkpoint) -> None:
    from safetensors import safe_open

    found: dict[str, tuple[int, ...]] = {}
    for file in checkpoint.weight_files:
        try:
            with safe_open(str(file), "pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    found[name] = tuple(f.get_slice(name).get_shape())
        except Exception as e:  # safetensors raises its own error types for a corrupt header
            raise ModelFolderError(f"{file}: unreadable safetensors file ({e})") from None
    expected = expected_shapes(checkpoint)
    config = checkpoint.path / "config.json"
    for name, shape in expected.items():
        if name not in found:
            raise ModelFolderError(
                f"{checkpoint.path}: weights lack {name}, which {config} implies"
                f" (num_hidden_layers={checkpoint.num_layers},"
                f" tie_word_embeddings={checkpoint.tie_word_embeddings})"
            )
        if found[name] != shape:
            raise ModelFolderError(
                f"{checkpoint.path}: {name} has shape {found[name]} but {config} implies {shape}"
                " (config.json does not match the weights)"
            )
    extra = sorted(n for n in found if n not in expected and n != "lm_head.weight")
    if extra:
        raise ModelFolderError(
            f"{checkpoint.path}: weights hold {len(extra)} tensors {config} does not describe,"
            f" e.g. {extra[:3]} (config.json does not match the weights)"
        )

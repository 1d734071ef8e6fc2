"""Qwen3 model shapes for planning: from a local ``config.json``, or a built-in table by name.

Planning happens on a login node, often before the checkpoint is downloaded, so the dense Qwen3
sizes are built in (from the published ``config.json`` files; the ``-Base`` checkpoints have the
same shapes as the post-trained ones). Parameter counts follow the megatron-core layout the actor
builds: fused QKV, SwiGLU ``linear_fc1`` = [gate; up], q/k RMSNorm over ``head_dim``, no biases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


class ShapeError(ValueError):
    """The model's shape could not be determined (unknown name, unreadable config.json)."""


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """Sizes of a dense Qwen3 decoder (HF ``config.json`` names in the comments)."""

    name: str
    hidden: int  # hidden_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads
    head_dim: int  # head_dim
    intermediate: int  # intermediate_size
    vocab: int  # vocab_size
    tied: bool  # tie_word_embeddings

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer: QKV, output projection, SwiGLU MLP, 2 RMSNorms over the
        hidden size and the q/k RMSNorms over ``head_dim``."""
        attention = self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden + 2 * self.head_dim
        return attention + mlp + norms

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        """All weights: layers, input embedding, final norm, and the LM head unless tied."""
        head = 0 if self.tied else self.embedding_params
        return self.layers * self.layer_params + self.embedding_params + self.hidden + head

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 K and V of one token over all layers (the vLLM KV cache), summed over TP."""
        return 2 * self.layers * self.kv_dim * 2


def _qwen3(name: str, hidden: int, layers: int, heads: int, intermediate: int, tied: bool):
    return ModelShape(
        name=name,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=8,
        head_dim=128,
        intermediate=intermediate,
        vocab=151936,
        tied=tied,
    )


# Every dense Qwen3 has 8 KV heads of dimension 128 and a 151936-entry (padded) vocabulary.
QWEN3_SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        _qwen3("Qwen3-0.6B", 1024, 28, 16, 3072, tied=True),
        _qwen3("Qwen3-1.7B", 2048, 28, 16, 6144, tied=True),
        _qwen3("Qwen3-4B", 2560, 36, 32, 9728, tied=True),
        _qwen3("Qwen3-4B-Instruct-2507", 2560, 36, 32, 9728, tied=True),
        _qwen3("Qwen3-4B-Thinking-2507", 2560, 36, 32, 9728, tied=True),
        _qwen3("Qwen3-8B", 4096, 36, 32, 12288, tied=False),
        _qwen3("Qwen3-14B", 5120, 40, 40, 17408, tied=False),
        _qwen3("Qwen3-32B", 5120, 64, 64, 25600, tied=False),
    )
}


def shape_from_config_json(path: str | Path) -> ModelShape:
    """The shape from a HF ``config.json`` (file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShapeError(f"{path}: cannot read the model config ({error})") from None
    text = config.get("text_config", config)
    required = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    )
    missing = [k for k in required if k not in text]
    if missing:
        raise ShapeError(f"{path}: missing keys {missing}")
    heads = int(text["num_attention_heads"])
    return ModelShape(
        name=path.parent.name,
        hidden=int(text["hidden_size"]),
        layers=int(text["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or text["hidden_size"] // heads),
        intermediate=int(text["intermediate_size"]),
        vocab=int(text["vocab_size"]),
        tied=bool(text.get("tie_word_embeddings", False)),
    )


def shape_by_name(model_path: str) -> ModelShape:
    """The built-in shape whose name the last component of ``model_path`` names: a ``-Base``
    suffix and letter case are ignored (``models/Qwen3-8B-Base`` → Qwen3-8B)."""
    leaf = Path(model_path.rstrip("/")).name
    key = re.sub(r"-base$", "", leaf, flags=re.IGNORECASE).lower()
    for name, shape in QWEN3_SHAPES.items():
        if name.lower() == key:
            return shape
    raise ShapeError(
        f"model.path {model_path!r}: no config.json there and {leaf!r} is not a known Qwen3 "
        f"size ({', '.join(QWEN3_SHAPES)}, optionally with -Base)"
    )


def resolve_shape(model_path: str) -> tuple[ModelShape, str]:
    """The shape for ``model.path`` and where it came from (``config.json`` path or "table")."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        return shape_from_config_json(config), str(config)
    return shape_by_name(model_path), "built-in Qwen3 table"

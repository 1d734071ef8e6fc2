"""A Hugging Face Qwen3 checkpoint folder: read, validate, and check a Megatron layout against it.

Pure file and arithmetic checks, no process groups: call :func:`validate_qwen3_layout` before
starting process groups so that a wrong folder or layout fails in seconds, on every rank, with a
message naming the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURE = "Qwen3ForCausalLM"
DEFAULT_VOCAB_DIVISIBLE_BY = 128  # Megatron's --make-vocab-size-divisible-by default


class CheckpointError(ValueError):
    """The folder is not a usable Qwen3 checkpoint, or the layout does not fit the model."""


@dataclass(frozen=True)
class Qwen3Checkpoint:
    """The architecture facts of a dense Qwen3 checkpoint that Megatron needs."""

    path: Path
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int  # rows of the HF embedding table = width of the HF logits
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    weight_files: tuple[Path, ...]

    @classmethod
    def from_folder(cls, path: str | Path) -> Qwen3Checkpoint:
        """Read and validate ``config.json`` and the safetensors files of ``path``."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a directory (expected a HF checkpoint folder)")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path} has no config.json: not a Hugging Face model folder")
        config = json.loads(config_file.read_text())
        _check_architecture(config, config_file)
        weight_files = _weight_files(path)
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        return cls(
            path=path,
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            num_attention_heads=config["num_attention_heads"],
            num_key_value_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            head_dim=head_dim,
            intermediate_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            max_position_embeddings=config["max_position_embeddings"],
            rope_theta=_rope_theta(config, config_file),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            weight_files=weight_files,
        )

    def check_layout(self, tensor_parallel: int, pipeline_parallel: int) -> None:
        """Raise :class:`CheckpointError` if TP/PP cannot split this model."""
        problems = []
        if self.num_attention_heads % tensor_parallel:
            problems.append(
                f"TP={tensor_parallel} does not divide num_attention_heads="
                f"{self.num_attention_heads}"
            )
        if self.num_key_value_heads % tensor_parallel:
            problems.append(
                f"TP={tensor_parallel} does not divide num_key_value_heads="
                f"{self.num_key_value_heads} (Megatron splits whole query groups across TP)"
            )
        if self.num_layers % pipeline_parallel:
            problems.append(
                f"PP={pipeline_parallel} does not divide num_hidden_layers={self.num_layers}"
            )
        if problems:
            raise CheckpointError(f"{self.path}: " + "; ".join(problems))

    def padded_vocab_size(
        self, tensor_parallel: int, divisible_by: int = DEFAULT_VOCAB_DIVISIBLE_BY
    ) -> int:
        """Megatron's vocab for this model at TP=``tensor_parallel``: ``vocab_size`` rounded up to
        a multiple of ``divisible_by * tensor_parallel``. Logit columns from ``vocab_size`` on
        belong to zero rows of the output layer and must be masked by log-prob/sampling code."""
        return pad_vocab_size(self.vocab_size, tensor_parallel, divisible_by)


def pad_vocab_size(
    vocab_size: int, tp_size: int = 1, divisible_by: int = DEFAULT_VOCAB_DIVISIBLE_BY
) -> int:
    """Megatron's padded vocabulary: ``vocab_size`` rounded up to a multiple of divisible_by·tp."""
    multiple = divisible_by * tp_size
    return int(math.ceil(vocab_size / multiple) * multiple)


def validate_qwen3_layout(
    path: str | Path, tensor_parallel: int = 1, pipeline_parallel: int = 1
) -> Qwen3Checkpoint:
    """Validate the folder and that TP/PP divide the model; safe before torch.distributed."""
    checkpoint = Qwen3Checkpoint.from_folder(path)
    checkpoint.check_layout(tensor_parallel, pipeline_parallel)
    return checkpoint


def _check_architecture(config: dict[str, Any], config_file: Path) -> None:
    architectures = config.get("architectures") or []
    if architectures != [SUPPORTED_ARCHITECTURE]:
        raise CheckpointError(
            f"{config_file}: architectures={architectures}, but only {SUPPORTED_ARCHITECTURE} "
            "(dense Qwen3) is supported"
        )
    unsupported = {
        "attention_bias": (config.get("attention_bias", False), False),
        "use_sliding_window": (config.get("use_sliding_window", False), False),
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
    }
    for key, (value, expected) in unsupported.items():
        if value != expected:
            raise CheckpointError(f"{config_file}: {key}={value!r} is not supported")


def _rope_theta(config: dict[str, Any], config_file: Path) -> float:
    # transformers >= 5 writes {"rope_parameters": {"rope_type", "rope_theta"}}; 4.x writes
    # rope_theta (and rope_scaling) at the top level.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(
            f"{config_file}: rope type {rope_type!r} (RoPE scaling) is not supported, only plain "
            "RoPE"
        )
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise CheckpointError(f"{config_file}: no rope_theta (top level or in rope_parameters)")
    return float(theta)


def _weight_files(path: Path) -> tuple[Path, ...]:
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text()).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{path}: shards listed in model.safetensors.index.json are missing: {missing}"
            )
        if not shards:
            raise CheckpointError(f"{index_file} lists no weights")
        return tuple(path / s for s in shards)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{path} has no *.safetensors weights (and no model.safetensors.index.json); "
            "pytorch_model*.bin checkpoints are not supported"
        )
    return tuple(files)

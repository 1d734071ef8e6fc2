"""The tensors a full weight update must carry, read from a checkpoint's safetensors headers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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

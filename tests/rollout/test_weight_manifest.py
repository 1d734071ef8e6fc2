"""`WeightManifest`: the one check of a sync's names, shapes and completeness (every transport)."""

from __future__ import annotations

import pytest

from rlrt_megatron.rollout.weights import WeightManifest

MANIFEST = WeightManifest(
    shapes={
        "model.embed_tokens.weight": (8, 4),
        "model.norm.weight": (4,),
        "lm_head.weight": (8, 4),
    },
    optional=frozenset({"lm_head.weight"}),  # tied embeddings: may be sent, need not be
)


def test_a_full_stream_passes_with_or_without_the_optional_tensor():
    MANIFEST.require_complete({"model.embed_tokens.weight", "model.norm.weight"})
    MANIFEST.require_complete(set(MANIFEST.shapes))
    assert MANIFEST.missing({"model.norm.weight"}) == ["model.embed_tokens.weight"]


def test_a_stream_lacking_a_tensor_names_it():
    with pytest.raises(
        ValueError, match=r"lacks 1 of the model's tensors, e.g. \['model.norm.weight'\]"
    ):
        MANIFEST.require_complete({"model.embed_tokens.weight", "lm_head.weight"})


def test_unknown_names_and_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="is not a weight of the engine's model"):
        MANIFEST.check("model.layers.0.mlp.weight", (4,))
    with pytest.raises(ValueError, match=r"shape \(4, 8\) does not match the engine's \(8, 4\)"):
        MANIFEST.check("model.embed_tokens.weight", (4, 8))

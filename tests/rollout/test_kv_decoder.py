"""`Qwen3KVDecoder` against transformers' Qwen3ForCausalLM: same logits (float32) for a full
forward, for a prefill followed by one-token steps from the cache, and for left-padded rows."""

from __future__ import annotations

import json

import pytest
import torch

from rlrt_megatron.rollout.kv_decoder import Qwen3KVDecoder, UnsupportedModelError

TOL = 2e-5


def _hf_and_decoder(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = json.loads((folder / "config.json").read_text())
    weights = dict(model.state_dict())
    if config.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)  # as export_hf_weights yields a tied checkpoint
    return model, Qwen3KVDecoder(weights, config), config


@pytest.mark.parametrize("tied", [True, False])
def test_full_forward_and_cached_steps_match_hf(tiny_qwen3_dir, tiny_qwen3_untied_dir, tied):
    model, decoder, config = _hf_and_decoder(tiny_qwen3_dir if tied else tiny_qwen3_untied_dir)
    ids = torch.randint(3, 400, (3, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    positions = torch.arange(14).expand(3, 14)
    key_mask = torch.ones(3, 20, dtype=torch.bool)
    cache = decoder.new_cache(3, 20)
    prefill = decoder.forward(
        ids[:, :9], positions[:, :9], cache, start=0, key_mask=key_mask, last_only=False
    )
    assert prefill.shape == (3, 9, config["vocab_size"])
    torch.testing.assert_close(prefill, reference[:, :9], atol=TOL, rtol=0)
    for t in range(9, 14):
        step = decoder.forward(
            ids[:, t : t + 1], positions[:, t : t + 1], cache, start=t, key_mask=key_mask
        )
        torch.testing.assert_close(step, reference[:, t], atol=TOL, rtol=0)


def test_left_padded_rows_match_their_unpadded_forward(tiny_qwen3_dir):
    model, decoder, _ = _hf_and_decoder(tiny_qwen3_dir)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 400, (n,), generator=g) for n in (7, 4, 10)]
    longest, extra = 10, 3
    ids = torch.zeros(3, longest, dtype=torch.long)
    key_mask = torch.zeros(3, longest + extra, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, longest - len(r) :] = r
        key_mask[i, longest - len(r) : longest] = True
    positions = (key_mask[:, :longest].long().cumsum(-1) - 1).clamp(min=0)
    cache = decoder.new_cache(3, longest + extra)
    last = decoder.forward(ids, positions, cache, start=0, key_mask=key_mask)
    next_ids = torch.randint(3, 400, (3, extra), generator=g)
    steps = []
    for t in range(extra):
        key_mask[:, longest + t] = True
        steps.append(
            decoder.forward(
                next_ids[:, t : t + 1],
                positions[:, -1:] + 1 + t,
                cache,
                start=longest + t,
                key_mask=key_mask,
            )
        )
    for i, r in enumerate(rows):
        with torch.no_grad():
            reference = model(torch.cat([r, next_ids[i]])[None]).logits[0]
        torch.testing.assert_close(last[i], reference[len(r) - 1], atol=TOL, rtol=0)
        for t in range(extra):
            torch.testing.assert_close(steps[t][i], reference[len(r) + t], atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"model_type": "llama"}, "model_type"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"use_sliding_window": True}, "use_sliding_window"),
    ],
)
def test_unsupported_checkpoints_are_refused_by_name(tiny_qwen3_dir, change, named):
    model, _, config = _hf_and_decoder(tiny_qwen3_dir)
    with pytest.raises(UnsupportedModelError, match=named):
        Qwen3KVDecoder(dict(model.state_dict()), {**config, **change})


def test_missing_weight_is_named(tiny_qwen3_dir):
    model, _, config = _hf_and_decoder(tiny_qwen3_dir)
    weights = dict(model.state_dict())
    del weights["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(UnsupportedModelError, match="model.layers.1.mlp.up_proj.weight"):
        Qwen3KVDecoder(weights, config)

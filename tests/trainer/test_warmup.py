"""The SFT warm-up: the loss falls, only response tokens are trained, the folder reloads."""

from __future__ import annotations

import pytest
import torch

from rlrt_megatron.data.synthetic import generate_problems
from rlrt_megatron.trainer.warmup import WarmupConfig, collate, encode_example, sft_warmup

CONFIG = WarmupConfig(steps=12, batch_size=8, lr=3e-3, warmup_steps=2, seed=3)


@pytest.fixture(scope="module")
def pairs():
    return [(p.question, p.solution) for p in generate_problems(16, seed=0, levels=(1, 2))]


@pytest.fixture(scope="module")
def warmed(tiny_qwen3_dir, pairs, tmp_path_factory):
    return sft_warmup(tiny_qwen3_dir, tmp_path_factory.mktemp("sft"), pairs, CONFIG)


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def mean_response_loss(model_dir, tokenizer, pairs) -> float:
    """Token-mean cross-entropy over the response tokens of all pairs, recomputed from scratch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, attn, labels = collate(
        [encode_example(tokenizer, q, a) for q, a in pairs], tokenizer.pad_token_id
    )
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    ).item()


def test_encode_example_matches_chat_template_and_ends_with_eos(tokenizer):
    ids, start = encode_example(tokenizer, "Compute 1+2.", "1+2 = 3. \\boxed{3}")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 1+2."}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(ids[:start]) == rendered
    assert tokenizer.decode(ids[start:-1]) == "1+2 = 3. \\boxed{3}"
    assert ids[-1] == tokenizer.eos_token_id


def test_collate_masks_prompt_and_padding(tokenizer):
    short = encode_example(tokenizer, "Compute 1+2.", "3")
    long = encode_example(tokenizer, "Compute 10+20+30.", "10+20+30 = 30+30 = 60. \\boxed{60}")
    ids, attn, labels = collate([short, long], pad_id=tokenizer.pad_token_id)
    (s_ids, s_start), (l_ids, l_start) = short, long
    assert ids.shape == labels.shape == attn.shape == (2, len(l_ids))
    assert attn[0].sum().item() == len(s_ids) and attn[1].sum().item() == len(l_ids)
    assert labels[0, :s_start].eq(-100).all() and labels[0, len(s_ids) :].eq(-100).all()
    assert labels[0, s_start : len(s_ids)].tolist() == s_ids[s_start:]
    assert labels[1, l_start:].tolist() == l_ids[l_start:]


def test_sft_lowers_the_response_loss(warmed, tiny_qwen3_dir, tokenizer, pairs):
    assert len(warmed.losses) == CONFIG.steps and warmed.seconds > 0
    before = mean_response_loss(tiny_qwen3_dir, tokenizer, pairs)
    after = mean_response_loss(warmed.out_dir, tokenizer, pairs)
    # 12 steps at lr 3e-3 take the random model's ~6 nats well below half on its training set.
    assert after < 0.6 * before, (before, after)
    assert sum(warmed.losses[-3:]) < sum(warmed.losses[:3])


def test_saved_folder_is_a_complete_checkpoint(warmed, tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = warmed.out_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    assert model.config.to_dict()["hidden_size"] == base.config.hidden_size
    # The weights were trained: the embedding moved away from the random initialisation.
    moved = model.get_input_embeddings().weight - base.get_input_embeddings().weight
    assert moved.abs().max().item() > 1e-3


def test_same_seed_gives_same_weights(warmed, tiny_qwen3_dir, pairs, tmp_path):
    from safetensors.torch import load_file

    config = WarmupConfig(steps=3, batch_size=8, lr=3e-3, warmup_steps=2, seed=3)
    a = sft_warmup(tiny_qwen3_dir, tmp_path / "a", pairs, config)
    b = sft_warmup(tiny_qwen3_dir, tmp_path / "b", pairs, config)
    assert a.losses == b.losses == warmed.losses[:3]
    wa, wb = load_file(a.out_dir / "model.safetensors"), load_file(b.out_dir / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupConfig(**kwargs)


def test_bad_inputs_are_rejected(tiny_qwen3_dir, tmp_path, tokenizer):
    with pytest.raises(ValueError, match="pairs"):
        sft_warmup(tiny_qwen3_dir, tmp_path / "x", [], CONFIG)
    with pytest.raises(ValueError, match="out_dir"):
        sft_warmup(tiny_qwen3_dir, tiny_qwen3_dir, [("a", "b")], CONFIG)
    with pytest.raises(ValueError, match="non-empty"):
        encode_example(tokenizer, "Compute 1+2.", "")

"""Fakes the RL loop's unit tests share (tests/trainer/test_on_policy_shortcut.py,
test_one_step_off.py): a character tokenizer with a chat template, a grader that checks the
boxed answer, and templated prompts whose ground truth is 2."""

from __future__ import annotations

from types import SimpleNamespace

from rlrt_megatron.data.records import PromptRecord
from rlrt_megatron.trainer.prompts import TemplatedPrompt


class FakeTokenizer:
    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **_):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 50 for c in text]


class FakeRewards:
    """1 when the response holds ``\\boxed{<truth>}``."""

    def grade(self, texts, truths):
        scores = [float(f"\\boxed{{{t}}}" in x) for x, t in zip(texts, truths, strict=True)]
        return SimpleNamespace(scores=scores, statuses=["ok"] * len(texts))


def templated_prompts(n: int) -> list[TemplatedPrompt]:
    """``n`` prompts "g+(2-g)?" (answer 2) with distinct ids."""
    return [
        TemplatedPrompt(
            record=PromptRecord(
                prompt=[{"role": "user", "content": f"{g}+{2 - g}?"}],
                ground_truth="2",
                solution="1+1 = \\boxed{2}",
            ),
            ids=[1, 2, 3 + g],
        )
        for g in range(n)
    ]

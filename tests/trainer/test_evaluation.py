from dataclasses import dataclass

import numpy as np
import pytest

from rlrt_megatron.data.records import PromptRecord
from rlrt_megatron.rollout.sampling import Sample, SamplingConfig
from rlrt_megatron.trainer.evaluation import evaluate, evaluate_per_prompt, paired_difference
from rlrt_megatron.trainer.prompts import TemplatedPrompt


class ScriptedEngines:
    """Answers prompt i with the texts scripted for it (stands in for the engine pool)."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, sampling):
        return [
            [
                Sample(
                    token_ids=[1] * (j + 1),
                    logprobs=[0.0] * (j + 1),
                    finish_reason="stop",
                    text=text,
                    weight_version=0,
                )
                for j, text in enumerate(self.answers[i])
            ]
            for i in range(len(prompts))
        ]


@dataclass
class Graded:
    scores: list


class ExactRewards:
    def grade(self, responses, truths):
        return Graded(
            [float(r == f"\\boxed{{{t}}}") for r, t in zip(responses, truths, strict=True)]
        )


def test_accuracy_and_pass_at_n():
    prompts = [
        TemplatedPrompt(PromptRecord(prompt=[{"role": "user", "content": q}], ground_truth=a), [1])
        for q, a in (("1+1", "2"), ("2+2", "4"))
    ]
    engines = ScriptedEngines([["\\boxed{2}", "\\boxed{3}"], ["\\boxed{5}", "\\boxed{6}"]])
    result = evaluate(engines, ExactRewards(), prompts, SamplingConfig(n=2))
    assert result["accuracy"] == pytest.approx(0.25)
    assert result["pass@2"] == pytest.approx(0.5)
    assert result["response_length"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate(engines, ExactRewards(), [], SamplingConfig())


def test_per_prompt_accuracy():
    prompts = [
        TemplatedPrompt(PromptRecord(prompt=[{"role": "user", "content": q}], ground_truth=a), [1])
        for q, a in (("1+1", "2"), ("2+2", "4"))
    ]
    engines = ScriptedEngines([["\\boxed{2}", "\\boxed{2}"], ["\\boxed{4}", "\\boxed{6}"]])
    metrics, per_prompt = evaluate_per_prompt(engines, ExactRewards(), prompts, SamplingConfig(n=2))
    np.testing.assert_allclose(per_prompt, [1.0, 0.5])
    assert metrics["accuracy"] == pytest.approx(0.75)


def test_paired_difference_by_hand():
    # d = [0.5, 0.0, 0.25, -0.25]: mean 0.125, squared deviations sum 0.3125, sample variance
    # 0.3125 / 3, se = sqrt(0.3125 / 3) / 2.
    result = paired_difference([0.0, 0.5, 0.25, 0.5], [0.5, 0.5, 0.5, 0.25])
    assert result["delta"] == pytest.approx(0.125)
    assert result["se"] == pytest.approx(np.sqrt(0.3125 / 3) / 2)
    assert result["z"] == pytest.approx(0.125 / (np.sqrt(0.3125 / 3) / 2))
    assert paired_difference([0.1, 0.2], [0.1, 0.2]) == {"delta": 0.0, "se": 0.0, "z": 0.0}
    assert paired_difference([0.0, 0.25], [0.5, 0.75])["z"] == float("inf")
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([0.1, 0.2], [0.1])


def test_the_pass_at_k_curve_is_reported_for_powers_of_two_up_to_n():
    # One prompt, 4 samples, 1 correct: pass@k = 1 - C(3, k) / C(4, k) = k / 4 (hand-computed).
    prompts = [
        TemplatedPrompt(
            PromptRecord(prompt=[{"role": "user", "content": "1+1"}], ground_truth="2"), [1]
        )
    ]
    engines = ScriptedEngines([["\\boxed{2}", "\\boxed{3}", "\\boxed{5}", "\\boxed{7}"]])
    result = evaluate(engines, ExactRewards(), prompts, SamplingConfig(n=4))
    assert {k: result[f"pass@{k}"] for k in (1, 2, 4)} == pytest.approx({1: 0.25, 2: 0.5, 4: 1.0})
    assert result["pass@1"] == pytest.approx(result["accuracy"])
    assert not any(key in result for key in ("pass@3", "pass@8"))

from dataclasses import dataclass

import pytest

from rlrt_megatron.data.records import PromptRecord
from rlrt_megatron.rollout.sampling import Sample, SamplingConfig
from rlrt_megatron.trainer.evaluation import evaluate
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

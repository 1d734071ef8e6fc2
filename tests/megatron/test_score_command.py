"""``rlrt score`` against a single-process Hugging Face reference, and its input errors.

The reference runs ``Qwen3ForCausalLM`` in float32 on prompt ⊕ response (and teacher prompt ⊕
response): log-softmax at the response tokens, entropy, and KL(P_S ‖ P_T) between the two views
at each response position. The command runs through ``rlrt_megatron.cli.main`` at TP=1, TP=2 and
PP=2 (spawned gloo workers) and must match within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlrt_megatron.cli import main
from rlrt_megatron.teacher.templates import PEER_TEMPLATE

TOLERANCE = 1e-4

PROMPT_IDS = [5, 17, 42, 99, 3, 250, 7]
TEACHER_PROMPT_IDS = [11, 12, 13, 5, 17, 42, 99, 3, 250, 7, 400]
RESPONSE_IDS = [8, 300, 23, 1, 499]
LINES = [
    {"prompt": "What is 2 + 3?", "response": "The answer is 5.", "context": None},
    {
        "prompt": "Name a prime number larger than ten.",
        "response": "Eleven is prime, and so is 13; both are larger than ten.",
        "context": "13 is prime because it has no divisors besides 1 and itself.",
    },
    {"prompt_ids": PROMPT_IDS, "response_ids": RESPONSE_IDS, "teacher_prompt_ids": None},
    {
        "prompt_ids": PROMPT_IDS,
        "response_ids": RESPONSE_IDS[:3],
        "teacher_prompt_ids": TEACHER_PROMPT_IDS,
    },
    {"prompt": "Hi", "response": "Hello there", "context": "Greet back."},
]


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _reference_ids(folder: Path) -> list[tuple[list[int], list[int], list[int] | None]]:
    """(prompt, response, teacher prompt) ids of LINES, built directly with the tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def chat(text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer.encode(rendered, add_special_tokens=False)

    out = []
    for line in LINES:
        if "prompt_ids" in line:
            out.append((line["prompt_ids"], line["response_ids"], line["teacher_prompt_ids"]))
            continue
        response = tokenizer.encode(line["response"], add_special_tokens=False)
        teacher = None
        if line["context"] is not None:
            teacher = chat(PEER_TEMPLATE.format(prompt=line["prompt"], context=line["context"]))
        out.append((chat(line["prompt"]), response, teacher))
    return out


def _hf_reference(folder: Path) -> list[dict]:
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    def log_probs(prompt: list[int], response: list[int]) -> torch.Tensor:
        """[len(response), V] log P(· | prefix) at each response position."""
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) + len(response) - 1], -1)

    refs = []
    for prompt, response, teacher in _reference_ids(folder):
        index = torch.tensor(response)[:, None]
        student = log_probs(prompt, response)
        ref = {
            "token_ids": response,
            "logprobs": student.gather(-1, index)[:, 0],
            "entropy": -(student.exp() * student).sum(-1),
            "teacher_logprobs": None,
            "kl": None,
        }
        if teacher is not None:
            view = log_probs(teacher, response)
            ref["teacher_logprobs"] = view.gather(-1, index)[:, 0]
            ref["kl"] = (student.exp() * (student - view)).sum(-1)
        refs.append(ref)
    return refs


def _max_diff(output: Path, refs: list[dict]) -> float:
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(refs)
    worst = 0.0
    for row, ref in zip(rows, refs, strict=True):
        assert row["token_ids"] == ref["token_ids"]
        assert len(row["tokens"]) == len(ref["token_ids"])
        assert all(isinstance(t, str) for t in row["tokens"])
        for key in ("logprobs", "entropy", "teacher_logprobs", "kl"):
            if ref[key] is None:
                assert row[key] is None, key
                continue
            got = torch.tensor(row[key])
            assert got.shape == ref[key].shape, key
            worst = max(worst, (got - ref[key]).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def score_inputs(tmp_path_factory, tiny_qwen3_dir, tiny_qwen3_untied_dir):
    folder = tmp_path_factory.mktemp("score")
    data = _write_jsonl(folder / "in.jsonl", LINES)
    return {
        "data": data,
        "folder": folder,
        "tied": (tiny_qwen3_dir, _hf_reference(tiny_qwen3_dir)),
        "untied": (tiny_qwen3_untied_dir, _hf_reference(tiny_qwen3_untied_dir)),
    }


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("model", "tp", "pp", "cp"),
    [
        ("tied", 1, 1, 1),
        ("tied", 2, 1, 1),
        ("tied", 1, 2, 1),
        ("untied", 1, 1, 1),
        ("tied", 1, 1, 2),
    ],
    ids=["tied-tp1", "tied-tp2", "tied-pp2", "untied-tp1", "tied-cp2"],
)
def test_score_matches_hf(score_inputs, model, tp, pp, cp, capsys):
    folder, refs = score_inputs[model]
    output = score_inputs["folder"] / f"out-{model}-tp{tp}-pp{pp}-cp{cp}.jsonl"
    argv = ["score", "--model", str(folder), "--data", str(score_inputs["data"])]
    argv += ["--output", str(output), "--tp", str(tp), "--pp", str(pp), "--cp", str(cp)]
    assert main([*argv, "--timeout", "300"]) == 0, capsys.readouterr().err
    diff = _max_diff(output, refs)
    print(f"max |diff| vs HF ({model}, TP={tp}, PP={pp}, CP={cp}): {diff:.3g}")
    assert diff <= TOLERANCE


# ----------------------------------------------------------------------------------------------
# Input errors: reported before any worker starts, naming the file and line.
# ----------------------------------------------------------------------------------------------

GOOD = {"prompt": "Hi", "response": "Hello", "context": None}
BAD_LINES = {
    "malformed": ('{"prompt": "Hi", "response": ', "malformed JSON"),
    "missing-prompt": (json.dumps({"response": "Hello"}), "missing key 'prompt'"),
    "missing-response": (json.dumps({"prompt": "Hi"}), "missing key 'response'"),
    "empty-response": (json.dumps({"prompt": "Hi", "response": ""}), "empty response"),
    "empty-response-ids": (
        json.dumps({"prompt_ids": [1, 2], "response_ids": []}),
        "empty response",
    ),
    "id-out-of-vocab": (
        json.dumps({"prompt_ids": [1, 2], "response_ids": [3, 100000]}),
        "token id 100000 outside the vocabulary",
    ),
    "negative-id": (
        json.dumps({"prompt_ids": [-1, 2], "response_ids": [3]}),
        "token id -1 outside the vocabulary",
    ),
    "ids-not-ints": (
        json.dumps({"prompt_ids": [1, "2"], "response_ids": [3]}),
        "'prompt_ids' must be a list of integers",
    ),
    "too-long": (
        json.dumps({"prompt_ids": [1] * 1000, "response_ids": [2] * 30}),
        "longer than the model's max_position_embeddings 1024",
    ),
    "teacher-too-long": (
        json.dumps({"prompt_ids": [1], "response_ids": [2] * 30, "teacher_prompt_ids": [3] * 1000}),
        "teacher prompt + response is 1030 tokens",
    ),
    "context-with-ids": (
        json.dumps({"prompt_ids": [1], "response_ids": [2], "context": "x"}),
        "'context' needs the prompt as text",
    ),
    "not-object": ("[1, 2]", "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_input_names_the_line(tmp_path, tiny_qwen3_dir, capsys, case):
    text, message = BAD_LINES[case]
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps(GOOD) + "\n\n" + text + "\n")  # the bad line is line 3
    output = tmp_path / "out.jsonl"
    argv = ["score", "--model", str(tiny_qwen3_dir), "--data", str(data), "--output", str(output)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert f"{data}:3: " in err, err
    assert message in err, err
    assert "scoring" not in out  # no worker was started
    assert not output.exists()


def test_bad_layout_and_budget(tmp_path, tiny_qwen3_dir, capsys):
    data = _write_jsonl(tmp_path / "in.jsonl", [GOOD])
    base = ["score", "--model", str(tiny_qwen3_dir), "--data", str(data)]
    base += ["--output", str(tmp_path / "o.jsonl")]
    assert main([*base, "--tp", "3"]) == 1
    assert "TP=3 does not divide" in capsys.readouterr().err
    assert main([*base, "--cp", "0"]) == 1
    assert "must be >= 1, got --tp 1 --pp 1 --cp 0" in capsys.readouterr().err
    assert main([*base, "--cp", "2", "--no-packing"]) == 1
    assert "cannot be used with --no-packing" in capsys.readouterr().err
    assert main([*base, "--max-tokens", "4"]) == 1
    assert f"{data}:1: needs" in capsys.readouterr().err
    assert main([*base, "--teacher-template", "{prompt} only"]) == 1
    assert "must contain {context}" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main([*base[:3], "--data", str(empty), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "no rollouts" in capsys.readouterr().err


def test_raw_prompt_and_template_rendering(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    from rlrt_megatron.megatron.score_command import parse_score_line

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen3_dir))
    record = {"prompt": "Solve x.", "response": "x = 1", "context": "x is one"}
    raw = parse_score_line(
        record, "f:1", 1, tokenizer, raw_prompt=True, teacher_template="{context}|{prompt}"
    )
    assert raw.prompt_ids == tokenizer.encode("Solve x.", add_special_tokens=False)
    assert raw.teacher_prompt_ids == tokenizer.encode("x is one|Solve x.", add_special_tokens=False)
    assert raw.response_ids == tokenizer.encode("x = 1", add_special_tokens=False)
    chat = parse_score_line(record, "f:1", 1, tokenizer)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Solve x."}], tokenize=False, add_generation_prompt=True
    )
    assert chat.prompt_ids == tokenizer.encode(rendered, add_special_tokens=False)
    assert len(chat.teacher_prompt_ids) > len(chat.prompt_ids)

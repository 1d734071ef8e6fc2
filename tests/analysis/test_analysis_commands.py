"""``rlrt analyze heatmap|markers|shift`` end to end on the tiny Qwen3 (spawned gloo workers),
against a float32 Hugging Face reference of both views; and their input errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from _analysis_data import (
    check_heatmap_html,
    hf_log_probs,
    perturbed_copy,
    rollout_rows,
    write_jsonl,
)

import rlrt_megatron.analysis.commands  # noqa: F401  (registers `rlrt analyze`)
from rlrt_megatron.analysis.inputs import load_trajectories, open_model
from rlrt_megatron.cli import main

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("rollouts") / "r.jsonl", rollout_rows())


def _reference(model_dir: Path, data: Path):
    """Per trajectory: (ids, student [T, V], teacher [T, V]) log-probs from transformers."""
    model = open_model(model_dir)
    out = []
    for t in load_trajectories(data, model, need_teacher=True):
        r = t.request
        out.append(
            (
                r,
                hf_log_probs(model_dir, r.prompt_ids, r.response_ids),
                hf_log_probs(model_dir, r.teacher_prompt_ids, r.response_ids),
            )
        )
    return model, out


@pytest.mark.distributed
def test_heatmap_at_tp2_matches_the_reference(tiny_qwen3_dir, rollouts, tmp_path):
    out = tmp_path / "heatmap"
    args = ["analyze", "heatmap", "--model", str(tiny_qwen3_dir), "--data", str(rollouts)]
    assert main([*args, "--output", str(out), "--tp", "2", "--top", "3"]) == 0
    page = (out / "heatmap.html").read_text()
    collector = check_heatmap_html(page)
    # The response's "<script>" is shown as text: escaped pieces, no element.
    assert "<script" not in page and "&lt;" in page
    assert "<script>alert(1)</script>" in "".join(collector.text)
    data = json.loads((out / "heatmap.json").read_text())
    _, reference = _reference(tiny_qwen3_dir, rollouts)
    page_kl = iter(collector.kl)
    for row, (_, s, t) in zip(data, reference, strict=True):
        kl = (s.exp() * (s - t)).sum(-1)
        # The full view lists every token's D̄_t (then the zooms repeat some of them).
        shown = torch.tensor([next(page_kl) for _ in range(len(row["kl"]))])
        assert torch.allclose(shown, kl, atol=TOLERANCE)
        positions = [c["position"] for c in row["critical"]]
        assert positions == sorted(kl.topk(3).indices.tolist())
        for c in row["critical"]:
            gap = s[c["position"]].exp() - t[c["position"]].exp()
            # Union of both views' top-100 covers this whole 500-token vocabulary's extremes.
            assert c["explore"][0]["token_id"] == int(gap.argmax())
            assert c["exploit"][0]["token_id"] == int(gap.argmin())
            assert c["explore"][0]["gap"] == pytest.approx(float(gap.max()), abs=TOLERANCE)
        # Skip the zoomed copies of this trajectory's values.
        zoom = sum(
            min(len(row["kl"]), c["position"] + 13) - max(0, c["position"] - 12)
            for c in row["critical"]
        )
        for _ in range(zoom):
            next(page_kl)
    assert next(page_kl, None) is None
    assert (out / "heatmap_0.png").stat().st_size > 5000


@pytest.mark.distributed
def test_markers_corpora_match_the_reference(tiny_qwen3_dir, rollouts, tmp_path):
    out = tmp_path / "markers"
    args = ["analyze", "markers", "--model", str(tiny_qwen3_dir), "--data", str(rollouts)]
    extra = ["--min-count", "1", "--threshold", "1", "--no-stopwords"]
    assert main([*args, "--output", str(out), *extra]) == 0
    with (out / "markers.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    model, reference = _reference(tiny_qwen3_dir, rollouts)
    explore, exploit = Counter(), Counter()
    # Graded: rollout k = 0 of each problem is right, k = 1 wrong: all six are kept.
    for _, s, t in reference:
        for hi, lo in zip((s - t).argmax(-1).tolist(), (s - t).argmin(-1).tolist(), strict=True):
            for ids, corpus in ((hi, explore), (lo, exploit)):
                piece = model.tokenizer.decode([ids]).strip().lower()  # case-folded
                if piece:
                    corpus[piece] += 1
    assert {r["token"]: int(r["explore"]) for r in rows if int(r["explore"])} == dict(explore)
    assert {r["token"]: int(r["exploit"]) for r in rows if int(r["exploit"])} == dict(exploit)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollouts"] == 6 and summary["kept"] == sum(r["kept"] == "True" for r in rows)
    # App. D's bookkeeping: candidates (|z| >= 1 here) before and after filtering.
    candidates = summary["candidates"]
    significant = [r for r in rows if abs(float(r["z"])) >= 1]
    assert sum(candidates["before_filter"].values()) == len(significant)
    assert sum(candidates["after_filter"].values()) == summary["kept"]
    assert (out / "markers.md").read_text().startswith("| category |")
    assert (out / "volcano.png").stat().st_size > 5000


@pytest.mark.distributed
def test_shift_matches_the_reference(tiny_qwen3_dir, rollouts, tmp_path):
    finetuned = perturbed_copy(tiny_qwen3_dir, tmp_path / "finetuned")
    out = tmp_path / "shift"
    args = ["analyze", "shift", "--base", str(tiny_qwen3_dir), "--data", str(rollouts)]
    rc = main([*args, "--finetuned", str(finetuned), str(tiny_qwen3_dir), "--output", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())["finetuned"]
    same = summary[str(tiny_qwen3_dir)]
    assert same["js_mean"] < 1e-6 and same["shifted_positions"] == 0
    model = open_model(finetuned)
    js, ft_top1_base = [], []
    for t in load_trajectories(rollouts, model, need_teacher=False):
        r = t.request
        p = hf_log_probs(finetuned, r.prompt_ids, r.response_ids)
        q = hf_log_probs(tiny_qwen3_dir, r.prompt_ids, r.response_ids)
        m = torch.logaddexp(p, q) - torch.log(torch.tensor(2.0))
        js.append(0.5 * (p.exp() * (p - m)).sum(-1) + 0.5 * (q.exp() * (q - m)).sum(-1))
        ft_top1_base.append(q.gather(-1, p.argmax(-1, keepdim=True)).squeeze(-1))
    js, base_prob = torch.cat(js), torch.cat(ft_top1_base).exp()
    moved = summary[str(finetuned)]
    assert moved["positions"] == js.numel()
    assert moved["js_mean"] == pytest.approx(float(js.mean()), abs=TOLERANCE)
    assert moved["shifted_positions"] == int((js > 0.1).sum())
    shifted = js > 0.1
    expected = [float((base_prob[shifted] < x).float().mean()) for x in (1e-1, 1e-2, 1e-3, 1e-4)]
    assert moved["tail_promotion"]["fraction_below"] == pytest.approx(expected, abs=1e-6)
    assert (out / "shift.png").stat().st_size > 5000


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


def test_input_errors_name_the_item(tiny_qwen3_dir, tiny_qwen3_untied_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["--model", str(tiny_qwen3_dir), "--output", out]
    rows = rollout_rows()
    no_context = write_jsonl(tmp_path / "a.jsonl", [rows[0], {**rows[1], "context": None}])
    err = _error(capsys, ["analyze", "heatmap", *base, "--data", str(no_context)])
    assert f"{no_context}:2: no teacher context" in err
    bad_ids = write_jsonl(
        tmp_path / "b.jsonl",
        [{"prompt_ids": [1, 2], "response_ids": [3, 10_000], "teacher_prompt_ids": [4]}],
    )
    err = _error(capsys, ["analyze", "heatmap", *base, "--data", str(bad_ids)])
    assert f"{bad_ids}:1: response has token id 10000 outside the vocabulary" in err
    empty = write_jsonl(tmp_path / "c.jsonl", [{**rows[0], "response": ""}])
    err = _error(capsys, ["analyze", "markers", *base, "--data", str(empty)])
    assert f"{empty}:1: empty response" in err
    no_answer = write_jsonl(
        tmp_path / "d.jsonl", [{k: v for k, v in rows[0].items() if k != "answer"}]
    )
    err = _error(capsys, ["analyze", "markers", *base, "--data", str(no_answer)])
    assert f"{no_answer}:1: missing key 'correct or answer'" in err
    one_sided = write_jsonl(tmp_path / "e.jsonl", [{**r, "correct": True} for r in rows])
    err = _error(capsys, ["analyze", "markers", *base, "--data", str(one_sided)])
    assert "no problem has both a correct and an incorrect rollout" in err
    shift = ["analyze", "shift", "--base", str(tiny_qwen3_dir), "--output", out]
    err = _error(
        capsys, [*shift, "--finetuned", str(tiny_qwen3_untied_dir), "--data", str(no_context)]
    )
    assert "different vocabularies" in err
    assert str(tiny_qwen3_untied_dir) in err and str(tiny_qwen3_dir) in err
    err = _error(
        capsys,
        [
            "analyze",
            "heatmap",
            "--model",
            str(tmp_path / "missing"),
            "--output",
            out,
            "--data",
            str(no_context),
        ],
    )
    assert "missing" in err
    assert not (tmp_path / "out").exists()

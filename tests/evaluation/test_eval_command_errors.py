"""`rlrt eval` refuses bad input with a one-line error before any engine starts."""

from __future__ import annotations

import shutil

import pytest

from rlrt_megatron.cli import main
from rlrt_megatron.evaluation import commands  # noqa: F401  (registers rlrt eval / compare)


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n')
    return path


def _eval(model, data, out, *extra):
    return main(["eval", "--model", str(model), "--data", str(data), "--output", str(out), *extra])


def test_k_larger_than_n(tiny_qwen3_dir, bench, tmp_path, capsys):
    assert _eval(tiny_qwen3_dir, bench, tmp_path / "o", "--n", "4", "--ks", "1", "8") == 1
    assert "pass@8 needs at least 8 samples per problem, but n=4" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_model_without_tokenizer(tiny_qwen3_dir, bench, tmp_path, capsys):
    model = shutil.copytree(tiny_qwen3_dir, tmp_path / "m")
    (model / "tokenizer.json").unlink()
    (model / "tokenizer_config.json").unlink()
    assert _eval(model, bench, tmp_path / "o") == 1
    assert "no tokenizer files" in capsys.readouterr().err


def test_bad_benchmark_row(tiny_qwen3_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "q"}\n')
    assert _eval(tiny_qwen3_dir, bad, tmp_path / "o") == 1
    assert "bad.jsonl: line 1: key 'answer': is missing" in capsys.readouterr().err


def test_default_max_tokens_exceeds_the_tiny_model(tiny_qwen3_dir, bench, tmp_path, capsys):
    assert _eval(tiny_qwen3_dir, bench, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert (
        "b.jsonl: problem 0 has a" in err
        and "--max-tokens 38912 that exceeds the model length 1024" in err
    )

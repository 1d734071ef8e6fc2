"""Benchmark readers: each documented layout loads (files written with pyarrow here), and bad
files fail naming the file, row and key."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlrt_megatron.data.synthetic import write_arithmetic_splits
from rlrt_megatron.evaluation.benchmarks import BenchmarkError, read_benchmark, read_benchmarks


def _parquet(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


def test_math500_layout(tmp_path):
    path = _parquet(
        tmp_path / "math500.parquet",
        {
            "problem": ["What is $1+1$?", "Simplify $\\frac{2}{4}$."],
            "solution": ["$1+1=\\boxed{2}$", "$\\boxed{\\frac12}$"],
            "answer": ["2", "\\frac{1}{2}"],
            "subject": ["Algebra", "Prealgebra"],
            "level": [1, 2],
            "unique_id": ["test/a/1.json", "test/b/2.json"],
        },
    )
    b = read_benchmark(path)
    assert b.name == "math500" and len(b.problems) == 2
    p = b.problems[1]
    assert p.index == 1 and p.answer == "\\frac{1}{2}"
    assert p.messages == [{"role": "user", "content": "Simplify $\\frac{2}{4}$."}]
    assert p.meta == {
        "solution": "$\\boxed{\\frac12}$",
        "subject": "Prealgebra",
        "level": 2,
        "unique_id": "test/b/2.json",
    }


def test_aimo_aime_and_amc_layouts(tmp_path):
    aime = _parquet(
        tmp_path / "aime.parquet",
        {
            "id": [60, 61],
            "problem": ["p1", "p2"],
            "solution": ["s1", "s2"],
            "answer": ["204", "025"],
            "url": ["u1", "u2"],
        },
    )
    amc = _parquet(
        tmp_path / "amc.parquet",
        {"id": [0, 1], "problem": ["p1", "p2"], "answer": [142.0, 2.5], "url": ["u", "v"]},
    )
    assert [p.answer for p in read_benchmark(aime).problems] == ["204", "025"]
    problems = read_benchmark(amc).problems
    assert [p.answer for p in problems] == ["142", "2.5"]  # integral floats become integers
    assert problems[0].meta == {"id": 0, "url": "u"}


def test_capitalised_int_answers_and_solution_only_layouts(tmp_path):
    maxwell = _parquet(
        tmp_path / "AIME_2024.parquet",
        {"ID": ["2024-I-1"], "Problem": ["p"], "Solution": ["s"], "Answer": [33]},
    )
    p = read_benchmark(maxwell).problems[0]
    assert p.answer == "33" and p.messages[0]["content"] == "p"
    assert p.meta == {"ID": "2024-I-1", "Solution": "s"}
    mathai = _parquet(
        tmp_path / "aime25.parquet",
        {"id": [1], "question": ["q"], "solution": ["so the answer is \\boxed{70}"]},
    )
    p = read_benchmark(mathai).problems[0]
    assert p.answer == "70" and p.meta["solution"].endswith("\\boxed{70}")


def test_verl_layout(tmp_path):
    path = _parquet(
        tmp_path / "dapo.parquet",
        {
            "prompt": [[{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]],
            "reward_model": [{"ground_truth": "34", "style": "rule"}],
            "data_source": ["math_dapo"],
        },
    )
    p = read_benchmark(path).problems[0]
    assert p.answer == "34" and [m["role"] for m in p.messages] == ["system", "user"]
    assert p.meta["data_source"] == "math_dapo"


def test_jsonl_problem_and_synthetic_prompt_layouts(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"problem": "2+2?", "answer": "4", "source": "x"}, {"question": "3+3?", "answer": 6}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    problems = read_benchmark(path).problems
    assert [p.answer for p in problems] == ["4", "6"] and problems[0].meta == {"source": "x"}
    _, test_file = write_arithmetic_splits(tmp_path / "syn", num_train=2, num_test=3, seed=0)
    b = read_benchmark(test_file)
    assert b.name == "test" and len(b.problems) == 3
    assert all(p.meta["solution"].endswith(f"\\boxed{{{p.answer}}}") for p in b.problems)


def test_row_without_answer_names_file_and_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b"}\n')
    with pytest.raises(BenchmarkError, match=r"bad.jsonl: line 2: key 'answer': is missing"):
        read_benchmark(path)
    pq_path = _parquet(tmp_path / "bad.parquet", {"problem": ["a", "b"], "answer": ["1", None]})
    with pytest.raises(BenchmarkError, match=r"bad.parquet: row 1: key 'answer': is missing"):
        read_benchmark(pq_path)


def test_empty_files_and_missing_columns(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(BenchmarkError, match="empty.jsonl: the file holds no problems"):
        read_benchmark(empty)
    empty_pq = _parquet(
        tmp_path / "e.parquet",
        {"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())},
    )
    with pytest.raises(BenchmarkError, match="no problems"):
        read_benchmark(empty_pq)
    no_question = _parquet(tmp_path / "nq.parquet", {"text": ["a"], "answer": ["1"]})
    with pytest.raises(BenchmarkError, match="no question column"):
        read_benchmark(no_question)
    with pytest.raises(BenchmarkError, match="unknown benchmark format"):
        read_benchmark(tmp_path / "x.csv")
    with pytest.raises(BenchmarkError, match="no such file"):
        read_benchmark(tmp_path / "missing.jsonl")


def test_two_files_with_one_stem_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    for folder in (tmp_path, tmp_path / "a"):
        (folder / "aime.jsonl").write_text('{"problem": "p", "answer": "1"}\n')
    with pytest.raises(BenchmarkError, match="both be benchmark 'aime'"):
        read_benchmarks([tmp_path / "aime.jsonl", tmp_path / "a" / "aime.jsonl"])

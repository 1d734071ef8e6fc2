"""Dataset readers: verl-style parquet and jsonl, valid files, each kind of bad row, skip mode."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlrt_megatron.data import DatasetError, read_jsonl, read_parquet, read_prompts

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
REWARD_MODEL = pa.struct([("ground_truth", pa.string()), ("style", pa.string())])
EXTRA_INFO = pa.struct([("index", pa.string()), ("solution", pa.string())])
VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", MESSAGES),
        ("ability", pa.string()),
        ("reward_model", REWARD_MODEL),
        ("extra_info", EXTRA_INFO),
    ]
)


def _verl_row(question: str, answer: str | None, solution: str | None = None) -> dict:
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": question}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lax"},
        "extra_info": {"index": f"id-{question[:8]}", "solution": solution},
    }


def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema = VERL_SCHEMA) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------- parquet


def test_parquet_valid_dapo_style(tmp_path: Path) -> None:
    rows = [
        _verl_row("What is 1+1?", "2"),
        _verl_row("Half of one?", "\\frac{1}{2}", solution="1/2 = 0.5. \\boxed{\\frac{1}{2}}"),
    ]
    rows[0]["prompt"].insert(0, {"role": "system", "content": "Be brief."})
    path = _write_parquet(tmp_path / "dapo.parquet", rows)
    records, stats = read_parquet(path)
    assert (stats.num_rows, stats.num_kept, stats.num_bad) == (2, 2, 0)
    first, second = records
    assert first.prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1+1?"},
    ]
    assert first.question == "What is 1+1?"
    assert (first.ground_truth, first.solution, first.data_source, first.index) == (
        "2",
        None,
        "math_dapo",
        0,
    )
    assert first.extra["reward_style"] == "rule-lax"
    assert first.extra["index"] == "id-What is "
    assert second.solution == "1/2 = 0.5. \\boxed{\\frac{1}{2}}"
    assert second.index == 1
    # read_prompts dispatches on the suffix to the same reader.
    assert read_prompts(path)[0] == records


def test_parquet_minimal_columns(tmp_path: Path) -> None:
    """Only the two required columns: data_source defaults to empty, extra to {}."""
    schema = pa.schema([("prompt", MESSAGES), ("reward_model", REWARD_MODEL)])
    rows = [
        {
            "prompt": [{"role": "user", "content": "q"}],
            "reward_model": {"ground_truth": "7", "style": None},
        }
    ]
    records, _ = read_parquet(_write_parquet(tmp_path / "min.parquet", rows, schema))
    assert records[0].data_source == "" and records[0].extra == {}
    assert records[0].ground_truth == "7"


def _bad_prompt(row: dict, value) -> dict:
    row["prompt"] = value
    return row


PARQUET_BAD_ROWS = {
    "null prompt": (lambda r: _bad_prompt(r, None), "'prompt'", "is missing"),
    "empty prompt list": (lambda r: _bad_prompt(r, []), "'prompt'", "empty list"),
    "empty user content": (
        lambda r: _bad_prompt(r, [{"role": "user", "content": "  "}]),
        "'prompt'",
        "no non-empty user message",
    ),
    "bad role": (
        lambda r: _bad_prompt(r, [{"role": "robot", "content": "hi"}]),
        "'prompt[0].role'",
        "must be one of",
    ),
    "null content": (
        lambda r: _bad_prompt(r, [{"role": "user", "content": None}]),
        "'prompt[0].content'",
        "must be a string",
    ),
    "null ground truth": (
        lambda r: {**r, "reward_model": {"ground_truth": None, "style": "rule"}},
        "'reward_model.ground_truth'",
        "is missing",
    ),
    "empty ground truth": (
        lambda r: {**r, "reward_model": {"ground_truth": " ", "style": "rule"}},
        "'reward_model.ground_truth'",
        "is empty",
    ),
    "null reward_model": (lambda r: {**r, "reward_model": None}, "'reward_model'", "is missing"),
    "empty solution": (
        lambda r: {**r, "extra_info": {"index": "x", "solution": ""}},
        "'extra_info.solution'",
        "is empty",
    ),
}


@pytest.mark.parametrize("case", sorted(PARQUET_BAD_ROWS))
def test_parquet_bad_row_names_file_row_key(tmp_path: Path, case: str) -> None:
    corrupt, key, problem = PARQUET_BAD_ROWS[case]
    rows = [_verl_row("a?", "1"), _verl_row("b?", "2"), corrupt(_verl_row("c?", "3"))]
    path = _write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DatasetError) as err:
        read_parquet(path)
    message = str(err.value)
    assert str(path) in message and "row 2" in message
    assert key in message and problem in message


def test_parquet_wrong_type_ground_truth(tmp_path: Path) -> None:
    schema = pa.schema(
        [
            ("prompt", MESSAGES),
            ("reward_model", pa.struct([("ground_truth", pa.float64()), ("style", pa.string())])),
        ]
    )
    rows = [
        {
            "prompt": [{"role": "user", "content": "q"}],
            "reward_model": {"ground_truth": 0.5, "style": "rule"},
        }
    ]
    path = _write_parquet(tmp_path / "float.parquet", rows, schema)
    with pytest.raises(
        DatasetError,
        match=r"row 0: key 'reward_model.ground_truth': must be a "
        r"string, got float",
    ):
        read_parquet(path)


def test_parquet_missing_column_and_unreadable_file(tmp_path: Path) -> None:
    schema = pa.schema([("prompt", MESSAGES), ("data_source", pa.string())])
    rows = [{"prompt": [{"role": "user", "content": "q"}], "data_source": "x"}]
    path = _write_parquet(tmp_path / "nocol.parquet", rows, schema)
    # A missing column is a file problem: it raises even in skip mode.
    with pytest.raises(
        DatasetError,
        match=r"nocol.parquet: missing required column\(s\) "
        r"\['reward_model'\]",
    ):
        read_parquet(path, on_bad_row="skip")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="junk.parquet: not a readable parquet file"):
        read_parquet(junk)
    with pytest.raises(DatasetError, match="no such file"):
        read_parquet(tmp_path / "absent.parquet")


def test_parquet_skip_mode_counts(tmp_path: Path) -> None:
    rows = [
        _verl_row("a?", "1"),
        _verl_row("b?", None),
        _verl_row("c?", "3"),
        _bad_prompt(_verl_row("d?", "4"), []),
    ]
    records, stats = read_parquet(
        _write_parquet(tmp_path / "mixed.parquet", rows), on_bad_row="skip"
    )
    assert [r.ground_truth for r in records] == ["1", "3"]
    assert [r.index for r in records] == [0, 2]
    assert (stats.num_rows, stats.num_kept, stats.num_bad) == (4, 2, 2)
    assert "row 1" in stats.errors[0] and "reward_model.ground_truth" in stats.errors[0]
    assert "row 3" in stats.errors[1] and "'prompt'" in stats.errors[1]


# ----------------------------------------------------------------------------------------- jsonl


def test_jsonl_valid(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "What is 3+4?", "answer": "7", "solution": "3+4 = 7. \\boxed{7}"}),
        "",
        json.dumps(
            {
                "prompt": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "Six times seven?"},
                ],
                "answer": 42,
                "level": 2,
                "data_source": "mine",
            }
        ),
    ]
    path = _write_lines(tmp_path / "arith.jsonl", lines)
    records, stats = read_jsonl(path)
    assert (stats.num_rows, stats.num_kept, stats.num_bad) == (2, 2, 0)
    first, second = records
    assert first.prompt == [{"role": "user", "content": "What is 3+4?"}]
    assert (first.ground_truth, first.solution, first.data_source, first.index) == (
        "7",
        "3+4 = 7. \\boxed{7}",
        "arith",
        0,
    )
    assert first.extra == {}
    assert second.ground_truth == "42" and second.solution is None
    assert (second.data_source, second.index, second.extra) == ("mine", 2, {"level": 2})
    assert second.question == "Six times seven?"
    assert read_prompts(path)[0] == records


JSONL_BAD_ROWS = {
    "malformed json": ('{"prompt": "q", "answer": ', None, "malformed JSON"),
    "not an object": ('["q", "1"]', None, "expected a JSON object, got list"),
    "missing prompt": ('{"answer": "1"}', "'prompt'", "is missing"),
    "empty prompt": ('{"prompt": "  ", "answer": "1"}', "'prompt'", "is empty"),
    "prompt wrong type": ('{"prompt": 5, "answer": "1"}', "'prompt'", "got int"),
    "missing answer": ('{"prompt": "q"}', "'answer'", "is missing"),
    "empty answer": ('{"prompt": "q", "answer": ""}', "'answer'", "is empty"),
    "float answer": ('{"prompt": "q", "answer": 1.5}', "'answer'", "must be a string, got float"),
    "bool answer": ('{"prompt": "q", "answer": true}', "'answer'", "must be a string, got bool"),
    "solution wrong type": (
        '{"prompt": "q", "answer": "1", "solution": 3}',
        "'solution'",
        "got int",
    ),
    "message not a dict": ('{"prompt": ["hi"], "answer": "1"}', "'prompt[0]'", "must be a dict"),
}


@pytest.mark.parametrize("case", sorted(JSONL_BAD_ROWS))
def test_jsonl_bad_row_names_file_line_key(tmp_path: Path, case: str) -> None:
    bad, key, problem = JSONL_BAD_ROWS[case]
    good = json.dumps({"prompt": "q", "answer": "1"})
    path = _write_lines(tmp_path / "bad.jsonl", [good, good, bad])
    with pytest.raises(DatasetError) as err:
        read_jsonl(path)
    message = str(err.value)
    assert str(path) in message and "line 3" in message and problem in message
    if key is not None:
        assert f"key {key}" in message


def test_jsonl_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"prompt": "q", "answer": "1"}\n{"prompt": "\xff", "answer": "1"}\n')
    with pytest.raises(DatasetError, match=r"bytes.jsonl: line 2: not valid UTF-8"):
        read_jsonl(path)


def test_jsonl_skip_mode_counts(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "a", "answer": "1"}),
        "{broken",
        json.dumps({"prompt": "b"}),
        json.dumps({"prompt": "c", "answer": "3"}),
        json.dumps({"prompt": "", "answer": "4"}),
    ]
    records, stats = read_jsonl(_write_lines(tmp_path / "mixed.jsonl", lines), on_bad_row="skip")
    assert [r.ground_truth for r in records] == ["1", "3"]
    assert [r.index for r in records] == [0, 3]
    assert (stats.num_rows, stats.num_kept, stats.num_bad) == (5, 2, 3)
    assert [
        "line 2" in stats.errors[0],
        "line 3" in stats.errors[1],
        "line 5" in stats.errors[2],
    ] == [True, True, True]
    assert "'answer'" in stats.errors[1] and "'prompt'" in stats.errors[2]


def test_reader_argument_errors(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "ok.jsonl", [json.dumps({"prompt": "q", "answer": "1"})])
    with pytest.raises(ValueError, match="on_bad_row must be 'raise' or 'skip'"):
        read_jsonl(path, on_bad_row="ignore")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"unknown dataset format '.csv'"):
        read_prompts(tmp_path / "data.csv")
    with pytest.raises(DatasetError, match="no such file"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_json_lines_names_the_file_and_line_with_the_callers_error(tmp_path):
    from rlrt_megatron.data.readers import json_lines

    class MyError(Exception):
        pass

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[2]\n{"b": \n')
    values = []
    with pytest.raises(
        MyError, match=r"x\.jsonl:4: malformed JSON \(Expecting value at column 7\)"
    ):
        for where, number, value in json_lines(path, MyError):
            values.append((where.rsplit("/", 1)[-1], number, value))
    assert values == [("x.jsonl:1", 1, {"a": 1}), ("x.jsonl:3", 3, [2])]
    with pytest.raises(MyError, match="cannot read .*missing.jsonl"):
        list(json_lines(tmp_path / "missing.jsonl", MyError))

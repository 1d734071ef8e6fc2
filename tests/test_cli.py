"""The `rlrt` command line: help, check-env, export (real megatron-core workers on gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlrt_megatron.cli import build_parser, main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "check-env" in out and "export" in out
    assert main([]) == 2  # no command: help, usage error code


@pytest.mark.parametrize("entry", ["script", "module"])
def test_every_command_module_registers_from_both_entry_points(entry):
    """`rlrt --help` and `python -m rlrt_megatron.cli --help` (what the Makefile may call) list
    the same commands, those of the command modules included."""
    script = Path(sys.executable).with_name("rlrt")
    command = [str(script)] if entry == "script" else [sys.executable, "-m", "rlrt_megatron.cli"]
    if entry == "script" and not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e . puts it there)")
    out = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for name in ("check-env", "export", "score", "train", "quickstart"):
        assert name in out, (entry, name, out)


def test_registered_commands_have_their_options():
    parser = build_parser()
    args = parser.parse_args(["export", "src", "dst", "--tp", "2", "--max-shard-size", "1.5GB"])
    assert (args.tp, args.pp, args.max_shard_size, args.dtype) == (2, 1, 1_500_000_000, "auto")
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "src", "dst", "--max-shard-size", "huge"])


def test_check_env_reports_versions_and_compat(capsys):
    assert main(["check-env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert report["versions"]["megatron-core"] is not None
    assert report["cuda_available"] == torch.cuda.is_available()
    assert report["cpu_compat_applies"] == (not torch.cuda.is_available())
    assert main(["check-env"]) == 0
    text = capsys.readouterr().out
    assert "megatron-core" in text and "CPU compat layer" in text


def test_export_rejects_a_layout_before_starting_processes(tiny_qwen3_dir, tmp_path, capsys):
    code = main(["export", str(tiny_qwen3_dir), str(tmp_path / "out"), "--tp", "3"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("rlrt export: error:") and "TP=3" in err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_with_foreign_files_and_keeps_them(
    tiny_qwen3_dir, tmp_path, capsys
):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my data")
    assert main(["export", str(tiny_qwen3_dir), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rlrt export: error:") and "not an earlier export" in err
    assert "notes.txt" in err and (out / "notes.txt").read_text() == "my data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder either


def test_export_refuses_the_sources_parent_and_keeps_the_source(tmp_path, capsys):
    from rlrt_megatron.models.tiny import build_tiny_qwen3

    source = build_tiny_qwen3(tmp_path / "models" / "tiny")
    before = sorted(p.name for p in source.iterdir())
    for target in (source.parent, tmp_path):
        assert main(["export", str(source), str(target)]) == 1
        err = capsys.readouterr().err
        assert "it contains the source" in err, err
    assert sorted(p.name for p in source.iterdir()) == before


def test_an_earlier_export_or_an_empty_folder_may_be_replaced(tmp_path):
    from rlrt_megatron.megatron.checkpoint import (
        EXPORT_MARKER,
        OutputFolderError,
        check_output_folder,
    )

    source = tmp_path / "src"
    source.mkdir()
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", source)
    check_output_folder(tmp_path / "new", source)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "model.safetensors").write_bytes(b"x")
    with pytest.raises(OutputFolderError, match="not an earlier export"):
        check_output_folder(earlier, source)
    (earlier / EXPORT_MARKER).write_text("{}")
    check_output_folder(earlier, source)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="not a folder"):
        check_output_folder(tmp_path / "file", source)


def _logits(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(tokens).logits


@pytest.mark.distributed
def test_export_round_trip_at_pp2_is_bit_exact(tiny_qwen3_untied_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    code = main(
        ["export", str(tiny_qwen3_untied_dir), str(out), "--pp", "2", "--max-shard-size", "60KB"]
    )
    assert code == 0
    assert "bit-exact: True" in capsys.readouterr().out
    assert (out / "model.safetensors.index.json").is_file()  # several shards
    assert (out / "rlrt_export.json").is_file()  # marks it as an export a later one may replace
    tokens = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(3))
    assert torch.equal(_logits(out, tokens), _logits(tiny_qwen3_untied_dir, tokens))


@pytest.mark.distributed
def test_python_dash_m_export_at_tp2_in_bf16(tiny_qwen3_dir, tmp_path):
    out = tmp_path / "bf16"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlrt_megatron.cli",
            "export",
            str(tiny_qwen3_dir),
            str(out),
            "--tp",
            "2",
            "--dtype",
            "bf16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bit-exact: False" in result.stdout  # fp32 source written as bf16
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    tokens = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(4))
    reference = _logits(tiny_qwen3_dir, tokens)
    assert (_logits(out, tokens) - reference).abs().max() < 0.05 * reference.abs().max()

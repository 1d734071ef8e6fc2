"""`resolve_hf_model`: which HF folder a --model argument designates (pure path logic)."""

from __future__ import annotations

import pytest

from rlrt_megatron.megatron.checkpoint import (
    META_FILE,
    CheckpointLoadError,
    resolve_hf_model,
    step_dir_name,
)


def _checkpoint(run_dir, step, *, hf=True):
    path = run_dir / "checkpoints" / step_dir_name(step)
    path.mkdir(parents=True)
    (path / META_FILE).write_text("{}")
    if hf:
        (path / "hf").mkdir()
        (path / "hf" / "config.json").write_text("{}")
    return path


def test_hf_folder_step_dir_checkpoints_dir_and_run_dir(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_hf_model(model) == model

    run = tmp_path / "run"
    first, second = _checkpoint(run, 10), _checkpoint(run, 20)
    (run / "checkpoints" / ".incomplete-step_00000030").mkdir()  # never chosen
    assert resolve_hf_model(first) == first / "hf"
    assert resolve_hf_model(run) == second / "hf"
    assert resolve_hf_model(run / "checkpoints") == second / "hf"


def test_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointLoadError, match="no such file"):
        resolve_hf_model(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointLoadError, match="neither a HF model folder"):
        resolve_hf_model(empty)
    checkpoint = _checkpoint(tmp_path / "run", 5, hf=False)
    with pytest.raises(CheckpointLoadError, match="save_hf=false"):
        resolve_hf_model(tmp_path / "run")
    with pytest.raises(CheckpointLoadError, match=str(checkpoint.name)):
        resolve_hf_model(checkpoint)

"""Checkpoint state that cannot execute code: JSON state files round-trip what the trainer saves,
and crafted pickles in a checkpoint are refused before anything in them runs."""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlrt_megatron.megatron.checkpoint import (
    META_FILE,
    CheckpointLoadError,
    UnsafeCheckpointError,
    check_dcp_metadata,
    load_checkpoint,
    step_dir_name,
)
from rlrt_megatron.megatron.safe_state import (
    UnsafeStateError,
    load_legacy_torch_file,
    load_state,
    save_state,
)


class _RunsShell:
    """Unpickling this calls os.system: what a crafted checkpoint file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _trainer_state() -> dict:
    generator = torch.Generator().manual_seed(3)
    return {
        "step": 7,
        "data": {"epoch": 1, "position": 5},
        "rng": {
            "torch": generator.get_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
        "floats": [1.5, float("inf"), float("nan"), -0.0],
        "empty": torch.zeros(0, 3),
        "bf16": torch.tensor([1.0, -2.5], dtype=torch.bfloat16),
    }


def test_json_state_round_trips_rng_states_tuples_and_tensors(tmp_path):
    state = _trainer_state()
    loaded = load_state(save_state(state, tmp_path / "extra.json"))
    assert loaded["step"] == 7 and loaded["data"] == {"epoch": 1, "position": 5}
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["rng"]["python"] == state["rng"]["python"]  # nested tuples stay tuples
    random.setstate(loaded["rng"]["python"])  # accepted as is
    kind, keys, pos, has_gauss, cached = loaded["rng"]["numpy"]
    assert kind == "MT19937" and keys.dtype == np.uint32 and pos == state["rng"]["numpy"][2]
    assert np.array_equal(keys, state["rng"]["numpy"][1])
    np.random.set_state(loaded["rng"]["numpy"])
    assert loaded["floats"][0] == 1.5 and loaded["floats"][1] == math.inf
    assert math.isnan(loaded["floats"][2]) and math.copysign(1, loaded["floats"][3]) == -1
    assert loaded["empty"].shape == (0, 3)
    assert loaded["bf16"].dtype == torch.bfloat16 and torch.equal(loaded["bf16"], state["bf16"])
    # The generator continues exactly where the saved one would.
    restored = torch.Generator()
    restored.set_state(loaded["rng"]["torch"])
    reference = torch.Generator().manual_seed(3)
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=reference))


def test_state_that_json_cannot_hold_is_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="state.obj: object cannot be saved"):
        save_state({"obj": object()}, tmp_path / "x.json")
    with pytest.raises(TypeError, match="keys must be strings"):
        save_state({"d": {1: 2}}, tmp_path / "x.json")


def test_legacy_pt_state_loads_through_the_restricted_unpickler(tmp_path):
    state = _trainer_state()
    torch.save(state, tmp_path / "extra.pt")
    loaded = load_legacy_torch_file(tmp_path / "extra.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])


def _checkpoint(tmp_path: Path, version: int) -> Path:
    path = tmp_path / "run" / step_dir_name(3)
    path.mkdir(parents=True)
    meta = {
        "format_version": version,
        "step": 3,
        "layout": {"world_size": 1},
        "has_optimizer": False,
        "has_scheduler": False,
        "has_rank_extra": False,
    }
    (path / META_FILE).write_text(json.dumps(meta))
    return path


def test_crafted_pickle_in_a_format1_checkpoint_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _checkpoint(tmp_path, version=1)
    torch.save({"step": 3, "payload": _RunsShell(marker)}, path / "extra.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        load_checkpoint(path, model=None)
    assert not marker.exists()
    # A plain pickle (not torch's zip format) is refused the same way.
    (path / "extra.pt").write_bytes(pickle.dumps({"payload": _RunsShell(marker)}))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path, model=None)
    assert not marker.exists()


def test_crafted_dcp_metadata_pickle_is_refused_and_not_run(tmp_path):
    """torch.distributed.checkpoint reads ``.metadata`` with plain pickle.load: it is dry-run
    through an allow-list first."""
    marker = tmp_path / "pwned"
    path = _checkpoint(tmp_path, version=2)
    save_state({"step": 3}, path / "extra.json")
    (path / ".metadata").write_bytes(pickle.dumps(_RunsShell(marker)))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        load_checkpoint(path, model=None)
    assert not marker.exists()


def test_genuine_dcp_metadata_passes_the_allow_list(tmp_path):
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    state = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    check_dcp_metadata(folder)  # does not raise


def test_format2_checkpoint_with_a_pickled_state_file_is_refused(tmp_path):
    """A JSON state file that is not JSON (e.g. a pickle renamed) is refused, not unpickled."""
    marker = tmp_path / "pwned"
    path = _checkpoint(tmp_path, version=2)
    (path / "extra.json").write_bytes(pickle.dumps(_RunsShell(marker)))
    with pytest.raises(UnsafeCheckpointError, match="not a readable checkpoint state"):
        load_checkpoint(path, model=None)
    assert not marker.exists()


def test_unknown_format_and_missing_extra_are_clear_errors(tmp_path):
    path = _checkpoint(tmp_path, version=99)
    with pytest.raises(CheckpointLoadError, match="format 99 is not one this version reads"):
        load_checkpoint(path, model=None)
    path = _checkpoint(tmp_path / "b", version=2)
    with pytest.raises(CheckpointLoadError, match="extra.json is missing"):
        load_checkpoint(path, model=None)


def test_tagged_json_cannot_smuggle_object_arrays(tmp_path):
    file = tmp_path / "x.json"
    file.write_text(json.dumps({"a": {"__ndarray__": {"dtype": "|O", "shape": [1], "base64": ""}}}))
    with pytest.raises(UnsafeStateError):
        load_state(file)

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.configuration import (
    ConfigError,
    from_dict,
    load_config,
    parse_overrides,
    save_config,
    to_dict,
)


@dataclass(frozen=True, kw_only=True)
class Actor:
    tp: int = 1
    dtype: Literal["float32", "bfloat16"] = "float32"
    lr: float | None = None


@dataclass(frozen=True, kw_only=True)
class Run:
    name: str
    actor: Actor = field(default_factory=Actor)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    files: list[str] = field(default_factory=list)


def test_yaml_with_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nactor:\n  tp: 2\n  lr: 1e-6\n")
    (tmp_path / "paper.yaml").write_text(
        "base: base.yaml\nname: paper\nalgorithm:\n  method: rlsd\n"
    )
    config = load_config(Run, tmp_path / "paper.yaml", ["actor.dtype=bfloat16", "files=[a, b]"])
    assert config.name == "paper"
    assert config.actor == Actor(tp=2, dtype="bfloat16", lr=1e-6)
    assert config.files == ["a", "b"]
    assert config.algorithm.method == "rlsd"


def test_algorithm_defaults_come_from_the_registry():
    rlsd = AlgorithmConfig(method="rlsd")
    assert rlsd.weight_clip == 0.2 and rlsd.use_std
    schedule = rlsd.schedule()
    assert schedule.value(0) == 0.5 and schedule.value(25) == pytest.approx(0.25)
    assert schedule.value(50) == 0.0
    constant = AlgorithmConfig(method="rlsd", lam_decay_steps=0).schedule()
    assert constant.value(1000) == 0.5
    rlrt = AlgorithmConfig(method="rlrt", eps_w=0.5)
    assert rlrt.weight_clip == 0.5 and rlrt.schedule().value(1000) == 0.5
    # GRPO+EB: the advantage form by default (no loss term); the loss form keeps c_H 1e-3.
    assert AlgorithmConfig(method="grpo_eb").loss_config().entropy_coef == 0.0
    assert AlgorithmConfig(method="grpo_eb", entropy_form="loss").loss_config().entropy_coef == 1e-3
    assert AlgorithmConfig(method="srpo").resolved()["lr"] == 5e-6


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["actor.tpp=2"], r"unknown key 'actor.tpp'; did you mean 'actor.tp'\?"),
        (["actor.tp=two"], "actor.tp: expected an integer, got 'two'"),
        (["actor.tp=1.5"], "actor.tp: expected an integer"),
        (["actor.dtype=fp8"], r"actor.dtype: 'fp8' is not one of \['float32', 'bfloat16'\]"),
        (["algorithm.method=ppo"], "unknown method 'ppo'"),
        (["algorithm.lam_init=2"], r"algorithm.lam_init must be in \[0, 1\]"),
        (["algorithm.eps_w=-1"], "algorithm.eps_w must be >= 0"),
        (["files=abc"], "files: expected a list"),
        (["actor=3"], "actor: expected a mapping"),
        (["nonsense"], "not of the form key=value"),
    ],
)
def test_bad_values_name_the_key(tmp_path, overrides, match):
    (tmp_path / "c.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match=match):
        load_config(Run, tmp_path / "c.yaml", overrides)


def test_missing_required_key_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        from_dict(Run, {})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Run, tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Run, tmp_path / "list.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(Run, tmp_path / "a.yaml")


def test_round_trip_through_saved_yaml(tmp_path):
    config = load_config(Run, None, ["name=r", "algorithm.method=srpo", "actor.lr=3e-6"])
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["algorithm"]["method"] == "srpo"
    assert load_config(Run, path) == config
    assert to_dict(config)["actor"] == {"tp": 1, "dtype": "float32", "lr": 3e-6}


def test_torch_dtypes_by_name():
    import torch

    @dataclass(frozen=True, kw_only=True)
    class WithDtype:
        dtype: torch.dtype = torch.bfloat16

    assert from_dict(WithDtype, {"dtype": "float32"}).dtype == torch.float32
    assert from_dict(WithDtype, {"dtype": "torch.float16"}).dtype == torch.float16
    assert to_dict(WithDtype()) == {"dtype": "bfloat16"}
    with pytest.raises(ConfigError, match="dtype: 'fp7' is not a torch dtype"):
        from_dict(WithDtype, {"dtype": "fp7"})


def test_parse_overrides_nests_and_types():
    assert parse_overrides(["a.b=3", "a.c=true", "d=null", "e=1e-6"]) == {
        "a": {"b": 3, "c": True},
        "d": None,
        "e": "1e-6",
    }


@dataclass(frozen=True, kw_only=True)
class Composed:
    """A component's own config composed with run-level defaults (not the class's own)."""

    actor: Actor = field(default_factory=lambda: Actor(tp=4, lr=1e-6))


def test_a_composed_default_instance_keeps_its_values_for_keys_left_out():
    assert from_dict(Composed, {}).actor == Actor(tp=4, lr=1e-6)
    # a partial mapping refines the default instance, not the class defaults
    assert from_dict(Composed, {"actor": {"dtype": "bfloat16"}}).actor == Actor(
        tp=4, dtype="bfloat16", lr=1e-6
    )
    assert from_dict(Composed, {"actor": {"tp": 1, "lr": None}}).actor == Actor()

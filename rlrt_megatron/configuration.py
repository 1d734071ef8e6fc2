"""Typed configuration: YAML files and ``key=value`` overrides into nested, kw-only dataclasses.

Each component defines its own config dataclass beside it; a run's config nests them. This module
is the machinery, shared by all:

* `load_config(cls, path, overrides)` reads a YAML file (which may name a ``base:`` file it
  refines, so that paper configs are small deltas over a shared base), applies command-line
  overrides such as ``algorithm.method=rlrt actor.tp=2``, and builds ``cls``.
* Unknown or misspelled keys are errors that name the full dotted key and suggest the closest
  valid one; values are checked against the field types (bool, int, float, str, Literal, Optional,
  lists, dicts, nested dataclasses); a field without a default must be given.
* A nested dataclass field whose default is an instance (``field(default_factory=lambda:
  AdamWConfig(warmup_steps=10))``) keeps that instance's values for the keys a file leaves out:
  a run composes a component's own config and states the run's defaults where it composes it.
* `to_dict` / `save_config` give back the resolved config, saved with every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlrt_megatron.atomic_files import atomic_write_text
from rlrt_megatron.errors import ConfigError  # defined with the other user-facing errors

T = TypeVar("T")
BASE_KEY = "base"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int → float).
    ``default``: the field's default instance, when ``tp`` is a dataclass (keys left out keep
    its values)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {_describe(tp)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, key, default if isinstance(default, tp) else None)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {k: _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if _is_torch_dtype(tp):
        return _torch_dtype(value, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: {value!r} is not a valid {_describe(tp)}")


def _is_torch_dtype(tp: Any) -> bool:
    return getattr(tp, "__module__", None) == "torch" and getattr(tp, "__name__", None) == "dtype"


def _torch_dtype(value: Any, key: str) -> Any:
    """A torch dtype from its name ("bfloat16", "float32", "torch.float16") — kept lazy so that
    configs without dtypes never import torch."""
    import torch

    if isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"{key}: {value!r} is not a torch dtype (e.g. bfloat16, float32)")
    return dtype


def _default_instance(f: dataclasses.Field) -> Any:
    """The default of a field made by a factory (a nested config's run-level defaults)."""
    if f.default_factory is dataclasses.MISSING:
        return None
    made = f.default_factory()
    return made if dataclasses.is_dataclass(made) and not isinstance(made, type) else None


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, base: Any = None) -> T:
    """``cls`` from ``data``; keys ``data`` leaves out take ``base``'s values (an instance of
    ``cls``) or else the class defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"; did you mean {_join(prefix, close[0])!r}?" if close else ""
        raise ConfigError(
            f"unknown key {_join(prefix, key)!r}{hint} (valid keys: {sorted(fields)})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key, _default_instance(f))
        elif base is not None:
            kwargs[name] = getattr(base, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {error}") from error


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from a nested mapping, strictly (see the module docstring)."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return _build(cls, data, "")


def deep_merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """``delta`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, resolving its ``base:`` chain (relative to the file) into one mapping."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(
            f"{path}: circular 'base' chain: {' -> '.join(map(str, _seen + (path,)))}"
        )
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return dict(data)
    return deep_merge(read_yaml(path.parent / base, _seen + (path,)), data)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1, 2]"]`` → ``{"a": {"b": 3}, "c": [1, 2]}``; values are parsed as YAML."""
    result: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: invalid value: {error}") from error
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r} conflicts with an earlier override of {part!r}"
                )
            node = child
        node[parts[-1]] = value
    return result


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file (with its ``base:`` chain) and ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as error:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{error}") from None


def to_dict(config: Any) -> Any:
    """A config dataclass (tree) as plain YAML-serialisable data."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    if type(config).__module__ == "torch" and type(config).__name__ == "dtype":
        return str(config).removeprefix("torch.")
    return config


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))

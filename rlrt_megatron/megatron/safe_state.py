"""Checkpoint state that loading cannot turn into code execution.

A pickle runs whatever callables it names when it is loaded, so a checkpoint folder handed to
``trainer.resume`` (or ``rlrt eval``) must not be unpickled freely. This module gives the
checkpoint code three tools:

* :func:`save_state` / :func:`load_state`: the trainer's ``extra`` and per-rank state (step, data
  position, RNG states) as one JSON file. JSON only builds dicts, lists, strings and numbers;
  tuples, tensors and NumPy arrays are written as tagged objects (``{"__tuple__": [...]}``,
  ``{"__tensor__": {"dtype", "shape", "base64"}}``, ``{"__ndarray__": ...}``) and rebuilt from
  their raw bytes, so nothing in the file is ever called.
* :func:`load_legacy_torch_file`: the ``extra.pt`` / ``rank_*.pt`` files of format-1 checkpoints,
  read with ``torch.load(weights_only=True)`` (torch's restricted unpickler) and an allow-list of
  the NumPy array rebuilders the RNG state needs; anything else is refused.
* :func:`check_pickle`: a dry run of a pickle through an unpickler whose ``find_class`` only
  resolves allow-listed globals, for the pickles megatron-core and torch read themselves with
  plain ``pickle`` (torch.distributed.checkpoint's ``.metadata``, megatron's ``common.pt``).
  Loading them for real is safe once the dry run passed: the same bytes can only name the same
  globals.
"""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrt_megatron.atomic_files import atomic_write_text


class UnsafeStateError(ValueError):
    """A state file names a global outside the allow-list (or is not a state file at all)."""


_TUPLE, _TENSOR, _NDARRAY, _FLOAT = "__tuple__", "__tensor__", "__ndarray__", "__float__"
_TAGS = (_TUPLE, _TENSOR, _NDARRAY, _FLOAT)


# ---------------------------------------------------------------------------------------------
# JSON state files.
# ---------------------------------------------------------------------------------------------


def encode_state(value: Any, where: str = "state") -> Any:
    """``value`` as JSON-ready data (see the module docstring for the tags)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        return {
            _TENSOR: {
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "shape": list(tensor.shape),
                "base64": base64.b64encode(raw).decode("ascii"),
            }
        }
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"{where}: NumPy object arrays cannot be saved")
        return {
            _NDARRAY: {
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "base64": base64.b64encode(array.tobytes()).decode("ascii"),
            }
        }
    if isinstance(value, tuple):
        return {_TUPLE: [encode_state(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings, got {key!r}")
            if key in _TAGS:
                raise TypeError(f"{where}: the key {key!r} is reserved")
            out[key] = encode_state(item, f"{where}.{key}")
        return out
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be saved in checkpoint state (allowed: None, "
        "bool, int, float, str, list, tuple, dict with string keys, torch.Tensor, numpy.ndarray)"
    )


def decode_state(data: Any) -> Any:
    """The inverse of :func:`encode_state`."""
    if isinstance(data, list):
        return [decode_state(v) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        ((tag, body),) = data.items()
        if tag == _TUPLE:
            return tuple(decode_state(v) for v in body)
        if tag == _FLOAT:
            return float(body)
        if tag == _TENSOR:
            dtype = getattr(torch, body["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise UnsafeStateError(f"unknown tensor dtype {body['dtype']!r}")
            raw = bytearray(base64.b64decode(body["base64"]))
            flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0).byte()
            return flat.view(dtype).reshape(body["shape"]).clone()
        if tag == _NDARRAY:
            dtype = np.dtype(body["dtype"])
            if dtype.hasobject:
                raise UnsafeStateError("NumPy object arrays are not allowed in checkpoint state")
            raw = base64.b64decode(body["base64"])
            return np.frombuffer(raw, dtype=dtype).reshape(body["shape"]).copy()
    return {k: decode_state(v) for k, v in data.items()}


def save_state(value: dict[str, Any], path: str | Path) -> Path:
    """Write ``value`` as a JSON state file (atomically: `rlrt_megatron.atomic_files`)."""
    return atomic_write_text(path, json.dumps(encode_state(value), separators=(",", ":")))


def load_state(path: str | Path) -> Any:
    """Read a file written by :func:`save_state`; never executes anything from the file."""
    path = Path(path)
    try:
        return decode_state(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise UnsafeStateError(f"{path}: not a readable checkpoint state file ({error})") from None


# ---------------------------------------------------------------------------------------------
# Pickles: format-1 state files and the ones megatron-core / torch read themselves.
# ---------------------------------------------------------------------------------------------

# What ``np.random.get_state()`` pickles into: an ndarray of uint32 (and its dtype).
_NUMPY_RNG_GLOBALS = (
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
)


def _numpy_safe_globals() -> list[Any]:
    import importlib

    found = []
    for module, name in _NUMPY_RNG_GLOBALS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in ("UInt32DType", "Float64DType") if hasattr(dtypes, n)]
    return found


def load_legacy_torch_file(path: str | Path) -> Any:
    """A format-1 ``*.pt`` state file through torch's restricted unpickler (``weights_only``):
    tensors, containers, numbers, strings and the NumPy arrays of an RNG state only."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling failed"
        raise UnsafeStateError(
            f"{path}: refused to load: the file holds objects outside the allow-list of "
            f"checkpoint state ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UnsafeStateError(f"{path}: not a readable state file ({error})") from None


AllowGlobal = Callable[[str, str], bool]


class _DryRunUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, allow: AllowGlobal, path: Path) -> None:
        super().__init__(file)
        self._allow, self._path = allow, path

    def find_class(self, module: str, name: str) -> Any:
        if not self._allow(module, name):
            raise UnsafeStateError(
                f"{self._path}: refused to load: it names {module}.{name}, which is not on the "
                "allow-list of checkpoint metadata (a crafted or foreign file)"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        # torch.save's zip format keeps tensor storages out of band; the dry run needs only the
        # globals, so a placeholder stands in for them.
        return None


def check_pickle(path: str | Path, allow: AllowGlobal) -> Any:
    """Raise :class:`UnsafeStateError` unless every global the pickle at ``path`` names passes
    ``allow(module, name)``. Reads plain pickles and torch's zip files (its ``data.pkl``).

    Returns what the restricted unpickler built (for a plain pickle, the object itself; in a
    torch zip file tensor storages are ``None``), so a caller never needs a second, unrestricted
    ``pickle.loads`` of the same bytes."""
    import zipfile

    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                raise UnsafeStateError(f"{path}: a zip file without one data.pkl")
            payload = archive.read(names[0])
    else:
        payload = path.read_bytes()
    try:
        return _DryRunUnpickler(io.BytesIO(payload), allow, path).load()
    except UnsafeStateError:
        raise
    except Exception as error:  # a malformed pickle: refuse rather than hand it on
        raise UnsafeStateError(
            f"{path}: not a readable pickle ({type(error).__name__}: {error})"
        ) from None

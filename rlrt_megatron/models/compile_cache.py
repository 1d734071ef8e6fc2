"""One cached ``torch.compile`` wrapper per function and process, shared by the compiled layer
parts (`compiled_elementwise`, `compiled_rope`).

A leaf module on purpose: `compiled_elementwise` imports `compiled_rope`, so the wrapper cannot
live in either of them without an import cycle.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def compiled(fn: Any) -> Any:
    """``torch.compile(fn, dynamic=True)``, built once per ``fn``.

    Dynamic shapes: a new token count or sequence length reuses the kernel instead of
    recompiling (packed micro-batches change length every step).
    """
    return torch.compile(fn, dynamic=True)

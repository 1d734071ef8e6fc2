"""Which weights compute the teacher view (a config choice the paper leaves open).

    behavior  θ_old: the weights that scored the old log-probs, in the same forward-only pass
              (student and teacher sequences share micro-batches). Default; no extra memory.
    current   the policy being updated: the teacher view is re-scored before every mini-batch
              (forward-only, current weights), so later mini-batches see updated teachers.
    initial   a frozen copy of the weights the actor started from (SDPO's reference setting:
              Table 5's SDPO "EMA update rate 0.0"; the paper's SDPO/SRPO configs use it).
    ema       an exponential moving average of the policy, updated after every optimizer step:
              ema ← ema + rate·(θ − ema).

For ``initial`` and ``ema`` this rank keeps one copy of *its own* parameter shards (TP/PP
sharded, never gathered), on the CPU by default (``offload``), and swaps it into the model for
the teacher pass: parameter by parameter, through one parameter-sized temporary, so the model
never needs a second full copy on the accelerator (with CUDA the CPU copy is pinned, so the
swaps run at full PCIe speed: distillation swaps twice per micro-batch, see
:func:`.forward.run_pairs`; ``offload=False`` keeps the copy on the GPU for memcpy-speed swaps
where memory allows). The EMA is kept in float32 whatever the model
dtype (a bf16 EMA with a small rate would round every update away); swapping it into a bf16
model stashes the live weights instead, and puts them back exactly.

Swapping writes into ``param.data`` in place, so Megatron DDP's parameter buffers (which the
parameters are views of) and the optimizer's state stay valid; the weights are restored
bit-exactly before any optimizer step.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator
from typing import Any, Literal

import torch

TeacherWeightsMode = Literal["behavior", "current", "initial", "ema"]
TEACHER_WEIGHTS_MODES: tuple[str, ...] = typing.get_args(TeacherWeightsMode)


class TeacherWeights:
    """The teacher-weight option of one rank's model.

    Args:
        model: a :class:`~rlrt_megatron.models.qwen3_megatron.Qwen3MegatronModel`.
        mode: one of :data:`TEACHER_WEIGHTS_MODES`.
        ema_rate: the EMA's rate in (0, 1] (``ema`` only).
        offload: keep the copy in CPU memory (else on the parameters' device).
    """

    def __init__(
        self, model: Any, mode: TeacherWeightsMode, *, ema_rate: float = 0.01, offload: bool = True
    ) -> None:
        if mode not in TEACHER_WEIGHTS_MODES:
            raise ValueError(
                f"teacher weights must be one of {TEACHER_WEIGHTS_MODES}, got {mode!r}"
            )
        if mode == "ema" and not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate}")
        self.mode = mode
        self.ema_rate = float(ema_rate)
        self._params = _local_parameters(model)
        self._copy: list[torch.Tensor] = []
        if self.separate:
            dtype = torch.float32 if mode == "ema" else None
            pin = offload and torch.cuda.is_available()

            def copy_of(p: torch.Tensor) -> torch.Tensor:
                t = p.detach().to(
                    device="cpu" if offload else p.device, dtype=dtype or p.dtype, copy=True
                )
                return t.pin_memory() if pin else t

            with torch.no_grad():
                self._copy = [copy_of(p) for p in self._params]

    @property
    def separate(self) -> bool:
        """True when the teacher has weights of its own (``initial``, ``ema``): its view needs a
        pass of its own with :meth:`swapped`."""
        return self.mode in ("initial", "ema")

    @property
    def rescore_per_minibatch(self) -> bool:
        """True for ``current``: re-score the teacher view before each mini-batch."""
        return self.mode == "current"

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the model holds the teacher weights; the policy's come back after."""
        if not self.separate:
            yield
            return
        stash: list[torch.Tensor | None] = []
        with torch.no_grad():
            for p, t in zip(self._params, self._copy, strict=True):
                if t.dtype == p.dtype:
                    live = p.detach().clone()
                    p.data.copy_(t)
                    t.copy_(live)  # the copy now holds the policy's weights
                    stash.append(None)
                else:
                    stash.append(p.detach().to(t.device, copy=True))
                    p.data.copy_(t)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t, s in zip(self._params, self._copy, stash, strict=True):
                    if s is None:
                        teacher = p.detach().clone()
                        p.data.copy_(t)
                        t.copy_(teacher)
                    else:
                        p.data.copy_(s)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Advance the EMA towards the updated policy (a no-op for the other modes)."""
        if self.mode != "ema":
            return
        for p, t in zip(self._params, self._copy, strict=True):
            t.lerp_(p.detach().to(device=t.device, dtype=t.dtype), self.ema_rate)


def _local_parameters(model: Any) -> list[torch.nn.Parameter]:
    """This rank's parameters, each once (tied weights are one parameter on a stage)."""
    seen: set[int] = set()
    params = []
    for module in model.modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params

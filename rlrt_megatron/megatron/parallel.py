"""torch.distributed and megatron-core model-parallel state: start, describe, stop.

One process per rank, launched by torchrun, Ray or ``torch.multiprocessing`` with the usual
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` (and ``LOCAL_RANK`` on GPUs)
environment. The backend is gloo where CUDA is absent (with :mod:`.compat` applied) and nccl on
GPUs. The layout is validated before any process group starts wherever the world size is known.
Data parallelism is what is left: ``DP = world_size / (TP * PP * CP)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rlrt_megatron.megatron.compat import apply_cpu_compat, cpu_compat_needed
from rlrt_megatron.store_auth import SECRET_ENV, bound_store, prove_membership


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """Model-parallel layout. Data parallelism is derived from the world size.

    Attributes:
        tensor_parallel: TP size (Megatron ``tensor_model_parallel_size``).
        pipeline_parallel: PP size (Megatron ``pipeline_model_parallel_size``).
        context_parallel: CP size (Megatron ``context_parallel_size``): every packed sequence
            is split over CP ranks (2·CP load-balanced chunks), so a rank holds 1/CP of each
            long sequence's activations. Needs packed micro-batches (``actor.packing``).
        seed: base seed of Megatron's RNG streams (``model_parallel_cuda_manual_seed``).
        timeout_minutes: collective timeout of the process groups.
    """

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    context_parallel: int = 1
    seed: int = 1234
    timeout_minutes: int = 30

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "context_parallel", "timeout_minutes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def model_parallel(self) -> int:
        """Ranks that hold one replica of the model's data: TP × PP × CP."""
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    def data_parallel(self, world_size: int) -> int:
        """DP size for ``world_size`` processes; raises if TP*PP*CP does not divide it."""
        if world_size % self.model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by TP*PP*CP = {self.tensor_parallel}*"
                f"{self.pipeline_parallel}*{self.context_parallel} = {self.model_parallel}"
                " (actor.parallel)"
            )
        return world_size // self.model_parallel


@dataclass(frozen=True)
class ParallelState:
    """Sizes and this process's ranks, as initialized."""

    world_size: int
    rank: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    backend: str
    context_parallel: int = 1
    cp_rank: int = 0

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pipeline_parallel - 1


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def initialize_parallel(config: ParallelConfig | None = None) -> ParallelState:
    """Start torch.distributed (if not started) and megatron's model-parallel groups.

    If torch.distributed is already initialized (e.g. by a launcher) it is used as is; otherwise
    ``init_process_group`` reads the ``env://`` variables. The TP*PP layout is checked against
    the world size first, so a bad layout fails before any process group exists.
    """
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel

    config = config or ParallelConfig()
    if mpu.model_parallel_is_initialized():
        raise RuntimeError(
            "megatron model-parallel state is already initialized; call destroy_parallel() first"
        )
    if dist.is_initialized():
        world_size = dist.get_world_size()
        config.data_parallel(world_size)
    else:
        missing = [
            v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
        ]
        if missing:
            raise RuntimeError(
                "torch.distributed is not initialized and the launcher environment is "
                f"incomplete (missing: {', '.join(missing)}): launch with torchrun/Ray, or set "
                "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
            )
        world_size = int(os.environ["WORLD_SIZE"])
        config.data_parallel(world_size)  # validate before starting anything

    if cpu_compat_needed():
        apply_cpu_compat()
    if not dist.is_initialized():
        backend = default_backend()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        rank = int(os.environ["RANK"])
        timeout = timedelta(minutes=config.timeout_minutes)
        kwargs = {}
        if os.environ.get(SECRET_ENV):
            kwargs["store"] = _authenticated_store(rank, world_size, timeout)
        dist.init_process_group(
            backend=backend, world_size=world_size, rank=rank, timeout=timeout, **kwargs
        )
    backend = dist.get_backend()

    mpu.initialize_model_parallel(
        tensor_model_parallel_size=config.tensor_parallel,
        pipeline_model_parallel_size=config.pipeline_parallel,
        context_parallel_size=config.context_parallel,
        distributed_timeout_minutes=config.timeout_minutes,
        # With gloo as the main backend, megatron's extra gloo groups would duplicate every group.
        create_gloo_process_groups=backend != "gloo",
    )
    tensor_parallel.model_parallel_cuda_manual_seed(config.seed)
    return current_parallel_state()


def _authenticated_store(rank: int, world_size: int, timeout: timedelta):
    """The ranks' rendezvous store when this project launched them (``RLRT_DIST_SECRET`` set by
    its launchers: `rlrt_megatron.megatron.launcher` and the Ray worker group): listening on
    ``MASTER_ADDR`` only, and formed only once every rank has proven the launch's secret (see
    :mod:`rlrt_megatron.store_auth`). Without the variable (torchrun, Slurm's srun) the launcher's
    own ``env://`` rendezvous is used as before."""
    store = bound_store(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, rank, timeout
    )
    prove_membership(
        dist.PrefixStore("rlrt/auth/", store),
        name="trainer ranks",
        secret=os.environ[SECRET_ENV],
        rank=rank,
        world_size=world_size,
    )
    return store


def current_parallel_state() -> ParallelState:
    """The sizes and ranks of the initialized model-parallel state."""
    from megatron.core import parallel_state as mpu

    if not mpu.model_parallel_is_initialized():
        raise RuntimeError("model-parallel state is not initialized: call initialize_parallel()")
    return ParallelState(
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        tensor_parallel=mpu.get_tensor_model_parallel_world_size(),
        pipeline_parallel=mpu.get_pipeline_model_parallel_world_size(),
        data_parallel=mpu.get_data_parallel_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
        backend=dist.get_backend(),
        context_parallel=mpu.get_context_parallel_world_size(),
        cp_rank=mpu.get_context_parallel_rank(),
    )


def destroy_parallel(*, keep_process_group: bool = False) -> None:
    """Tear down megatron's model-parallel groups, and torch.distributed unless
    ``keep_process_group`` (to re-initialize with another layout in the same processes)."""
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if not keep_process_group and dist.is_initialized():
        dist.destroy_process_group()

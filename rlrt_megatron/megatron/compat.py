"""Make megatron-core run on CPU with gloo: an explicit, version-checked compat layer.

megatron-core is written for CUDA. Its model, pipeline schedules, DDP and optimizers work on CPU
tensors and a gloo process group once a handful of CUDA assumptions are removed. This module
removes exactly those, and nothing else, when (and only when) CUDA is absent:

1. **Device requests.** Many call sites allocate with ``device=torch.cuda.current_device()`` or a
   literal ``device="cuda"`` (model layers, TP mappings, RoPE, the causal mask cached by
   ``get_default_causal_mask`` and imported into ``fused_softmax``, the p2p shape exchange and the
   ``total_num_tokens`` counter of the PP schedules, DDP buffers, grad-norm reductions, the
   optimizers' scalars). In the modules listed in ``_CPU_DEVICE_MODULES`` the global name
   ``torch`` is rebound to :class:`_CpuDeviceTorch`, a proxy that forwards everything to the real
   ``torch`` but maps CUDA device requests to the CPU. Nothing outside those modules (and no other
   library in the process) sees a change: ``torch.cuda`` itself is untouched.
2. **RNG.** ``model_parallel_cuda_manual_seed`` and ``CudaRNGStatesTracker`` save and restore the
   CUDA generator. :class:`CpuRNGStatesTracker` tracks CPU generator states instead, so
   tensor-parallel weight init and dropout still draw from per-TP-rank streams.
3. **Type-string checks and ``.cuda()`` calls.** The distributed optimizer and grad clipping test
   ``param.type() == 'torch.cuda.FloatTensor'``; the tied-embedding setup of pipeline-parallel
   models calls ``weight.data.cuda()``. These few functions are recompiled from their installed
   source with the named literal replaced (``_SOURCE_PATCHES``); every replacement must match the
   expected number of times, so a changed upstream fails loudly instead of silently.
4. **Sequence parallel with torch norms.** ``WrappedTorchNorm`` (what the local layer spec uses
   without Apex/Transformer Engine) asserts that sequence parallel is unsupported. It only lacks
   the ``sequence_parallel`` marker on its parameters, which tells ``finalize_model_grads`` to
   all-reduce their partial gradients across the TP group (what ``TENorm`` does); the replacement
   sets it.

Context parallel is not covered: it needs Transformer Engine's attention.

The patches target the megatron-core versions in ``TESTED_MEGATRON_CORE_VERSIONS``. Another
version raises :class:`UntestedMegatronVersionError` unless the environment variable named by
``ALLOW_UNTESTED_ENV`` is set to ``1`` (then the source patches still verify their targets).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import os
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

TESTED_MEGATRON_CORE_VERSIONS = frozenset({"0.16.1"})
ALLOW_UNTESTED_ENV = "RLRT_ALLOW_UNTESTED_MEGATRON_CORE"

_applied = False


class UntestedMegatronVersionError(RuntimeError):
    """The installed megatron-core is not one the CPU compat layer was tested against."""


def cpu_compat_needed() -> bool:
    """True where CUDA is absent, i.e. where :func:`apply_cpu_compat` would patch megatron-core."""
    return not torch.cuda.is_available()


def is_cpu_compat_applied() -> bool:
    return _applied


def apply_cpu_compat() -> bool:
    """Patch megatron-core (and mbridge's helpers) to run on CPU + gloo; idempotent.

    Call it before building models or optimizers (``rlrt_megatron.megatron.parallel`` does).
    Returns ``True`` when the patches are in place, ``False`` when CUDA is available (then nothing
    is changed). Raises :class:`UntestedMegatronVersionError` for an untested megatron-core.
    """
    global _applied
    if not cpu_compat_needed():
        return False
    if _applied:
        return True
    check_megatron_version()
    _patch_rng_tracker()
    for module_name in _CPU_DEVICE_MODULES:
        _bind_cpu_torch(importlib.import_module(module_name))
    for module_name in _OPTIONAL_CPU_DEVICE_MODULES:
        with contextlib.suppress(ImportError):
            _bind_cpu_torch(importlib.import_module(module_name))
    for patch in _SOURCE_PATCHES:
        _apply_source_patch(*patch)
    _patch_wrapped_torch_norm()
    _applied = True
    return True


def check_megatron_version() -> str:
    """Return the installed megatron-core version; raise if it is untested and not allowed."""
    from megatron.core.package_info import __version__

    if __version__ in TESTED_MEGATRON_CORE_VERSIONS:
        return __version__
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        return __version__
    raise UntestedMegatronVersionError(
        f"megatron-core {__version__} is installed, but the CPU compat layer "
        f"(rlrt_megatron.megatron.compat) was tested only with "
        f"{', '.join(sorted(TESTED_MEGATRON_CORE_VERSIONS))}. Install a tested version "
        f"(pip install 'megatron-core==0.16.1'), or set {ALLOW_UNTESTED_ENV}=1 to try anyway: "
        f"each source patch still checks its target and fails with the name of what changed."
    )


# --------------------------------------------------------------------------------------------
# 1. Device requests: a `torch` stand-in for selected modules.
# --------------------------------------------------------------------------------------------

# Modules whose CUDA device requests are redirected, with the call sites that need it
# (megatron-core 0.16.1). Everything here is on the path of GPT forward/backward, TP/PP/DP,
# DDP, the distributed optimizer and grad clipping.
_CPU_DEVICE_MODULES = (
    # GPTModel: `torch.cuda.current_device()` for the packed-sequence position ids.
    "megatron.core.models.gpt.gpt_model",
    # RotaryEmbedding: inv_freq built on / moved to `torch.cuda.current_device()`.
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    # TransformerLayer / Attention / DotProductAttention / MegatronModule: scratch tensors on
    # `torch.cuda.current_device()`.
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.module",
    # GlobalMemoryBuffer (attention's matmul scratch buffer): `torch.cuda.current_device()`.
    "megatron.core.utils",
    # get_default_causal_mask / get_sliding_window_causal_mask: `torch.ones(..., device="cuda")`.
    # fused_softmax imports these functions by name; their globals are this module's, so the
    # imported copies are covered as well.
    "megatron.core.transformer.utils",
    # Column/RowParallelLinear, VocabParallelEmbedding, TP mappings and split/gather utils:
    # weights and all-gather/reduce-scatter outputs on `torch.cuda.current_device()`.
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    # RNG: `torch.cuda.manual_seed` / `get_rng_state` in model_parallel_cuda_manual_seed and
    # CudaRNGStatesTracker.add (see CpuRNGStatesTracker for the rest).
    "megatron.core.tensor_parallel.random",
    # PP: the p2p shape exchange (`torch.cuda.current_device()`, `torch.cuda.synchronize()`) and
    # the schedules' `total_num_tokens = torch.zeros([], dtype=torch.int, device="cuda")`.
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.pipeline_parallel.schedules",
    # DDP: grad/param buffers on `torch.cuda.current_device()`.
    "megatron.core.distributed.param_and_grad_buffer",
    # Optimizers: the distributed optimizer's gather buffers, `get_loss_scale`'s
    # `torch.tensor([1.0], device=torch.cuda.current_device())`, and clip_grads'
    # `torch.tensor(..., device='cuda')` norm / zero-count reductions.
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
)
# Used only if installed: mbridge's export broadcasts between PP stages allocate on
# `torch.cuda.current_device()` (mbridge.core.util.broadcast_from_megatron_pp).
_OPTIONAL_CPU_DEVICE_MODULES = ("mbridge.core.util",)


def _to_cpu_device(device: Any) -> Any:
    """Map a CUDA device request (``"cuda"``, ``"cuda:1"``, ``torch.device("cuda")``, an int) to
    the CPU; leave anything else alone."""
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")  # an int device means a CUDA ordinal to torch factories
    if isinstance(device, str | torch.device) and torch.device(device).type == "cuda":
        return torch.device("cpu")
    return device


def _cpu_factory(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def factory(*args: Any, **kwargs: Any) -> torch.Tensor:
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)  # pinning needs an accelerator
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    factory.__doc__ = fn.__doc__
    return factory


_FACTORIES = (
    "arange",
    "as_tensor",
    "empty",
    "empty_like",
    "full",
    "full_like",
    "ones",
    "ones_like",
    "rand",
    "randint",
    "randn",
    "tensor",
    "zeros",
    "zeros_like",
)


class _CpuCuda(types.ModuleType):
    """Stands in for ``torch.cuda`` inside the patched modules: the current device is the CPU and
    seeding/RNG state goes to the CPU generator. Everything else is the real ``torch.cuda``
    (``is_available()`` is still ``False``, streams and ``nvtx`` are no-ops or unused on CPU)."""

    def __init__(self) -> None:
        super().__init__("torch.cuda")

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        """CPU collectives and kernels are synchronous (the p2p shape exchange calls this)."""

    manual_seed = staticmethod(torch.manual_seed)
    get_rng_state = staticmethod(torch.get_rng_state)
    set_rng_state = staticmethod(torch.set_rng_state)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _CpuDeviceTorch(types.ModuleType):
    """Stands in for ``torch`` inside the patched modules (see the module docstring, item 1)."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CpuCuda()
        for name in _FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


_CPU_TORCH = _CpuDeviceTorch()


def _bind_cpu_torch(module: types.ModuleType) -> None:
    if module.__dict__.get("torch") is not torch and not isinstance(
        module.__dict__.get("torch"), _CpuDeviceTorch
    ):
        raise RuntimeError(
            f"CPU compat: {module.__name__} has no module-level `torch` to redirect; "
            "megatron-core changed, see rlrt_megatron/megatron/compat.py"
        )
    module.torch = _CPU_TORCH


# --------------------------------------------------------------------------------------------
# 2. RNG: a tracker of CPU generator states.
# --------------------------------------------------------------------------------------------


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    """Replaces megatron's ``_get_cuda_rng_state`` (used by activation recompute)."""
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _cpu_set_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False):
    """Replaces megatron's ``_set_cuda_rng_state``."""
    torch.set_rng_state(new_state)


def _make_cpu_tracker_class() -> type:
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """``CudaRNGStatesTracker`` for the CPU generator.

        Replaces upstream ``add`` (which reads/seeds the CUDA generator) and ``fork`` (which
        swaps CUDA generator states and warns whenever the *CPU* state changed inside the fork:
        on CPU that is the point of forking). Same bookkeeping otherwise.
        """

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


CpuRNGStatesTracker: type | None = None  # set by apply_cpu_compat (needs megatron imported)


def _patch_rng_tracker() -> None:
    global CpuRNGStatesTracker
    from megatron.core.tensor_parallel import random as mrandom

    CpuRNGStatesTracker = _make_cpu_tracker_class()
    # initialize_rng_tracker() and get_all_rng_states() look the class up by this global name.
    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state
    # A tracker created before the patch (e.g. by an earlier import-time call) is a CUDA one.
    if mrandom._CUDA_RNG_STATE_TRACKER is not None and not isinstance(
        mrandom._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker
    ):
        mrandom.initialize_rng_tracker(force_reset=True)


# --------------------------------------------------------------------------------------------
# 3. Source patches: type-string checks and `.cuda()` calls.
# --------------------------------------------------------------------------------------------

# (module, qualified name, [(upstream text, replacement, expected count)])
_SOURCE_PATCHES: tuple[tuple[str, str, list[tuple[str, str, int]]], ...] = (
    (
        # Sorts model params into fp16/bf16 and fp32 groups by `model_param.type()`; CPU params
        # report 'torch.FloatTensor' etc. and would hit its "Wrapped parameters must be one of
        # torch.cuda.FloatTensor..." TypeError.
        "megatron.core.optimizer.distrib_optimizer",
        "DistributedOptimizer._build_model_and_main_param_groups",
        [
            (
                "['torch.cuda.HalfTensor', 'torch.cuda.BFloat16Tensor']",
                "['torch.HalfTensor', 'torch.BFloat16Tensor']",
                1,
            ),
            (
                "model_param.type() == 'torch.cuda.FloatTensor'",
                "model_param.type() == 'torch.FloatTensor'",
                1,
            ),
        ],
    ),
    (
        # Asserts every grad is a 'torch.cuda.FloatTensor' before scaling.
        "megatron.core.optimizer.clip_grads",
        "clip_grad_by_total_norm_fp32",
        [("param.grad.type() == 'torch.cuda.FloatTensor'", "param.grad.dtype == torch.float32", 1)],
    ),
    (
        # Tied embeddings across PP stages: `weight.data = weight.data.cuda()` before the
        # first/last-stage all-reduce that makes the two copies equal.
        "megatron.core.models.common.language_module.language_module",
        "LanguageModule.setup_embeddings_and_output_layer",
        [("weight.data = weight.data.cuda()", "weight.data = weight.data", 1)],
    ),
)


def _apply_source_patch(
    module_name: str, qualname: str, replacements: list[tuple[str, str, int]]
) -> None:
    """Recompile ``module.qualname`` from its installed source with literal replacements, and
    rebind the new function wherever megatron imported the old one by name."""
    module = importlib.import_module(module_name)
    owner: Any = module
    *owner_path, attr = qualname.split(".")
    for part in owner_path:
        owner = getattr(owner, part)
    raw = inspect.getattr_static(owner, attr)
    func = raw.__func__ if isinstance(raw, classmethod | staticmethod) else raw
    if getattr(func, "__rlrt_cpu_compat__", False):
        return  # already patched (apply_cpu_compat retried after a failure)
    source = textwrap.dedent(inspect.getsource(func))
    for old, new, expected in replacements:
        found = source.count(old)
        if found != expected:
            raise RuntimeError(
                f"CPU compat: expected {expected} occurrence(s) of {old!r} in "
                f"{module_name}.{qualname}, found {found}; megatron-core changed, update "
                "rlrt_megatron/megatron/compat.py"
            )
        source = source.replace(old, new)
    # Compiled inside a factory taking `__class__` so that zero-argument super() still works.
    factory_src = "def _rlrt_factory(__class__):\n" + textwrap.indent(source, "    ")
    factory_src += f"\n    return {func.__name__}\n"
    code = compile(factory_src, f"<rlrt cpu-compat: {module_name}.{qualname}>", "exec")
    namespace: dict[str, Any] = {}
    exec(code, func.__globals__, namespace)
    new_obj = namespace["_rlrt_factory"](owner if isinstance(owner, type) else None)
    new_func = new_obj.__func__ if isinstance(new_obj, classmethod | staticmethod) else new_obj
    new_func.__rlrt_cpu_compat__ = True
    setattr(owner, attr, new_obj)
    if owner is module:
        for other in list(sys.modules.values()):
            name = getattr(other, "__name__", "") or ""
            if name.startswith("megatron.") and getattr(other, attr, None) is func:
                setattr(other, attr, new_func)


# --------------------------------------------------------------------------------------------
# 4. WrappedTorchNorm with sequence parallel.
# --------------------------------------------------------------------------------------------


def _patch_wrapped_torch_norm() -> None:
    from megatron.core.transformer import torch_norm

    upstream_new = torch_norm.WrappedTorchNorm.__new__
    if getattr(upstream_new, "__rlrt_cpu_compat__", False):
        return

    def __new__(
        cls,
        config,
        hidden_size,
        eps=1e-5,
        persist_layer_norm=False,
        zero_centered_gamma=False,
        normalization="LayerNorm",
    ):
        """Upstream ``WrappedTorchNorm.__new__`` asserts ``not config.sequence_parallel``. With
        sequence parallel the norm sees a sequence shard, so its weight gradient is partial per
        TP rank; marking the parameters ``sequence_parallel`` makes ``finalize_model_grads``
        all-reduce them over the TP group, as it does for Transformer Engine norms."""
        if not config.sequence_parallel:
            return upstream_new(
                cls,
                config,
                hidden_size,
                eps,
                persist_layer_norm,
                zero_centered_gamma,
                normalization,
            )
        # A shallow copy with SP off passes the upstream assertion; torch norms keep no config.
        config_without_sp = copy.copy(config)
        config_without_sp.sequence_parallel = False
        norm = upstream_new(
            cls,
            config_without_sp,
            hidden_size,
            eps,
            persist_layer_norm,
            zero_centered_gamma,
            normalization,
        )
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm

    __new__.__rlrt_cpu_compat__ = True
    torch_norm.WrappedTorchNorm.__new__ = __new__

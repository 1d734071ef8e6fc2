"""One configuration: every setting of every component the run builds has a YAML key (or is
derived in `rlrt_megatron.trainer.stack`, with its derivation listed in ``stack.DERIVED``), and a
value set in YAML arrives in the component config that `stack` builds. No Ray, no ranks: only the
config dataclasses are built."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
import yaml

from rlrt_megatron.algorithms.config import AlgorithmConfig
from rlrt_megatron.algorithms.objective import LossConfig
from rlrt_megatron.cluster.placement import PlacementConfig
from rlrt_megatron.cluster.policy_group import PolicyGroupConfig
from rlrt_megatron.cluster.pool import EnginePoolConfig
from rlrt_megatron.cluster.ray_cluster import RayConfig
from rlrt_megatron.configuration import ConfigError
from rlrt_megatron.megatron.actor import ActorConfig
from rlrt_megatron.megatron.optimizer import AdamWConfig
from rlrt_megatron.megatron.parallel import ParallelConfig
from rlrt_megatron.megatron.train_step import UpdateConfig
from rlrt_megatron.rewards.pool import RewardConfig
from rlrt_megatron.rollout.engine import EngineConfig
from rlrt_megatron.rollout.sampling import SamplingConfig
from rlrt_megatron.trainer import stack
from rlrt_megatron.trainer.config import RunConfig, load_run_config

REQUIRED = {
    "model": {"path": "models/some-qwen3"},
    "data": {"train_files": ["train.parquet"], "max_prompt_tokens": 1000},
    "trainer": {"steps": 3, "run_dir": "runs/x", "seed": 11},
}
STEP, NUM_PROMPTS = 5, 4  # the rollout sampling is built for step 5 of a 4-prompt batch

# Each component config the run builds: (how to build it from a RunConfig, its class, the fields
# `stack` derives for this build, not set by a key).
BUILDS: dict[str, tuple[typing.Callable[[RunConfig], typing.Any], type, frozenset[str]]] = {
    "actor": (stack.actor_config, ActorConfig, frozenset({"hf_path", "temperature", "optimizer"})),
    # lr is the key actor.optimizer.lr; only its null (the method's default) is resolved
    "optimizer": (lambda c: stack.actor_config(c).optimizer, AdamWConfig, frozenset()),
    "parallel": (lambda c: stack.actor_config(c).parallel, ParallelConfig, frozenset()),
    "policy_group": (
        stack.policy_group_config,
        PolicyGroupConfig,
        frozenset({"actor", "num_ranks"}),
    ),
    "engine": (
        stack.engine_config,
        EngineConfig,
        frozenset({"model_path", "max_model_len", "seed", "enable_sleep_mode"}),
    ),
    "engine_pool": (stack.engine_pool_config, EnginePoolConfig, frozenset({"engine"})),
    "placement": (stack.placement_config, PlacementConfig, frozenset()),
    "rollout_sampling": (
        lambda c: stack.rollout_sampling(c, STEP, NUM_PROMPTS),
        SamplingConfig,
        frozenset({"n", "seed"}),
    ),
    "eval_sampling": (stack.evaluation_sampling, SamplingConfig, frozenset({"seed"})),
    "update": (
        stack.update_config,
        UpdateConfig,
        frozenset({"method", "loss", "topk", "srpo_beta", "temperature"}),
    ),
    "algorithm": (lambda c: c.algorithm, AlgorithmConfig, frozenset()),
    "reward": (lambda c: c.reward, RewardConfig, frozenset()),
    "ray": (lambda c: c.ray, RayConfig, frozenset()),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    value: typing.Any
    """What the YAML says (a non-default value)."""
    targets: tuple[tuple[str, str], ...]
    """(build, field) that the value must reach."""
    expected: typing.Any = dataclasses.MISSING
    """The value as the component holds it, where it differs from the YAML's."""
    alone: bool = False
    """Conflicts with another setting of the table: only set on its own."""

    @property
    def arrives_as(self) -> typing.Any:
        return self.value if self.expected is dataclasses.MISSING else self.expected


def s(key, value, *targets, expected=dataclasses.MISSING, alone=False) -> Setting:
    pairs = tuple(tuple(t.split(".", 1)) for t in targets)
    return Setting(key, value, pairs, expected, alone)  # type: ignore[arg-type]


SETTINGS: tuple[Setting, ...] = (
    # actor: ParallelConfig (composed whole)
    s("actor.parallel.tensor_parallel", 2, "parallel.tensor_parallel"),
    s("actor.parallel.pipeline_parallel", 2, "parallel.pipeline_parallel"),
    s("actor.parallel.context_parallel", 2, "parallel.context_parallel"),
    s("actor.parallel.seed", 7, "parallel.seed"),
    s("actor.parallel.timeout_minutes", 5, "parallel.timeout_minutes"),
    # actor: ActorConfig
    s("actor.dtype", "float32", "actor.dtype", expected=torch.float32),
    s("actor.sequence_parallel", True, "actor.sequence_parallel"),
    s("actor.max_tokens", 1234, "actor.max_tokens", "update.max_tokens"),
    s("actor.packing", False, "actor.packing", alone=True),  # CP > 1 needs packing
    s("actor.teacher_weights", "ema", "actor.teacher_weights"),
    s("actor.ema_rate", 0.05, "actor.ema_rate"),
    s("actor.offload_teacher", False, "actor.offload_teacher"),
    s("actor.recompute", "full", "actor.recompute"),
    s("actor.recompute_num_layers", 2, "actor.recompute_num_layers"),
    s("actor.attention", "sdpa", "actor.attention"),
    s("actor.compile_elementwise", True, "actor.compile_elementwise"),
    s("actor.host_allocator", "system", "actor.host_allocator"),
    s("actor.mini_batches", 4, "update.mini_batches"),
    # actor: AdamWConfig (composed whole)
    s("actor.optimizer.lr", 3e-6, "optimizer.lr"),
    s("actor.optimizer.min_lr", 1e-7, "optimizer.min_lr"),
    s("actor.optimizer.warmup_steps", 5, "optimizer.warmup_steps"),
    s("actor.optimizer.decay_style", "cosine", "optimizer.decay_style"),
    s("actor.optimizer.decay_steps", 100, "optimizer.decay_steps"),
    s("actor.optimizer.weight_decay", 0.1, "optimizer.weight_decay"),
    s("actor.optimizer.betas", [0.8, 0.95], "optimizer.betas", expected=(0.8, 0.95)),
    s("actor.optimizer.eps", 1e-6, "optimizer.eps"),
    s("actor.optimizer.clip_grad", 0.5, "optimizer.clip_grad"),
    s("actor.optimizer.use_distributed_optimizer", False, "optimizer.use_distributed_optimizer"),
    s("actor.optimizer.schedule_unit", "optimizer_step", "optimizer.schedule_unit"),
    # actor: PolicyGroupConfig
    s("actor.cpus_per_rank", 2.0, "policy_group.cpus_per_rank"),
    s("actor.gpus_per_rank", 1.0, "policy_group.gpus_per_rank"),
    s("actor.placement_strategy", "SPREAD", "policy_group.placement_strategy"),
    s("actor.placement_timeout_s", 30.0, "policy_group.placement_timeout_s"),
    s("actor.torch_threads", 4, "policy_group.torch_threads"),
    s("actor.env", {"NCCL_DEBUG": "INFO"}, "policy_group.env"),
    # rollout: EngineConfig
    s("rollout.dtype", "float32", "engine.dtype"),
    s("rollout.tensor_parallel", 2, "engine.tensor_parallel_size"),
    s("rollout.max_num_seqs", 64, "engine.max_num_seqs"),
    s("rollout.gpu_memory_utilization", 0.7, "engine.gpu_memory_utilization"),
    s("rollout.cpu_kvcache_space_gib", 4, "engine.cpu_kvcache_space_gib"),
    s("rollout.cpu_threads", 3, "engine.cpu_threads"),
    s("rollout.enforce_eager", True, "engine.enforce_eager"),
    s("rollout.enable_prefix_caching", False, "engine.enable_prefix_caching"),
    s("rollout.cpu_rms_norm_kernel", False, "engine.cpu_rms_norm_kernel"),
    # raw log-probs are the sampling distribution's only at temperature 1, no top-k/top-p
    s("rollout.logprobs_mode", "raw_logprobs", "engine.logprobs_mode", alone=True),
    # rollout: EnginePoolConfig
    s("rollout.num_engines", 3, "engine_pool.num_engines"),
    s("rollout.cpus_per_engine", 2.0, "engine_pool.cpus_per_engine"),
    s("rollout.gpus_per_engine", 2.0, "engine_pool.gpus_per_engine"),
    s("rollout.placement_strategy", "STRICT_SPREAD", "engine_pool.placement_strategy"),
    s("rollout.placement_timeout_s", 60.0, "engine_pool.placement_timeout_s"),
    s("rollout.start_timeout_s", 300.0, "engine_pool.start_timeout_s"),
    s("rollout.max_restarts", 1, "engine_pool.max_restarts"),
    s("rollout.bucket_bytes", 1024, "engine_pool.bucket_bytes"),
    # rollout: PlacementConfig
    s("rollout.placement", "colocated", "placement.mode"),
    s("rollout.colocated_strategy", "STRICT_PACK", "placement.strategy"),
    s("rollout.colocated_timeout_s", 45.0, "placement.timeout_s"),
    s("rollout.weight_transport", "object_store", "placement.weight_transport"),
    s("rollout.sleep_level", 2, "placement.sleep_level"),
    # rollout: SamplingConfig of the rollouts
    s("rollout.temperature", 0.9, "rollout_sampling.temperature"),
    s("rollout.top_p", 0.95, "rollout_sampling.top_p"),
    s("rollout.top_k", 50, "rollout_sampling.top_k"),
    s("rollout.max_response_tokens", 512, "rollout_sampling.max_tokens"),
    s("rollout.stop", ["</answer>"], "rollout_sampling.stop", expected=("</answer>",)),
    # eval: SamplingConfig of the evaluation
    s("eval.n", 4, "eval_sampling.n"),
    s("eval.temperature", 0.6, "eval_sampling.temperature"),
    s("eval.top_p", 0.9, "eval_sampling.top_p"),
    s("eval.top_k", 10, "eval_sampling.top_k"),
    s("eval.max_response_tokens", 256, "eval_sampling.max_tokens"),
    s("eval.stop", ["\n\n"], "eval_sampling.stop", expected=("\n\n",)),
    # algorithm: AlgorithmConfig (composed whole)
    s("algorithm.method", "sdpo", "algorithm.method"),
    s("algorithm.normalize_by_std", True, "algorithm.normalize_by_std"),
    s("algorithm.adv_eps", 1e-5, "algorithm.adv_eps"),
    s("algorithm.lam_init", 0.5, "algorithm.lam_init"),
    s("algorithm.lam_decay_steps", 20, "algorithm.lam_decay_steps"),
    s("algorithm.lam_warmup_steps", 3, "algorithm.lam_warmup_steps"),
    s("algorithm.eps_w", 0.1, "algorithm.eps_w"),
    s("algorithm.entropy_form", "loss", "algorithm.entropy_form"),
    s("algorithm.entropy_alpha", 0.3, "algorithm.entropy_alpha"),
    s("algorithm.entropy_kappa", 3.0, "algorithm.entropy_kappa"),
    s("algorithm.entropy_coef", 0.01, "algorithm.entropy_coef"),
    s("algorithm.distill_topk", 20, "algorithm.distill_topk"),
    s("algorithm.distill_alpha", 0.3, "algorithm.distill_alpha"),
    s("algorithm.srpo_beta", 0.5, "algorithm.srpo_beta"),
    s("algorithm.clip_low", 0.1, "algorithm.clip_low"),
    s("algorithm.clip_high", 0.2, "algorithm.clip_high"),
    s("algorithm.rollout_is_clip", 3.0, "algorithm.rollout_is_clip"),
    s("algorithm.aggregation", "seq-mean-token-mean", "algorithm.aggregation"),
    # reward: RewardConfig (composed whole)
    s("reward.name", "math_dapo", "reward.name"),
    s("reward.num_workers", 3, "reward.num_workers"),
    s("reward.timeout_s", 5.0, "reward.timeout_s"),
    s("reward.memory_limit_mb", None, "reward.memory_limit_mb"),
    s("reward.start_method", "forkserver", "reward.start_method"),
    s("reward.startup_timeout_s", 60.0, "reward.startup_timeout_s"),
    # ray: RayConfig (composed whole)
    s("ray.address", "auto", "ray.address"),
    s("ray.num_cpus", 4, "ray.num_cpus"),
    s("ray.include_dashboard", True, "ray.include_dashboard"),
)


def _nested(dotted: dict[str, typing.Any]) -> dict[str, typing.Any]:
    out: dict[str, typing.Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(base: dict, delta: dict) -> dict:
    merged = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load(tmp_path, settings: dict[str, typing.Any], name: str = "run.yaml") -> RunConfig:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(_merge(REQUIRED, _nested(settings)), sort_keys=False))
    return load_run_config(path)


def _built(config: RunConfig, build: str) -> typing.Any:
    return BUILDS[build][0](config)


# -- (a) every component field has a YAML key or a listed derivation ---------------------------


COMPOSED = {("actor", "parallel"): "parallel"}
"""Fields holding a component config composed whole (its own fields are walked as their build)."""


def test_every_component_field_has_one_yaml_home_or_is_derived():
    set_by_key = {target for setting in SETTINGS for target in setting.targets} | set(COMPOSED)
    for build, (_, cls, derived) in BUILDS.items():
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            by_key = (build, f.name) in set_by_key
            is_derived = f.name in derived
            assert by_key != is_derived, f"{cls.__name__}.{f.name} ({build}): " + (
                "both set by a key and derived" if by_key else "neither a YAML key nor derived"
            )
            if is_derived:
                assert f"{cls.__name__}.{f.name}" in stack.DERIVED, (
                    f"{cls.__name__}.{f.name} is derived without a stated derivation"
                )


def test_the_table_covers_every_config_the_stack_builds(tmp_path):
    """Each dataclass in what `stack.component_configs` returns (nested ones too) is walked by the
    test above, or derived whole (`UpdateConfig.loss`: `AlgorithmConfig.loss_config`)."""
    walked = {cls for _, cls, _ in BUILDS.values()} | {LossConfig}
    found: set[type] = set()

    def collect(value: typing.Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found.add(type(value))
            for f in dataclasses.fields(value):
                collect(getattr(value, f.name))

    for built in stack.component_configs(_load(tmp_path, {})).values():
        collect(built)
    assert found <= walked, found - walked


def test_derived_table_names_real_fields():
    classes = {cls.__name__: cls for _, cls, _ in BUILDS.values()}
    for qualified, how in stack.DERIVED.items():
        name, field_name = qualified.split(".")
        assert field_name in {f.name for f in dataclasses.fields(classes[name])}, qualified
        assert how.strip(), qualified


def test_section_keys_use_the_components_types_and_defaults(tmp_path):
    """A key mirroring a component field has the component's type (its allowed values declared
    once, in the component's module) and its default, except the run's own defaults below."""
    run_defaults = {
        # the run's choices, each differing from the component's library default on purpose
        "actor.mini_batches": 2,  # Table 5: 256 x 8 rollouts / mini-batch 128 prompts
        "rollout.gpu_memory_utilization": 0.5,  # leaves room for a colocated trainer rank
        "rollout.max_response_tokens": 20480,  # the paper's response length
        "eval.temperature": 0.7,  # the paper's evaluation sampling (Qwen3's recommended)
        "eval.top_p": 0.8,
        "eval.top_k": 20,
        "eval.max_response_tokens": 38912,
        "actor.torch_threads": None,  # null: derived from the cores (stack.cpu_threads)
    }
    default = _load(tmp_path, {})
    for setting in SETTINGS:
        section_path, _, leaf = setting.key.rpartition(".")
        section = default
        for part in section_path.split("."):
            section = getattr(section, part)
        section_type = typing.get_type_hints(type(section))[leaf]
        for build, field_name in setting.targets:
            cls = BUILDS[build][1]
            component_type = typing.get_type_hints(cls)[field_name]
            if setting.key.startswith(("algorithm.", "reward.", "ray.", "actor.parallel.")):
                continue  # composed whole: the section is the component's own class
            if setting.key.startswith("actor.optimizer."):
                assert type(section) is AdamWConfig
                continue
            assert section_type == component_type, (setting.key, build, field_name)
            component_default = {f.name: f for f in dataclasses.fields(cls)}[field_name]
            if component_default.default is dataclasses.MISSING:
                continue
            want = run_defaults.get(setting.key, component_default.default)
            assert getattr(section, leaf) == want, (setting.key, getattr(section, leaf), want)
    assert default.actor.optimizer == AdamWConfig(warmup_steps=10)  # Table 5; lr: the method's


def test_composed_sections_are_the_components_own_configs():
    hints = typing.get_type_hints(RunConfig)
    assert hints["algorithm"] is AlgorithmConfig
    assert hints["reward"] is RewardConfig
    assert hints["ray"] is RayConfig
    actor_hints = typing.get_type_hints(hints["actor"])
    assert actor_hints["parallel"] is ParallelConfig
    assert actor_hints["optimizer"] is AdamWConfig


# -- (b) every setting set from YAML arrives ---------------------------------------------------


def _check_arrives(config: RunConfig, setting: Setting) -> None:
    for build, field_name in setting.targets:
        got = getattr(_built(config, build), field_name)
        assert got == setting.arrives_as, (setting.key, build, field_name, got)


@pytest.mark.parametrize("setting", SETTINGS, ids=[x.key for x in SETTINGS])
def test_each_setting_arrives_alone(tmp_path, setting):
    default = _load(tmp_path, {}, "default.yaml")
    for build, field_name in setting.targets:
        assert getattr(_built(default, build), field_name) != setting.arrives_as, (
            f"{setting.key}: pick a value other than the default for this test"
        )
    _check_arrives(_load(tmp_path, {setting.key: setting.value}), setting)


def test_all_settings_at_once_from_one_yaml_file(tmp_path):
    together = [x for x in SETTINGS if not x.alone]
    config = _load(tmp_path, {x.key: x.value for x in together})
    for setting in together:
        _check_arrives(config, setting)
    # every component config builds from it (each runs its own checks)
    assert set(stack.component_configs(config)) >= {"policy_group", "engine_pool", "update"}


def test_derived_values(tmp_path):
    config = _load(
        tmp_path,
        {
            "rollout.temperature": 0.9,
            "rollout.max_response_tokens": 512,
            "eval.max_response_tokens": 4096,
            "actor.parallel.tensor_parallel": 2,
            "actor.parallel.context_parallel": 2,
            "actor.data_parallel": 3,
            "data.rollouts_per_prompt": 6,
            "algorithm.method": "sdpo",
        },
    )
    actor = stack.actor_config(config)
    assert actor.hf_path == "models/some-qwen3"
    assert actor.temperature == 0.9
    assert actor.optimizer.lr == 1e-5  # SDPO's default (Table 5): actor.optimizer.lr unset
    assert config.lr == 1e-5
    policy = stack.policy_group_config(config)
    assert policy.actor == actor and policy.num_ranks == 2 * 1 * 2 * 3
    engine = stack.engine_config(config)
    assert engine.model_path == "models/some-qwen3"
    assert engine.max_model_len == 1000 + 512  # no eval files: the rollouts' length
    assert engine.seed == 11 and engine.enable_sleep_mode is False
    assert stack.engine_pool_config(config).engine == engine
    sampling = stack.rollout_sampling(config, STEP, NUM_PROMPTS)
    assert sampling.n == 6 and sampling.seed == 11 * 1_000_003 + STEP * NUM_PROMPTS
    assert stack.evaluation_sampling(config).seed == 11
    update = stack.update_config(config)
    assert update.method == "sdpo" and update.temperature == 0.9
    assert update.loss == config.algorithm.loss_config()
    spec = config.algorithm.spec.defaults
    assert (update.topk, update.srpo_beta) == (spec.distill_topk, spec.srpo_beta)
    chosen = _load(tmp_path, {"algorithm.distill_topk": 20, "algorithm.srpo_beta": 0.5})
    assert (stack.update_config(chosen).topk, stack.update_config(chosen).srpo_beta) == (20, 0.5)

    with_eval = _load(
        tmp_path,
        {
            "rollout.max_response_tokens": 512,
            "eval.max_response_tokens": 4096,
            "data.eval_files": ["e"],
        },
    )
    assert stack.engine_config(with_eval).max_model_len == 1000 + 4096


def test_a_component_check_fails_in_preflight_naming_the_field(tmp_path):
    from rlrt_megatron.trainer.preflight import PreflightError, check_components

    # 1e-5 exceeds GRPO's default learning rate (1e-6): only known once the method is resolved
    config = _load(tmp_path, {"algorithm.method": "grpo", "actor.optimizer.min_lr": 1e-5})
    with pytest.raises(PreflightError, match=r"actor.optimizer \(lr 1e-06\): need 0 <= min_lr"):
        check_components(config)


# -- (c) misspelled keys name the closest -------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong", "closest"),
    [
        ("actor.ofload_teacher", "actor.offload_teacher"),
        ("actor.optimizer.decay_stlye", "actor.optimizer.decay_style"),
        ("rollout.max_num_seq", "rollout.max_num_seqs"),
        ("rollout.enable_prefix_cache", "rollout.enable_prefix_caching"),
        ("actor.torch_thread", "actor.torch_threads"),
    ],
)
def test_a_misspelled_key_names_the_closest(tmp_path, wrong, closest):
    with pytest.raises(ConfigError, match=f"did you mean '{closest}'"):
        _load(tmp_path, {wrong: 1})
    with pytest.raises(ConfigError, match=f"did you mean '{closest}'"):
        required = ["model.path=m", "data.train_files=[t]", "trainer.steps=1", "trainer.run_dir=r"]
        load_run_config(None, [f"{wrong}=1", *required])


def test_allowed_values_are_the_components(tmp_path):
    with pytest.raises(ConfigError, match=r"actor.optimizer.decay_style: 'step' is not one of"):
        _load(tmp_path, {"actor.optimizer.decay_style": "step"})
    with pytest.raises(ConfigError, match=r"rollout.logprobs_mode: 'logits' is not one of"):
        _load(tmp_path, {"rollout.logprobs_mode": "logits"})


def test_raw_logprobs_need_plain_sampling(tmp_path):
    with pytest.raises(ConfigError, match="raw_logprobs .* needs rollout.temperature=1"):
        _load(tmp_path, {"rollout.logprobs_mode": "raw_logprobs", "rollout.temperature": 0.7})


def test_current_teacher_weights_are_refused_at_load_with_the_reason(tmp_path):
    with pytest.raises(
        ConfigError, match="teacher_weights=current is not supported by the trainer"
    ):
        _load(tmp_path, {"actor.teacher_weights": "current"})

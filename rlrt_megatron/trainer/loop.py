"""The RL loop. `train` is the whole run; `rl_step` is one step, readable top to bottom:

rollout → reward → group advantages → teacher batch → old/teacher log-probs → token advantages →
update → weight sync → metrics (→ checkpoint, evaluation in `train`). With ``rollout.mode:
one_step_off`` the next step's rollouts are generated during this step (`RolloutFeed`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrt_megatron.atomic_files import atomic_write_text
from rlrt_megatron.cluster.agreement import logprob_agreement
from rlrt_megatron.configuration import save_config
from rlrt_megatron.data.templating import encode_chat
from rlrt_megatron.interfaces import Grader, Placement, Policy, RolloutEngines
from rlrt_megatron.megatron.checkpoint import HF_SUBDIR
from rlrt_megatron.megatron.scoring import ScoreResult
from rlrt_megatron.megatron.train_step import TrainBatch
from rlrt_megatron.rewards.pool import RewardBatch, RewardPool
from rlrt_megatron.rollout.sampling import Sample
from rlrt_megatron.trainer.config import RunConfig
from rlrt_megatron.trainer.evaluation import evaluate, evaluate_per_prompt, paired_difference
from rlrt_megatron.trainer.metrics import (
    REWARD_WINDOW,
    MetricsLogger,
    StepTimer,
    read_metrics,
    seconds_since_launch,
)
from rlrt_megatron.trainer.preemption import PreemptionHandler
from rlrt_megatron.trainer.preflight import Preflight, clear_run_outputs, preflight
from rlrt_megatron.trainer.prompts import (
    TemplatedPrompt,
    load_prompts,
    load_tokenizer,
    prompt_batches,
)
from rlrt_megatron.trainer.rollout_feed import GeneratedBatch, RolloutFeed, step_sampling
from rlrt_megatron.trainer.stack import (
    build_placement,
    checkpoint_dir,
    evaluation_sampling,
    export_hf_on_rank,
    load_on_rank,
    save_on_rank,
    update_config,
)
from rlrt_megatron.trainer.step_batch import (
    StepRollouts,
    compute_token_advantages,
    deferred_token_advantages,
    keep_informative_groups,
    on_policy_shortcut,
    plan_teachers,
    reweight_metrics,
    score_for_update,
    shaped_advantages,
    unscored,
)

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """What a checkpoint carries besides the model and optimizer."""

    step: int = 0
    data: dict | None = None
    rng: dict | None = None


def rl_step(
    config: RunConfig,
    step: int,
    run: _Run,
    prompts: list[TemplatedPrompt] | RolloutFeed,
    generator: torch.Generator,
) -> dict[str, float]:
    """One RL step; returns its metrics. ``prompts``: a batch of `TemplatedPrompt` (generated
    now) or the run's `RolloutFeed` (which hands over this step's rollouts and, in one_step_off
    mode, generates the next step's while this one updates)."""
    alg, timer = config.algorithm, StepTimer()
    k = config.data.rollouts_per_prompt
    feed = prompts if isinstance(prompts, RolloutFeed) else None
    with timer("rollout"):
        if feed is not None:
            generated = feed.take(step)
            feed.start_ahead(step)  # one_step_off: step t+1 generates from here to the sync
        else:
            sampling = step_sampling(config, step, len(prompts))
            generated = GeneratedBatch(
                prompts, run.engines.generate([p.ids for p in prompts], sampling)
            )
    prompts, samples = generated.prompts, generated.samples
    rollouts = StepRollouts([p.record for p in prompts], [p.ids for p in prompts], samples)
    flat = rollouts.flat_samples()
    with timer("reward"):
        truths = [p.record.ground_truth for p in prompts for _ in range(k)]
        graded = run.rewards.grade([s.text for s in flat], truths)
    rewards = torch.tensor(graded.scores, dtype=torch.float32).view(len(prompts), k)
    metrics = _rollout_metrics(rewards, flat, graded)
    if config.trainer.dynamic_sampling:
        keep = keep_informative_groups(rewards)
        metrics["dynamic_sampling/kept_groups"] = float(keep.sum())
        if not keep.any():
            return {**metrics, "update/skipped": 1.0, **timer.metrics()}
        rollouts = rollouts.select(keep.nonzero().flatten().tolist())
        rewards, flat = rewards[keep], rollouts.flat_samples()

    correct = rewards >= 1.0
    advantages = shaped_advantages(alg, rollouts, rewards)
    lam = alg.schedule().value(step)
    plan = plan_teachers(alg, rollouts, correct, advantages, lam, generator)
    teacher_prompts = [
        None
        if m is None
        else encode_chat(run.tokenizer, m, enable_thinking=config.model.enable_thinking)
        for m in plan.messages
    ]
    prompts_flat, responses = rollouts.flat_prompts(), [s.token_ids for s in flat]
    run.placement.release_engine_memory()  # colocated: the engines sleep until the sync
    shortcut = on_policy_shortcut(
        alg,
        mini_batches=config.actor.mini_batches,
        teacher_weights=config.actor.teacher_weights,
        rollout_mode=config.rollout.mode,
    )
    # Under the shortcut RLRT/RLSD's log P_S (Eq. 6's D_t) is the update forward's own: the
    # actor scores the teacher views inside the update call and weights A_t there, so there is
    # no scoring pass. trainer.log_teacher_kl keeps the pass of both views of the teacher rows
    # for teacher/kl_mean (D̄_t needs both views' full distributions).
    defer = shortcut and alg.spec.needs_teacher_logprobs and not config.trainer.log_teacher_kl
    with timer("logprobs"):  # all rows, or with the shortcut only the teacher rows (or none)
        if defer:
            scores, scored = unscored(responses, teacher_prompts)
        else:
            scores, scored = score_for_update(
                run.policy,
                prompts_flat,
                responses,
                teacher_prompts,
                shortcut=shortcut,
                teacher_entropy=alg.spec.needs_teacher_entropy,
            )
    advantage_inputs = dict(
        advantages=advantages.flatten(),
        correct=correct.flatten(),
        response_mask=scores.response_mask,
        has_teacher=plan.rows,
        lam=lam,
    )
    reweighting = None
    if defer:
        token_adv, reweighting = deferred_token_advantages(alg, **advantage_inputs)
    else:
        token_adv = compute_token_advantages(
            alg,
            **advantage_inputs,
            student_logprobs=scores.student_log_prob,
            teacher_logprobs=scores.teacher_log_prob,
            student_entropy=scores.student_entropy,  # GRPO+EB's advantage-form entropy term
        )
    engine_logprobs = rollouts.padded(lambda s: s.logprobs)
    batch = TrainBatch(
        prompts=prompts_flat,
        responses=responses,
        old_logprobs=None if shortcut else scores.student_log_prob,
        token_advantages=token_adv.values,
        pg_rows=token_adv.pg_rows,
        distill_rows=token_adv.distill_rows,
        rollout_logprobs=engine_logprobs,
        teacher_prompts=teacher_prompts,
        teacher_entropy=scores.teacher_entropy,
        reweighting=reweighting,
    )
    update = update_config(config)
    with timer("update"):
        update_metrics = run.policy.train_step(batch, update)
    if reweighting is not None:
        token_adv.metrics.update(reweight_metrics(update_metrics, scores.response_mask))
    if feed is not None:
        with timer("rollout_wait"):  # a sync never overtakes the generation in flight
            feed.finish_ahead()
    with timer("sync"):
        sync = run.placement.sync_weights()  # version = the engines' current + 1

    mask = scores.response_mask
    metrics.update(_mean_of(update_metrics, prefix="update/"))
    metrics.update(_policy_metrics(metrics, engine_logprobs, scores, scored, shortcut))
    metrics.update({f"reweight/{k}": v for k, v in token_adv.metrics.items()})
    metrics.update(
        {
            "lambda": lam,
            "teacher/batch_size": float(plan.rows.sum()),
            "teacher/has_context": float(plan.has_context.float().mean()),
            "sync/seconds": sync.seconds,
            "sync/version": float(sync.version),
            # Updates between the rollouts' weights and those this update started from
            # (sync.version − 1): 0 on-policy, 1 with one_step_off.
            "rollout/staleness": float(sync.version - 1 - metrics["rollout/weight_version"]),
        }
    )
    if scores.kl is not None and plan.rows.any():
        rows = plan.rows.unsqueeze(-1) & mask
        metrics["teacher/kl_mean"] = float(scores.kl[rows].mean())
    return {**metrics, **timer.metrics()}


def _policy_metrics(
    metrics: dict,
    engine_logprobs: torch.Tensor,
    scores: ScoreResult,
    scored: torch.Tensor,
    shortcut: bool,
) -> dict[str, float]:
    """Trainer/engine log-prob agreement and the policy's entropy.

    From the scoring pass's rows. With the on-policy shortcut the update's forward is π_old:
    the entropy is its (``update/entropy``, all rows), and when no row was scored the agreement
    is its mean and max |Δ| (``update/rollout_is_logprob_diff_mean`` / ``_max``)."""
    out = {"update/on_policy_shortcut": float(shortcut)}
    mask = scores.response_mask & scored.unsqueeze(1)
    if mask.any():
        out.update(logprob_agreement(engine_logprobs, scores.student_log_prob, mask).metrics())
        out["policy/entropy"] = float(scores.student_entropy[mask].mean())
    else:
        for stat in ("mean", "max"):
            if f"update/rollout_is_logprob_diff_{stat}" in metrics:
                out[f"rollout/logprob_diff_{stat}"] = metrics[
                    f"update/rollout_is_logprob_diff_{stat}"
                ]
    if shortcut and "update/entropy" in metrics:
        out["policy/entropy"] = metrics["update/entropy"]
    return out


def _rollout_metrics(
    rewards: torch.Tensor, flat: list[Sample], graded: RewardBatch
) -> dict[str, float]:
    lengths = torch.tensor([len(s.token_ids) for s in flat], dtype=torch.float32)
    statuses = graded.statuses
    return {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float((rewards >= 1.0).float().mean()),
        "reward/timeout_rate": statuses.count("timeout") / len(statuses),
        "reward/no_answer_rate": statuses.count("no_answer") / len(statuses),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/truncation_rate": sum(s.finish_reason == "length" for s in flat) / len(flat),
        "rollout/weight_version": float(min(s.weight_version for s in flat)),
    }


def _mean_of(per_minibatch: list[dict[str, float]], prefix: str) -> dict[str, float]:
    keys = {k for m in per_minibatch for k in m}
    return {
        prefix + k: float(np.mean([m[k] for m in per_minibatch if k in m])) for k in sorted(keys)
    }


@dataclass
class _Run:
    """What a step works with (`rlrt_megatron.interfaces`: fakes in tests)."""

    placement: Placement
    rewards: Grader
    tokenizer: Any
    """A Hugging Face tokenizer with the model's chat template."""

    @property
    def policy(self) -> Policy:
        return self.placement.policy

    @property
    def engines(self) -> RolloutEngines:
        return self.placement.engines


def _rng_state(generator: torch.Generator) -> dict:
    return {
        "torch": generator.get_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _note_preemption(summary: dict[str, Any], stop: PreemptionHandler, step: int) -> None:
    name = stop.received.name if stop.received is not None else "a signal"
    logger.warning("pre-empted by %s: stopping at step %d, final evaluation skipped", name, step)
    summary.update(
        preempted=True,
        preempted_at_step=step,
        preempted_by=name,
        note=f"pre-empted by {name} at step {step}: the final evaluation was skipped; "
        "trainer.resume=auto continues the run",
    )


def _load_resume_checkpoint(
    config: RunConfig, run: _Run, first: Path | None
) -> tuple[Path | None, dict | None]:
    """Load ``first`` (preflight's pick) into the ranks; with ``resume=auto`` a checkpoint that
    fails to load is skipped for the next older intact one (said in the log). With
    ``trainer.save_hf`` a checkpoint whose HF export is missing (a kill during the export) gets
    it written now: a checkpoint is complete only with its ``hf/``. (Preflight already skipped
    checkpoints whose files are damaged, before any rank loads; a failure that only the load
    finds, on some ranks, can leave the others in a collective until its timeout.)"""
    if first is None:
        return None, None
    candidates = [first]
    if str(config.trainer.resume) == "auto":
        candidates += _older_checkpoints(checkpoint_dir(config), first)
    for index, path in enumerate(candidates):
        try:
            extra = run.policy.run_all(load_on_rank, str(path))[0]
        except Exception as error:
            if index + 1 == len(candidates):
                raise
            logger.warning("resume=auto: %s failed to load (%s); trying an older one", path, error)
            continue
        if config.trainer.save_hf and not (path / HF_SUBDIR / "config.json").is_file():
            logger.warning("%s has no complete %s/ export: writing it now", path, HF_SUBDIR)
            run.policy.run_all(export_hf_on_rank, str(path / HF_SUBDIR))
        return path, extra
    return None, None


def _older_checkpoints(run_dir: Path, than: Path) -> list[Path]:
    """Intact checkpoints of ``run_dir`` older than ``than``, newest first."""
    from rlrt_megatron.megatron.checkpoint import (
        CheckpointLoadError,
        list_checkpoints,
        verify_checkpoint_files,
    )

    older = []
    for path in reversed(list_checkpoints(run_dir)):
        if path.name >= than.name:  # step_N names are zero-padded: they sort by step
            continue
        try:
            verify_checkpoint_files(path)
        except CheckpointLoadError:
            continue
        older.append(path)
    return older


def train(
    config: RunConfig, checked: Preflight | None = None, *, verbose: bool = False
) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary also written to ``summary.json``.

    Pre-emption signals (SIGTERM, SIGUSR1) are caught from the first line: one that arrives
    during start-up stops the run before its first step, one during training after the current
    step's checkpoint; either way the final evaluation is skipped (Slurm's grace window is short)
    and the summary says where the run stopped. ``checked``: the result of `preflight` when the
    caller ran it already (otherwise it runs here, before anything starts). Unless ``verbose``,
    the engines' and ranks' output goes to ``<run_dir>/logs/`` instead of the console."""
    with PreemptionHandler() as stop:
        return _train(config, stop, checked, verbose)


def _train(
    config: RunConfig, stop: PreemptionHandler, checked: Preflight | None, verbose: bool = False
) -> dict[str, Any]:
    from rlrt_megatron.cluster.actor_logs import LOGS_SUBDIR, actor_logs
    from rlrt_megatron.cluster.ray_cluster import init_ray

    started = time.time()
    checked = checked or preflight(config)  # raises PreflightError before anything starts
    if checked.clear_run_folder:
        removed = clear_run_outputs(config.run_dir)
        logger.warning("trainer.overwrite: deleted %s from %s", removed, config.run_dir)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    tokenizer = load_tokenizer(config.model.path)
    load = dict(
        max_prompt_tokens=config.data.max_prompt_tokens,
        on_bad_row=config.data.on_bad_row,
        enable_thinking=config.model.enable_thinking,
    )
    train_prompts, data_counts = load_prompts(
        config.data.train_files, tokenizer, prompt_format=config.data.prompt_format, **load
    )
    eval_prompts = (
        load_prompts(config.data.eval_files, tokenizer, **load)[0] if config.data.eval_files else []
    )
    batches = prompt_batches(train_prompts, config.data.prompts_per_step, config.data.seed)
    generator = torch.Generator().manual_seed(config.trainer.seed)

    init_ray(config.ray, quiet=not verbose)
    logs = None if verbose else run_dir / LOGS_SUBDIR
    logger.info(
        "run folder %s; starting %s (their logs: %s)",
        run_dir,
        "the trainer ranks, which generate the rollouts (rollout.backend=in_rank)"
        if config.rollout.backend == "in_rank"
        else "the engines and trainer ranks",
        "this console (--verbose)" if logs is None else f"{logs}/",
    )
    placing = time.perf_counter()
    with (
        actor_logs(logs),
        RewardPool.from_config(config.reward) as rewards,
        build_placement(config) as placement,
    ):
        placed = time.perf_counter() - placing  # engines and ranks up (start-up's largest part)
        run = _Run(placement, rewards, tokenizer)
        feed = RolloutFeed(config, placement.engines, batches)
        state = RunState()
        resume_from, extra = _load_resume_checkpoint(config, run, checked.resume_from)
        if resume_from is not None:
            state = RunState(step=extra["step"], data=extra.get("data"), rng=extra.get("rng"))
            feed.load_state_dict(state.data, extra.get("rollouts_ahead"))
            generator.set_state(state.rng["torch"])
            random.setstate(state.rng["python"])
            np.random.set_state(state.rng["numpy"])
            placement.sync_weights(version=state.step)
            logger.info("resumed from %s at step %d", resume_from, state.step)
        eval_sampling = evaluation_sampling(config)
        summary: dict[str, Any] = {"method": config.algorithm.method, "data": data_counts}
        if resume_from is not None:
            summary["resumed_from"] = str(resume_from)
        if checked.skipped_checkpoints:
            summary["skipped_checkpoints"] = {str(p): why for p, why in checked.skipped_checkpoints}
        before_file = run_dir / "eval_before.json"  # kept so that a resumed run can pair
        if eval_prompts and state.step == 0 and not stop.should_stop:
            logger.info("evaluating before training: %d held-out problems", len(eval_prompts))
            metrics, per_prompt = evaluate_per_prompt(
                run.engines, rewards, eval_prompts, eval_sampling
            )
            before_file.write_text(
                json.dumps({"metrics": metrics, "per_prompt": per_prompt.tolist()})
            )
        if eval_prompts and before_file.exists():
            before = json.loads(before_file.read_text())
            summary["eval_before"] = before["metrics"]
        first_reward = None
        last: dict[str, float] = {}
        with (
            MetricsLogger(
                run_dir,
                total_steps=config.trainer.steps,
                initial_step=state.step,
                console=config.trainer.console,
            ) as log,
        ):
            for step in range(state.step, config.trainer.steps):
                if stop.should_stop:  # signalled during start-up: no step to checkpoint
                    _note_preemption(summary, stop, step)
                    break
                if "startup_seconds" not in summary:  # launch → first step, in the summary too
                    summary.update(startup_seconds=seconds_since_launch(), placement_seconds=placed)
                    log.message(
                        f"start-up {summary['startup_seconds']:.1f} s to the first step (engines "
                        f"and ranks {placed:.1f} s)"
                    )
                last = rl_step(config, step, run, feed, generator)
                if config.eval.every and eval_prompts and (step + 1) % config.eval.every == 0:
                    last.update(
                        {
                            f"eval/{k}": v
                            for k, v in evaluate(
                                run.engines, rewards, eval_prompts, eval_sampling
                            ).items()
                        }
                    )
                log.log(step + 1, last)
                first_reward = last["reward/mean"] if first_reward is None else first_reward
                done = step + 1 == config.trainer.steps
                if done or stop.should_stop or (step + 1) % config.trainer.save_every == 0:
                    # data position (+ one_step_off's batch generated ahead) and RNG states
                    extra = {**feed.state_dict(), "rng": _rng_state(generator)}
                    saved = run.policy.run_all(
                        save_on_rank,
                        str(checkpoint_dir(config)),
                        step + 1,
                        extra,
                        config.trainer.keep_last,
                    )[0]
                    if config.trainer.save_hf:
                        run.policy.run_all(export_hf_on_rank, str(Path(saved) / HF_SUBDIR))
                if stop.should_stop:
                    _note_preemption(summary, stop, step + 1)
                    break
        if stop.should_stop and not summary.get("preempted"):  # no step was left to run
            _note_preemption(summary, stop, max(state.step, config.trainer.steps))
        if eval_prompts and not summary.get("preempted"):
            logger.info("evaluating after training: %d held-out problems", len(eval_prompts))
            summary["eval_after"], after = evaluate_per_prompt(
                run.engines, rewards, eval_prompts, eval_sampling
            )
            if "eval_before" in summary and len(before["per_prompt"]) == len(after) > 1:
                paired = paired_difference(before["per_prompt"], after)
                summary.update({f"eval_accuracy_{k}": v for k, v in paired.items()})
    summary.update(
        steps=config.trainer.steps,
        train_reward_first=first_reward,
        train_reward_last=last.get("reward/mean"),
        seconds=time.time() - started,
    )
    # Single-step rewards are noisy (32 prompts); windows over the whole history (resumes
    # included) show the trend.
    rewards_seen = [r["reward/mean"] for r in read_metrics(run_dir) if "reward/mean" in r]
    if rewards_seen:
        window = min(REWARD_WINDOW, len(rewards_seen))
        summary[f"train_reward_mean_first_{REWARD_WINDOW}"] = float(np.mean(rewards_seen[:window]))
        summary[f"train_reward_mean_last_{REWARD_WINDOW}"] = float(np.mean(rewards_seen[-window:]))
    if "eval_before" in summary:
        summary["eval_accuracy_before"] = summary["eval_before"]["accuracy"]
    if "eval_after" in summary:
        summary["eval_accuracy_after"] = summary["eval_after"]["accuracy"]
    # Replaced in one step: a kill never tears it.
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary

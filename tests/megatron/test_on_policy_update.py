"""The on-policy shortcut of the update (``TrainBatch.old_logprobs=None``) on gloo, float32.

With one mini-batch the update runs on the weights that scored the old log-probs, so taking
π_old from the update's own forward (detached) must give the same update as the separate
scoring pass: same parameters and metrics to 1e-6. Two ranks, DP=2 and TP=2, several packed
micro-batches per rank, grpo, rlrt (token advantages from the teacher view) and sdpo (top-k
distillation rows, whose IS ratio also reads π_old), with engine log-probs (truncated IS).

RLRT also runs with its token weights left to the update (`DeferredReweighting`: the actor
scores the teacher views itself, Eq. 6's log P_S is the update forward's own): the same update
again, and the same reweighting statistics as the driver computes from a full scoring pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _dist import run_distributed

pytestmark = pytest.mark.distributed

LAYOUTS = {"dp2": 1, "tp2": 2}  # name: TP (DP is what is left of the 2 ranks)
METHODS = ("grpo", "rlrt", "sdpo")
DEFERRED = ("rlrt",)  # methods also run with the token weights applied in the update
CORRECT = torch.tensor([True, False, False, True, False, True, False, True])
ADVANTAGES = torch.tensor([0.9, -1.1, -0.7, 1.3, -0.4, 0.8, -0.5, 0.9])
LAM, EPS_W = 0.5, 1.0
MAX_TOKENS = 32  # packed: several micro-batches per rank
TOL = 1e-6


def _rollouts():
    g = torch.Generator().manual_seed(11)

    def ids(n):
        return torch.randint(0, 500, (n,), generator=g).tolist()

    prompts = [ids(n) for n in (3, 5, 2, 6, 4, 3, 5, 2)]
    responses = [ids(n) for n in (7, 3, 9, 5, 4, 8, 2, 6)]
    teachers = [None if n is None else ids(n) for n in (9, None, 11, 8, None, 12, 7, None)]
    return prompts, responses, teachers


def _actor(hf_path, tp):
    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import ParallelConfig

    return PolicyActor(
        ActorConfig(
            hf_path=hf_path,
            parallel=ParallelConfig(tensor_parallel=tp),
            optimizer=AdamWConfig(lr=1e-2, eps=1e-3, weight_decay=0.1, clip_grad=1.0),
            dtype=torch.float32,
            max_tokens=MAX_TOKENS,
        )
    )


def _batch(method, scores, rollouts):
    """The update's inputs as the loop builds them, from one scoring pass of the rollouts."""
    from rlrt_megatron.algorithms.registry import distillation_rows, policy_gradient_rows
    from rlrt_megatron.algorithms.reweighting import token_advantages

    prompts, responses, teachers = rollouts
    mask = scores.response_mask
    correct, advantages = CORRECT, ADVANTAGES
    has_teacher = scores.has_teacher
    adv = token_advantages(
        method,
        advantages,
        correct,
        scores.student_log_prob,
        scores.student_log_prob if scores.teacher_log_prob is None else scores.teacher_log_prob,
        mask,
        has_teacher,
        lam=LAM,
        eps_w=EPS_W,
    )
    g = torch.Generator().manual_seed(5)
    old = scores.student_log_prob
    engine = torch.where(mask, old + 0.05 * torch.randn(old.shape, generator=g), 0.0)
    return dict(
        prompts=prompts,
        responses=responses,
        old_logprobs=old,
        token_advantages=adv,
        pg_rows=policy_gradient_rows(method, correct, has_teacher),
        distill_rows=distillation_rows(method, correct, has_teacher),
        rollout_logprobs=engine,
        teacher_prompts=teachers,
    )


def _deferred_run(hf_path, tp, method, rollouts):
    """The update with Eq. 6–7 applied in the loss, as the trainer runs it under the shortcut:
    no scoring pass, the update gets the plain A and a `DeferredReweighting` without teacher
    log-probs (the actor scores the teacher views as plain sequences first)."""
    from rlrt_megatron.algorithms.reweighting import DeferredReweighting, token_weight_stats
    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    prompts, responses, teachers = rollouts
    actor = _actor(hf_path, tp)
    before = {n: t.clone() for n, t in actor.export_hf_weights()}
    scores = actor.score(prompts, responses, teacher_prompts=teachers)  # for the reference stats
    mask = scores.response_mask
    inputs = _batch(method, scores, rollouts)
    inputs.update(
        old_logprobs=None,
        token_advantages=torch.where(mask, ADVANTAGES[:, None].expand(mask.shape), 0.0),
        # teacher_logprobs None: the actor scores the teacher views in the update call.
        reweighting=DeferredReweighting(
            advantages=ADVANTAGES,
            correct=CORRECT,
            has_teacher=scores.has_teacher,
            teacher_logprobs=None,
            lam=LAM,
            eps_w=EPS_W,
        ),
    )
    config = UpdateConfig(method=method, mini_batches=1, max_tokens=MAX_TOKENS, topk=5)
    metrics = actor.train_step(TrainBatch(**inputs), config)
    params = {n: t.clone() for n, t in actor.export_hf_weights()}
    stats = token_weight_stats(
        method,
        ADVANTAGES,
        CORRECT,
        scores.student_log_prob,
        scores.teacher_log_prob,
        mask,
        scores.has_teacher,
        eps_w=EPS_W,
    )
    del actor
    destroy_parallel(keep_process_group=True)
    return {
        "params": params,
        "metrics": metrics,
        "before": before,
        "stats": stats,
        "response_tokens": float(mask.sum()),
    }


def _worker(rank: int, out_dir: str, hf_path: str) -> None:
    import torch.distributed as dist

    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    out = Path(out_dir)
    rollouts = _rollouts()
    for layout, tp in LAYOUTS.items():
        for method in METHODS:
            runs = {}
            for shortcut in (False, True):
                actor = _actor(hf_path, tp)
                before = {n: t.clone() for n, t in actor.export_hf_weights()}
                scores = actor.score(rollouts[0], rollouts[1], teacher_prompts=rollouts[2])
                inputs = _batch(method, scores, rollouts)
                if shortcut:
                    inputs["old_logprobs"] = None
                config = UpdateConfig(method=method, mini_batches=1, max_tokens=MAX_TOKENS, topk=5)
                metrics = actor.train_step(TrainBatch(**inputs), config)
                params = {n: t.clone() for n, t in actor.export_hf_weights()}
                runs[shortcut] = {"params": params, "metrics": metrics, "before": before}
                del actor
                destroy_parallel(keep_process_group=True)
            if method in DEFERRED:
                runs["deferred"] = _deferred_run(hf_path, tp, method, rollouts)
            if rank == 0:
                torch.save(runs, out / f"{layout}-{method}.pt")
    # Several mini-batches with old_logprobs=None: refused (π moves after the first step).
    actor = _actor(hf_path, 1)
    scores = actor.score(rollouts[0], rollouts[1])
    inputs = dict(_batch("grpo", scores, rollouts), old_logprobs=None)
    try:
        actor.train_step(TrainBatch(**inputs), UpdateConfig(method="grpo", mini_batches=2))
        error = ""
    except ValueError as e:
        error = str(e)
    if rank == 0:
        torch.save(error, out / "two-minibatches.pt")
    del actor
    dist.barrier()
    destroy_parallel()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_qwen3_dir) -> Path:
    out = tmp_path_factory.mktemp("on_policy")
    run_distributed(_worker, 2, str(out), str(tiny_qwen3_dir), timeout_s=900)
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("method", METHODS)
def test_update_without_scoring_pass_is_the_same(run, layout, method):
    runs = torch.load(run / f"{layout}-{method}.pt")
    scored, shortcut = runs[False], runs[True]
    moved = max((scored["params"][n] - scored["before"][n]).abs().max() for n in scored["before"])
    assert moved > 1e-4  # a real update happened
    for name, value in scored["params"].items():
        diff = (value - shortcut["params"][name]).abs().max().item()
        assert diff <= TOL, f"{name}: {diff}"
    (m_scored,), (m_short,) = scored["metrics"], shortcut["metrics"]
    assert m_scored.keys() == m_short.keys()
    for key, value in m_scored.items():
        assert abs(value - m_short[key]) <= TOL * max(1.0, abs(value)), key
    if method == "sdpo":
        assert m_scored["distill_tokens"] > 0
    if method == "rlrt":
        assert m_scored["pg_tokens"] > 0


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("method", DEFERRED)
def test_update_reweighting_from_its_own_forward_is_the_same(run, layout, method):
    from rlrt_megatron.algorithms.reweighting import REWEIGHT_SUM_KEYS, weight_stats_from_sums

    runs = torch.load(run / f"{layout}-{method}.pt")
    scored, deferred = runs[False], runs["deferred"]
    for name, value in scored["params"].items():
        diff = (value - deferred["params"][name]).abs().max().item()
        assert diff <= TOL, f"{name}: {diff}"
    (m_scored,), (m_deferred,) = scored["metrics"], deferred["metrics"]
    sums = {k: m_deferred.pop(f"reweight_{k}") for k in REWEIGHT_SUM_KEYS}
    assert m_scored.keys() == m_deferred.keys()
    for key, value in m_scored.items():
        assert abs(value - m_deferred[key]) <= TOL * max(1.0, abs(value)), key
    # The update's sums give the driver's statistics of a full scoring pass.
    stats = weight_stats_from_sums(sums, deferred["response_tokens"])
    assert stats["reweighted_tokens"] > 0
    for key, value in deferred["stats"].items():
        assert stats[key] == pytest.approx(value, abs=TOL), key


def test_several_minibatches_need_old_logprobs(run):
    error = torch.load(run / "two-minibatches.pt")
    assert "needs mini_batches=1" in error

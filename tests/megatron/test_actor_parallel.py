"""PolicyActor on gloo (TP=2, PP=2, DP=2) against a single-process HF Qwen3 reference.

One spawn of two ranks runs every layout in turn and writes what it computed:
- scores of rollouts of different lengths, some with teacher contexts (student/teacher log-probs,
  entropies, KL, top-k with tails), from every rank (all ranks must hold the full result);
- parameters and metrics after one update (two mini-batches, several micro-batches each) for
  grpo, rlrt (token advantages from teacher log-probs) and sdpo (top-k distillation);
- a skipped update (non-finite loss), and the teacher-weight options initial / ema / current.
The tests compare those files with HF ``Qwen3ForCausalLM`` + ``torch.optim.AdamW`` in float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _dist import run_distributed
from _topk import align_topk_to_reference

pytestmark = pytest.mark.distributed

# name: (TP, PP, sequence parallel); DP is what is left of the 2 ranks.
LAYOUTS = {"tp2": (2, 1, False), "tp2_sp": (2, 1, True), "pp2": (1, 2, False), "dp2": (1, 1, False)}
TRAIN = {
    "tp2": ("grpo", "rlrt", "sdpo", "grpo_eb"),
    "tp2_sp": ("sdpo",),
    "pp2": ("grpo", "rlrt", "sdpo"),
    "dp2": ("rlrt", "sdpo", "srpo"),
}
METHODS = ("grpo", "rlrt", "sdpo", "grpo_eb", "srpo")
TEACHER_LAYOUT = "pp2"  # the teacher-weight options run here (swaps on a pipeline stage's shard)
NONFINITE_LAYOUT = "tp2"
TOPK = 5
MAX_TOKENS = 40  # small: every scoring pass needs several (packed) micro-batches
TRAIN_MAX_TOKENS = 32  # packed: every mini-batch of every update needs several micro-batches
MINI_BATCHES = 2
EMA_RATE = 0.25
# See test_model_parity.py: Adam's eps keeps the first step smooth in g; large weight decay makes
# the no-decay group visible.
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.1)
ATOL = 1e-4
PARAM_ATOL = 1e-5


def _rollouts():
    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(0, 500, (n,), generator=g).tolist()

    prompt_lens = [3, 5, 2, 6, 4, 3, 5, 2]
    response_lens = [7, 3, 9, 5, 4, 8, 2, 6]
    teacher_lens = [9, None, 11, 8, None, 12, 7, None]
    prompts = [ids(n) for n in prompt_lens]
    responses = [ids(n) for n in response_lens]
    teachers = [None if n is None else ids(n) for n in teacher_lens]
    return prompts, responses, teachers


# ---------------------------------------------------------------------------------------------
# The distributed run.
# ---------------------------------------------------------------------------------------------


def _actor(hf_path, layout, teacher_weights="behavior"):
    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import ParallelConfig

    tp, pp, sp = LAYOUTS[layout]
    return PolicyActor(
        ActorConfig(
            hf_path=hf_path,
            parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp),
            optimizer=AdamWConfig(**ADAMW, clip_grad=1.0),
            dtype=torch.float32,
            sequence_parallel=sp,
            max_tokens=MAX_TOKENS,
            teacher_weights=teacher_weights,
            ema_rate=EMA_RATE,
        )
    )


def _loss_config():
    from rlrt_megatron.algorithms.objective import LossConfig

    return LossConfig(entropy_coef=0.1)  # only grpo_eb uses it; large enough to matter


def _update(method):
    from rlrt_megatron.megatron.train_step import UpdateConfig

    return UpdateConfig(
        method=method,
        loss=_loss_config(),
        mini_batches=MINI_BATCHES,
        max_tokens=TRAIN_MAX_TOKENS,
        topk=TOPK,
    )


def _export(actor):
    return {name: t.clone() for name, t in actor.export_hf_weights()}


def _worker(rank: int, out_dir: str, hf_path: str) -> None:
    import dataclasses

    import torch.distributed as dist

    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    out = Path(out_dir)
    inputs = torch.load(out / "inputs.pt")
    prompts, responses, teachers = inputs["rollouts"]
    for layout in LAYOUTS:
        actor = _actor(hf_path, layout)
        scores = actor.score(
            prompts, responses, teacher_prompts=teachers, topk=TOPK, teacher_entropy=True
        )
        torch.save(dataclasses.asdict(scores), out / f"{layout}-scores-rank{rank}.pt")
        if layout == "dp2":  # fewer rollouts than DP ranks: one rank scores nothing
            single = actor.score(prompts[:1], responses[:1], teacher_prompts=teachers[:1])
            torch.save(dataclasses.asdict(single), out / f"single-rank{rank}.pt")
        for method in TRAIN[layout]:
            actor = _actor(hf_path, layout)
            metrics = actor.train_step(TrainBatch(**inputs[method]), _update(method))
            params = _export(actor)
            if rank == 0:
                torch.save({"params": params, "metrics": metrics}, out / f"{layout}-{method}.pt")
        if layout == NONFINITE_LAYOUT:
            actor = _actor(hf_path, layout)
            before, lr = _export(actor), actor.lr
            batch = dict(inputs["grpo"])
            batch["rollout_logprobs"] = batch["rollout_logprobs"].clone()
            batch["rollout_logprobs"][0, 0] = math.nan  # NaN importance weight -> NaN loss
            one_step = UpdateConfig(method="grpo", mini_batches=1, max_tokens=MAX_TOKENS)
            metrics = actor.train_step(TrainBatch(**batch), one_step)
            after = _export(actor)
            if rank == 0:
                same = all(torch.equal(before[n], after[n]) for n in before)
                torch.save(
                    {"metrics": metrics, "unchanged": same, "lr": (lr, actor.lr)},
                    out / "nonfinite.pt",
                )
        if layout == TEACHER_LAYOUT:
            _teacher_weight_runs(rank, out, hf_path, layout, inputs)
        del actor
        destroy_parallel(keep_process_group=True)
    dist.barrier()
    destroy_parallel()


def _teacher_weight_runs(rank, out, hf_path, layout, inputs):
    from rlrt_megatron.algorithms.reweighting import token_advantages
    from rlrt_megatron.megatron.train_step import TrainBatch, UpdateConfig

    prompts, responses, teachers = inputs["rollouts"]
    one_step = UpdateConfig(method="grpo", mini_batches=1, max_tokens=MAX_TOKENS)
    for mode in ("initial", "ema"):
        actor = _actor(hf_path, layout, teacher_weights=mode)
        actor.train_step(TrainBatch(**inputs["grpo"]), one_step)
        params = _export(actor)
        scores = actor.score(prompts, responses, teacher_prompts=teachers, teacher_entropy=True)
        if rank == 0:
            torch.save({"params": params, "scores": scores}, out / f"teacher-{mode}.pt")

    actor = _actor(hf_path, layout, teacher_weights="current")
    seen = []
    rl = inputs["rlrt_inputs"]

    def refresh(rows, scores):
        seen.append({"rows": rows, "scores": scores, "params": _export(actor)})
        index = torch.tensor(rows)
        t = scores.response_mask.shape[1]
        return {
            "token_advantages": token_advantages(
                "rlrt",
                rl["advantages"][index],
                rl["correct"][index],
                inputs["rlrt"]["old_logprobs"][index, :t],
                scores.teacher_log_prob,
                scores.response_mask,
                scores.has_teacher,
                lam=0.5,
                eps_w=1.0,
            )
        }

    metrics = actor.train_step(
        TrainBatch(**inputs["rlrt"]), _update("rlrt"), refresh_teacher=refresh
    )
    if rank == 0:
        torch.save({"seen": seen, "metrics": metrics}, out / "teacher-current.pt")


# ---------------------------------------------------------------------------------------------
# Single-process HF reference.
# ---------------------------------------------------------------------------------------------


def _hf(path, state=None):
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32)
    if state is not None:
        model.load_state_dict(state, strict=False)  # a tied lm_head follows embed_tokens
    return model


def _response_logprobs(model, prompt, response):
    """Full log-softmax [T, V] at the response positions (with grad)."""
    seq = torch.tensor([list(prompt) + list(response)])
    logits = model(seq).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(response)]
    return torch.log_softmax(logits.float(), dim=-1)


def _pad(rows, width, *extra):
    out = torch.zeros(len(rows), width, *extra)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


@pytest.fixture(scope="module")
def data(tiny_qwen3_dir):
    return reference_data(tiny_qwen3_dir)


def reference_data(tiny_qwen3_dir) -> dict:
    """Rollouts and the per-method update inputs (old log-probs from the HF model at θ0)."""
    from rlrt_megatron.algorithms.registry import distillation_rows, policy_gradient_rows
    from rlrt_megatron.algorithms.reweighting import token_advantages

    prompts, responses, teachers = _rollouts()
    model = _hf(tiny_qwen3_dir)
    b, t = len(responses), max(len(r) for r in responses)
    with torch.no_grad():
        s_lp = [_response_logprobs(model, p, r) for p, r in zip(prompts, responses, strict=True)]
        t_lp = [
            None if c is None else _response_logprobs(model, c, r)
            for c, r in zip(teachers, responses, strict=True)
        ]
    old = _pad(
        [
            lp.gather(1, torch.tensor(r)[:, None])[:, 0]
            for lp, r in zip(s_lp, responses, strict=True)
        ],
        t,
    )
    teacher_lp = _pad(
        [
            torch.zeros(len(r)) if lp is None else lp.gather(1, torch.tensor(r)[:, None])[:, 0]
            for lp, r in zip(t_lp, responses, strict=True)
        ],
        t,
    )
    mask = torch.arange(t)[None] < torch.tensor([len(r) for r in responses])[:, None]
    has_teacher = torch.tensor([c is not None for c in teachers])
    # Teacher rows 0, 2, 3, 5, 6: correct ones (RLRT reweights) and incorrect ones (SRPO distills).
    correct = torch.tensor([True, False, False, True, False, True, False, True])
    advantages = torch.tensor([0.9, -1.1, -0.7, 1.3, -0.4, 0.8, -0.5, 0.9])
    teacher_entropy = _pad(
        [
            torch.zeros(len(r)) if lp is None else -(lp.exp() * lp).sum(-1)
            for lp, r in zip(t_lp, responses, strict=True)
        ],
        t,
    )
    g = torch.Generator().manual_seed(5)
    rollout = torch.where(mask, old + 0.05 * torch.randn(b, t, generator=g), torch.zeros(b, t))
    common = dict(prompts=prompts, responses=responses, old_logprobs=old, rollout_logprobs=rollout)
    batches = {}
    for method in METHODS:
        adv = token_advantages(
            method, advantages, correct, old, teacher_lp, mask, has_teacher, lam=0.5, eps_w=1.0
        )
        batches[method] = dict(
            common,
            token_advantages=adv,
            pg_rows=policy_gradient_rows(method, correct, has_teacher),
            distill_rows=distillation_rows(method, correct, has_teacher),
            teacher_prompts=teachers,
            teacher_entropy=teacher_entropy,
        )
    return {
        "rollouts": (prompts, responses, teachers),
        "student": s_lp,
        "teacher": t_lp,
        "rlrt_inputs": {"advantages": advantages, "correct": correct},
        **batches,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_qwen3_dir, data) -> Path:
    out = tmp_path_factory.mktemp("actor")
    torch.save(data, out / "inputs.pt")
    run_distributed(_worker, 2, str(out), str(tiny_qwen3_dir), timeout_s=900)
    return out


def reference_update(
    path, batch, method, mini_batches, state=None, *, teacher_state=None, teacher_ema_rate=None
):
    """The update in one process: HF model, method_loss on each whole mini-batch (its own
    token-mean), clip 1.0, AdamW without decay on 1-D params. Returns (params, losses, norms).

    ``mini_batches``: an int (one update), or a sequence of them: consecutive updates over the
    same batch with one optimizer. ``teacher_state``: the weights of a separate distillation
    teacher (default: the model being trained, at its current weights); frozen, or with
    ``teacher_ema_rate`` an EMA moved after every optimizer step: t ← t + rate·(θ − t)."""
    from rlrt_megatron.algorithms.distillation import srpo_token_weights, topk_with_tail
    from rlrt_megatron.algorithms.objective import DistillInputs, method_loss

    model = _hf(path, state)
    teacher_model = model if teacher_state is None else _hf(path, teacher_state)
    params = dict(model.named_parameters())
    decay = [p for p in params.values() if p.dim() > 1]
    no_decay = [p for p in params.values() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **ADAMW)
    b = len(batch["responses"])
    steps = [mini_batches] if isinstance(mini_batches, int) else list(mini_batches)
    ranges = []
    for n in steps:
        bounds = torch.linspace(0, b, n + 1).round().long().tolist()
        ranges += list(zip(bounds[:-1], bounds[1:], strict=True))
    losses, norms = [], []
    for start, end in ranges:
        rows = list(range(start, end))
        t = max(len(batch["responses"][r]) for r in rows)
        lps, ents, topks = [], [], []
        for r in rows:
            lp = _response_logprobs(model, batch["prompts"][r], batch["responses"][r])
            y = torch.tensor(batch["responses"][r])[:, None]
            lps.append(lp.gather(1, y)[:, 0])
            ents.append(-(lp.exp() * lp).sum(-1))
            if batch["distill_rows"][r]:
                with torch.no_grad():
                    tlp = _response_logprobs(
                        teacher_model, batch["teacher_prompts"][r], y[:, 0].tolist()
                    )
                topks.append(topk_with_tail(lp, tlp, TOPK))
            else:
                z = torch.zeros(len(y), TOPK)
                topks.append((None, z, z[:, 0], z, z[:, 0]))
        index = torch.tensor(rows)
        distill = DistillInputs(
            student_topk_logprobs=_pad([x[1] for x in topks], t, TOPK),
            teacher_topk_logprobs=_pad([x[3] for x in topks], t, TOPK),
            student_tail_logprob=_pad([x[2] for x in topks], t),
            teacher_tail_logprob=_pad([x[4] for x in topks], t),
        )
        mask = (
            torch.arange(t)[None]
            < torch.tensor([len(batch["responses"][r]) for r in rows])[:, None]
        )
        if method == "srpo":  # entropy weights over the whole mini-batch's distillation tokens
            distill.token_weights = srpo_token_weights(
                batch["teacher_entropy"][index, :t],
                mask & batch["distill_rows"][index][:, None],
                beta=1.0,
            )
        loss, _ = method_loss(
            method,
            logprobs=_pad(lps, t),
            old_logprobs=batch["old_logprobs"][index, :t],
            token_advantages=batch["token_advantages"][index, :t],
            response_mask=mask,
            pg_rows=batch["pg_rows"][index],
            distill_rows=batch["distill_rows"][index],
            config=_loss_config(),
            rollout_logprobs=batch["rollout_logprobs"][index, :t],
            entropy=_pad(ents, t),
            distill=distill,
        )
        opt.zero_grad()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params.values(), 1.0).item())
        losses.append(loss.item())
        opt.step()
        if teacher_ema_rate is not None:
            with torch.no_grad():
                for name, t in teacher_model.named_parameters():
                    t.lerp_(params[name], teacher_ema_rate)
    return {n: p.detach().clone() for n, p in params.items()}, losses, norms


def _worst(ours, ref):
    assert sorted(ours) == sorted(ref)
    diffs = {n: (ours[n] - ref[n]).abs().max().item() for n in ref}
    worst = max(diffs, key=diffs.get)
    return worst, diffs[worst]


# ---------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scores_match_hf(run, data, layout):
    from rlrt_megatron.algorithms.distillation import topk_with_tail

    prompts, responses, teachers = data["rollouts"]
    ranks = [torch.load(run / f"{layout}-scores-rank{r}.pt") for r in (0, 1)]
    for name, value in ranks[0].items():  # every rank holds the same, full result
        if value is not None:
            assert torch.equal(value, ranks[1][name]), name
    got = ranks[0]
    assert got["has_teacher"].tolist() == [c is not None for c in teachers]
    for i, r in enumerate(responses):
        n = len(r)
        assert got["response_mask"][i].sum().item() == n
        s = data["student"][i]
        y = torch.tensor(r)[:, None]
        torch.testing.assert_close(
            got["student_log_prob"][i, :n], s.gather(1, y)[:, 0], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            got["student_entropy"][i, :n], -(s.exp() * s).sum(-1), atol=ATOL, rtol=0
        )
        tlp = data["teacher"][i]
        ids, s_k, s_tail, t_k, t_tail = topk_with_tail(s, s if tlp is None else tlp, TOPK)
        fields = ("topk_ids", "student_topk_log_prob", "teacher_topk_log_prob", "teacher_tail")
        fields = fields if tlp is not None else fields[:2]  # no teacher: zeros, not compared
        row = align_topk_to_reference(  # ids agree up to near-tie swaps (see _topk)
            {f: got[f][i, :n] for f in fields},
            dict(zip(fields, (ids, s_k, t_k, t_tail), strict=False)),
            atol=ATOL,
        )
        torch.testing.assert_close(got["student_topk_log_prob"][i, :n], s_k, atol=ATOL, rtol=0)
        torch.testing.assert_close(got["student_tail"][i, :n], s_tail, atol=ATOL, rtol=0)
        if tlp is None:
            assert not got["teacher_log_prob"][i].any() and not got["kl"][i].any()
            continue
        torch.testing.assert_close(
            got["teacher_log_prob"][i, :n], tlp.gather(1, y)[:, 0], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            got["kl"][i, :n], (s.exp() * (s - tlp)).sum(-1), atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            got["teacher_entropy"][i, :n], -(tlp.exp() * tlp).sum(-1), atol=ATOL, rtol=0
        )
        torch.testing.assert_close(row["teacher_topk_log_prob"], t_k, atol=ATOL, rtol=0)
        torch.testing.assert_close(row["teacher_tail"], t_tail, atol=ATOL, rtol=0)


def test_fewer_rollouts_than_dp_ranks(run, data):
    full = torch.load(run / "dp2-scores-rank0.pt")
    for rank in (0, 1):
        single = torch.load(run / f"single-rank{rank}.pt")
        n = len(data["rollouts"][1][0])
        for name in ("student_log_prob", "teacher_log_prob", "kl"):
            assert single[name].shape == (1, n)
            torch.testing.assert_close(single[name][0], full[name][0, :n], atol=1e-6, rtol=0)


TRAIN_CASES = [(layout, method) for layout, methods in TRAIN.items() for method in methods]


@pytest.fixture(scope="module")
def references(tiny_qwen3_dir, data):
    return {
        method: reference_update(tiny_qwen3_dir, data[method], method, MINI_BATCHES)
        for method in METHODS
    }


@pytest.mark.parametrize(
    ("layout", "method"), TRAIN_CASES, ids=[f"{a}-{b}" for a, b in TRAIN_CASES]
)
def test_update_matches_hf_adamw(run, references, layout, method):
    result = torch.load(run / f"{layout}-{method}.pt")
    ref_params, ref_losses, ref_norms = references[method]
    metrics = result["metrics"]
    assert len(metrics) == MINI_BATCHES
    if method != "sdpo":  # the distillation loss's gradient is small here; the others clip
        assert max(ref_norms) > 1.0, "the reference should exercise grad clipping"
    for step, m in enumerate(metrics):
        assert m["skipped"] == 0.0
        assert math.isclose(m["loss"], ref_losses[step], rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(m["grad_norm"], ref_norms[step], rel_tol=1e-4)
        assert m["lr"] == ADAMW["lr"] and m["tokens"] > 0
        assert m["microbatches"] >= 2  # the global normalizer matters
    worst, diff = _worst(result["params"], ref_params)
    assert diff <= PARAM_ATOL, f"{worst}: {diff:.3g}"
    if method in ("sdpo", "srpo"):
        assert metrics[0]["distill_tokens"] > 0 and "distill_js_mean" in metrics[0]
    if method != "sdpo":
        assert {"clipfrac", "approx_kl", "entropy", "pg_tokens"} <= set(metrics[0])


def test_nonfinite_loss_skips_the_update(run):
    result = torch.load(run / "nonfinite.pt")
    (m,) = result["metrics"]
    assert m["skipped"] == 1.0 and m["nonfinite_loss"] == 1.0
    assert not math.isfinite(m["loss"])
    assert result["unchanged"]
    assert result["lr"][0] == result["lr"][1]


def _teacher_logprobs(path, state, rollouts):
    prompts, responses, teachers = rollouts
    model = _hf(path, state)
    out = {}
    with torch.no_grad():
        for i, (c, r) in enumerate(zip(teachers, responses, strict=True)):
            if c is not None:
                lp = _response_logprobs(model, c, r)
                out[i] = lp.gather(1, torch.tensor(r)[:, None])[:, 0]
    return out


@pytest.mark.parametrize("mode", ["initial", "ema"])
def test_separate_teacher_weights(run, data, tiny_qwen3_dir, mode):
    from safetensors.torch import load_file

    result = torch.load(run / f"teacher-{mode}.pt", weights_only=False)
    theta0 = load_file(Path(tiny_qwen3_dir) / "model.safetensors")
    theta1 = result["params"]
    if mode == "initial":
        teacher_state = theta0
    else:
        teacher_state = {n: theta0[n] + EMA_RATE * (theta1[n] - theta0[n]) for n in theta0}
    scores = result["scores"]
    prompts, responses, _ = data["rollouts"]
    student = _hf(tiny_qwen3_dir, theta1)
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            lp = _response_logprobs(student, p, r).gather(1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(scores.student_log_prob[i, : len(r)], lp, atol=ATOL, rtol=0)
    ref = _teacher_logprobs(tiny_qwen3_dir, teacher_state, data["rollouts"])
    for i, lp in ref.items():
        torch.testing.assert_close(scores.teacher_log_prob[i, : lp.shape[0]], lp, atol=ATOL, rtol=0)
        assert scores.teacher_entropy[i, : lp.shape[0]].gt(0).all()
    assert scores.kl is None  # needs both views in one pass


def test_current_teacher_rescored_per_minibatch(run, data, tiny_qwen3_dir):
    result = torch.load(run / "teacher-current.pt", weights_only=False)
    seen = result["seen"]
    assert [s["rows"] for s in seen] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(m["skipped"] == 0.0 for m in result["metrics"])
    # The second mini-batch's teacher was scored with the weights after the first step.
    first, second = seen
    assert any(not torch.equal(first["params"][n], second["params"][n]) for n in first["params"])
    for entry in seen:
        ref = _teacher_logprobs(tiny_qwen3_dir, entry["params"], data["rollouts"])
        for j, row in enumerate(entry["rows"]):
            if row in ref:
                lp = ref[row]
                torch.testing.assert_close(
                    entry["scores"].teacher_log_prob[j, : lp.shape[0]], lp, atol=ATOL, rtol=0
                )

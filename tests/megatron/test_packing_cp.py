"""Packed micro-batches and context parallelism must change memory and speed, never the numbers.

Rollouts whose sequences are 2 to 300 tokens long (responses of 1 to 297 tokens, teacher views
longer than their students) are scored (student + teacher views: log-probs, entropies, KL,
top-k with tails) and trained on (one update of grpo, rlrt and sdpo, two mini-batches of several
micro-batches) in float32 on gloo, in these layouts:

    world 1:  padded | packed                       (packed vs padded, and vs HF per sequence)
    world 2:  TP=2 padded | TP=2 packed | CP=2      (CP=2 vs CP=1; checkpoint CP=2 -> CP=1)
    world 4:  TP=2 x CP=2

Everything must agree with the world-1 packed run to 1e-5 (parameters after the step too; scores
also get a float32 relative term, see SCORE_RTOL).
CP=2 also scores a batch with a 1-token sequence pair (shorter than 2·CP tokens: the padding to
2·CP is internal), and a checkpoint saved at CP=2 mid-run resumes at CP=1 to the same
parameters as the CP=2 run's next step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _dist import run_distributed
from _topk import align_topk_to_reference

pytestmark = pytest.mark.distributed

METHODS = ("grpo", "rlrt", "sdpo")
TOPK = 5
MAX_TOKENS = 640  # the largest rollout (student + teacher) is 599 tokens: several micro-batches
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.1)
ATOL = 1e-5
# Scores (log-probs, entropies: |x| up to ~8) are compared with a relative term too: layouts run
# other GEMM and attention shapes, hence other float32 summation orders, and the rounding grows
# with the magnitude. Seen here at most 3.6e-6 (all layouts, AVX512/AVX2/default kernels); one CI
# machine went past a flat 1e-5 on the padded layout. The bound at |x| = 8 (4.2e-5, ~90 ulp) is
# still hundreds of times below what a masking or indexing error moves (>= 1e-2).
SCORE_RTOL = 4e-6
HF_ATOL = 1e-4  # HF's attention sums in another order; same tolerance as test_actor_parallel

# name: (world size, TP, CP, packing)
LAYOUTS = {
    "padded": (1, 1, 1, False),
    "packed": (1, 1, 1, True),
    "tp2_padded": (2, 2, 1, False),
    "tp2_packed": (2, 2, 1, True),
    "cp2": (2, 1, 2, True),
    "tp2_cp2": (4, 2, 2, True),
}
REFERENCE = "packed"


def _rollouts():
    g = torch.Generator().manual_seed(11)

    def ids(n):
        return torch.randint(0, 500, (n,), generator=g).tolist()

    prompt_lens = [1, 4, 2, 30, 7, 1, 12, 50, 3, 9]
    response_lens = [1, 2, 297, 5, 64, 150, 3, 31, 120, 17]
    teacher_lens = [5, None, 3, 60, None, 20, 9, None, 40, 30]
    prompts = [ids(n) for n in prompt_lens]
    responses = [ids(n) for n in response_lens]
    teachers = [None if n is None else ids(n) for n in teacher_lens]
    return prompts, responses, teachers


def _batch(method, prompts, responses, teachers, old, teacher_lp):
    from rlrt_megatron.algorithms.registry import distillation_rows, policy_gradient_rows
    from rlrt_megatron.algorithms.reweighting import token_advantages

    b, t = old.shape
    mask = torch.arange(t)[None] < torch.tensor([len(r) for r in responses])[:, None]
    has_teacher = torch.tensor([c is not None for c in teachers])
    correct = torch.tensor([True, False, True, True, False, True, False, True, False, True])
    advantages = torch.tensor([0.9, -1.1, 0.7, 1.3, -0.4, 0.8, -0.5, 0.9, -0.6, 0.3])
    adv = token_advantages(
        method, advantages, correct, old, teacher_lp, mask, has_teacher, lam=0.5, eps_w=1.0
    )
    return dict(
        prompts=prompts,
        responses=responses,
        old_logprobs=old,
        rollout_logprobs=old.clone(),
        token_advantages=adv,
        pg_rows=policy_gradient_rows(method, correct, has_teacher),
        distill_rows=distillation_rows(method, correct, has_teacher),
        teacher_prompts=teachers,
    )


def _actor(hf_path, tp, cp, packing):
    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.optimizer import AdamWConfig
    from rlrt_megatron.megatron.parallel import ParallelConfig

    return PolicyActor(
        ActorConfig(
            hf_path=hf_path,
            parallel=ParallelConfig(tensor_parallel=tp, context_parallel=cp),
            optimizer=AdamWConfig(**ADAMW, clip_grad=1.0),
            dtype=torch.float32,
            max_tokens=MAX_TOKENS,
            packing=packing,
            attention="sdpa",
        )
    )


def _update(method):
    from rlrt_megatron.megatron.train_step import UpdateConfig

    return UpdateConfig(method=method, mini_batches=2, max_tokens=MAX_TOKENS, topk=TOPK)


def _export(actor):
    return {name: t.clone() for name, t in actor.export_hf_weights()}


def _worker(rank: int, out_dir: str, hf_path: str, world: int) -> None:
    import torch.distributed as dist

    from rlrt_megatron.megatron.checkpoint import find_latest, load_checkpoint, save_checkpoint
    from rlrt_megatron.megatron.parallel import destroy_parallel
    from rlrt_megatron.megatron.train_step import TrainBatch

    out = Path(out_dir)
    inputs = torch.load(out / "inputs.pt")
    prompts, responses, teachers = inputs["rollouts"]
    if world == 1:
        # Warm-up forward, discarded. The first forward of a 2-thread process came out, in
        # about 1 of 13 fresh processes, up to 1.8e-4 off on the longest rollout, only on the
        # tokens of the second half of its [300, 2] padded micro-batch (the half a second
        # OpenMP thread computes), with SDPA and megatron's local attention alike; a second
        # forward in the same process always matched the packed run bitwise (2.3e-6 from
        # float64 HF). The cause (a first-call effect in the CPU runtime) is not found yet;
        # it is reported in the issue notes. The layouts are compared after this warm-up.
        _actor(hf_path, 1, 1, False).score(
            prompts, responses, teacher_prompts=teachers, topk=TOPK, teacher_entropy=True
        )
    for name, (size, tp, cp, packing) in LAYOUTS.items():
        if size != world:
            continue
        actor = _actor(hf_path, tp, cp, packing)
        scores = actor.score(
            prompts, responses, teacher_prompts=teachers, topk=TOPK, teacher_entropy=True
        )
        torch.save(dataclasses.asdict(scores), out / f"{name}-scores-rank{rank}.pt")
        if cp > 1:  # a pair shorter than 2·CP tokens, alone and among long ones
            short = actor.score([[7]], [[9]], teacher_prompts=[[3]])
            torch.save(dataclasses.asdict(short), out / f"{name}-short-rank{rank}.pt")
        for method in METHODS:
            actor = _actor(hf_path, tp, cp, packing)
            metrics = actor.train_step(TrainBatch(**inputs[method]), _update(method))
            params = _export(actor)
            if rank == 0:
                torch.save({"params": params, "metrics": metrics}, out / f"{name}-{method}.pt")
        if name == "cp2":  # checkpoint mid-run at CP=2; the next step runs at CP=2 here ...
            actor = _actor(hf_path, tp, cp, packing)
            actor.train_step(TrainBatch(**inputs["grpo"]), _update("grpo"))
            save_checkpoint(out / "ckpt", 1, actor.model, actor.optimizer, actor.scheduler)
            actor.train_step(TrainBatch(**inputs["rlrt"]), _update("rlrt"))
            params = _export(actor)
            if rank == 0:
                torch.save(params, out / "cp2-resume-reference.pt")
        if name == "packed" and (out / "ckpt").exists():  # ... and resumes at CP=1 here
            actor = _actor(hf_path, tp, cp, packing)
            latest = find_latest(out / "ckpt")
            load_checkpoint(latest, actor.model, actor.optimizer, actor.scheduler)
            actor.train_step(TrainBatch(**inputs["rlrt"]), _update("rlrt"))
            torch.save(_export(actor), out / "cp1-resumed.pt")
        del actor
        destroy_parallel(keep_process_group=True)
    dist.barrier()
    destroy_parallel()


def _hf_logprobs(path, rollouts):
    """Per sequence, HF Qwen3's log-probs of the response tokens (student and teacher views)."""
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompts, responses, teachers = rollouts

    def logprobs(prompt, response):
        seq = torch.tensor([list(prompt) + list(response)])
        with torch.no_grad():
            logits = model(seq).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(response)]
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0]

    student = [logprobs(p, r) for p, r in zip(prompts, responses, strict=True)]
    teacher = [
        None if c is None else logprobs(c, r) for c, r in zip(teachers, responses, strict=True)
    ]
    return student, teacher


def _pad(rows, width):
    out = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        if r is not None:
            out[i, : r.shape[0]] = r
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_qwen3_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("packing_cp")
    rollouts = _rollouts()
    student, teacher = _hf_logprobs(tiny_qwen3_dir, rollouts)
    width = max(len(r) for r in rollouts[1])
    old, teacher_lp = _pad(student, width), _pad(teacher, width)
    inputs = {"rollouts": rollouts}
    for method in METHODS:
        inputs[method] = _batch(method, *rollouts, old, teacher_lp)
    torch.save(inputs, out / "inputs.pt")
    # CP=2 first: its mid-run checkpoint is resumed by the world-1 run.
    for world in (2, 4, 1):
        run_distributed(_worker, world, str(out), str(tiny_qwen3_dir), world, timeout_s=900)
    return out, {"student": student, "teacher": teacher}


def _scores(out, name, rank=0):
    return torch.load(out / f"{name}-scores-rank{rank}.pt")


SCORE_FIELDS = (
    "student_log_prob",
    "student_entropy",
    "teacher_log_prob",
    "kl",
    "teacher_entropy",
    "student_topk_log_prob",
    "student_tail",
    "teacher_topk_log_prob",
    "teacher_tail",
)


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != REFERENCE])
def test_scores_agree_with_the_packed_single_process_run(run, name):
    out, _ = run
    reference = _scores(out, REFERENCE)
    for rank in range(LAYOUTS[name][0]):  # every rank holds the full result
        scores = _scores(out, name, rank)
        assert torch.equal(scores["response_mask"], reference["response_mask"])
        # Ids may differ only by near-tie swaps (CI saw one in the padded layout); see _topk.
        scores = align_topk_to_reference(scores, reference, atol=ATOL, rtol=SCORE_RTOL)
        for field in SCORE_FIELDS:
            torch.testing.assert_close(
                scores[field],
                reference[field],
                atol=ATOL,
                rtol=SCORE_RTOL,
                msg=lambda default, field=field: f"{name} {field}: {default}",
            )


def test_packed_scores_match_hf_per_sequence(run):
    out, hf = run
    scores = _scores(out, REFERENCE)
    for i, lp in enumerate(hf["student"]):
        torch.testing.assert_close(
            scores["student_log_prob"][i, : lp.shape[0]], lp, atol=HF_ATOL, rtol=0
        )
    for i, lp in enumerate(hf["teacher"]):
        if lp is not None:
            torch.testing.assert_close(
                scores["teacher_log_prob"][i, : lp.shape[0]], lp, atol=HF_ATOL, rtol=0
            )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != REFERENCE])
def test_update_agrees_with_the_packed_single_process_run(run, name, method):
    out, _ = run
    reference = torch.load(out / f"{REFERENCE}-{method}.pt")
    result = torch.load(out / f"{name}-{method}.pt")
    assert len(result["metrics"]) == len(reference["metrics"]) == 2
    for got, want in zip(result["metrics"], reference["metrics"], strict=True):
        assert got["skipped"] == want["skipped"] == 0.0
        assert got["tokens"] == want["tokens"]
        assert abs(got["loss"] - want["loss"]) <= ATOL
        assert abs(got["grad_norm"] - want["grad_norm"]) <= ATOL * max(1.0, want["grad_norm"])
    for key, value in reference["params"].items():
        torch.testing.assert_close(result["params"][key], value, atol=ATOL, rtol=0, msg=key)


def test_packing_fills_micro_batches_with_real_tokens(run):
    out, _ = run
    packed = torch.load(out / "packed-grpo.pt")["metrics"]
    padded = torch.load(out / "padded-grpo.pt")["metrics"]
    assert sum(m["microbatches"] for m in packed) < sum(m["microbatches"] for m in padded)


def test_sequence_shorter_than_two_cp_chunks(run):
    out, _ = run
    for name in ("cp2", "tp2_cp2"):
        short = torch.load(out / f"{name}-short-rank0.pt")
        assert short["response_mask"].tolist() == [[True]]
        assert torch.isfinite(short["student_log_prob"]).all()
        assert float(short["student_log_prob"][0, 0]) < 0
        assert float(short["kl"][0, 0]) >= 0
    a, b = (torch.load(out / f"{n}-short-rank0.pt") for n in ("cp2", "tp2_cp2"))
    torch.testing.assert_close(a["student_log_prob"], b["student_log_prob"], atol=ATOL, rtol=0)
    torch.testing.assert_close(a["teacher_log_prob"], b["teacher_log_prob"], atol=ATOL, rtol=0)


def test_checkpoint_saved_at_cp2_resumes_at_cp1(run):
    out, _ = run
    reference = torch.load(out / "cp2-resume-reference.pt")
    resumed = torch.load(out / "cp1-resumed.pt")
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, atol=ATOL, rtol=0, msg=key)

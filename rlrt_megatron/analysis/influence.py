"""``rlrt analyze influence``: a Monte-Carlo check of Theorem 2 (an estimate).

**The paper's quantity** (Eq. 5). At position t with history h_t, f(v) = P(R = 1 | h_t, y_t = v)
is the success probability of continuing with token v, f̄_S^t = E_{v∼P_S}[f(v)] and

    Inf_S(t) := E_{v∼P_S}[ |f(v) − f̄_S^t| ].

Theorem 2 bounds it by the information asymmetry: Inf_S(t)² ≤ 2·D̄_t, D̄_t = KL(P_S ‖ P_T). The
hypothesis is that the teacher, having seen a correct solution, is the student conditioned on
success, P_T(v) = P_S(v | R = 1) = P_S(v) f(v) / f̄_S^t (Bayes' rule; here "the Bayesian tilt").
Then Inf_S(t) = f̄·‖P_S − P_T‖₁ and Pinsker plus f̄ ≤ 1 give the bound
(:func:`influence`, :func:`bayes_teacher`, :func:`kl_divergence`; tested on random distributions).

**The estimate.** The vocabulary sum cannot be taken in full. At ``positions`` sampled positions
of each rollout, f(v) is estimated from M continuations for each of the student's top-m
candidates, and f̄ directly from M continuations of h_t whose token at t the engine samples from
P_S itself (an unbiased estimate of P(R = 1 | h_t), no truncation). The candidates keep their
true probabilities P_S(v) (not renormalised); the remaining mass r = 1 − Σ_top P_S(v) is one
explicit "tail" bucket whose mean success f_tail = (f̄ − Σ_top P_S f) / r follows from f̄
(:func:`influence_from_candidates`). Over the tail only that mean is known, so:

* ``influence`` — Eq. 5 on the candidates plus the tail bucket: by Jensen a lower bound of the
  full-vocabulary Inf_S(t) (exact when f is constant over the tail);
* ``influence_upper`` — the largest Inf_S(t) any f ∈ [0, 1] on the tail with mean f_tail allows;
* ``influence_normalised`` — Inf_S(t) / f̄ = ‖P_S − P_tilt‖₁ (an extra column: the stronger,
  normalised variant this command reported before; not the paper's quantity);
* ``kl_tilt`` — KL(P_S ‖ P_tilt) on the same buckets (data processing: a lower bound of the full
  KL). On the buckets Theorem 2 holds exactly, ``influence``² ≤ 2·``kl_tilt``: a check of the
  bookkeeping. With the context-conditioned teacher (``kl_context`` = D̄_t over the full
  vocabulary) the bound is an empirical question, reported with Spearman(D̄_t, Inf_S(t)).

Monte-Carlo noise can put the implied f_tail outside [0, 1]; it is clipped and f̄ recomputed from
the buckets (``f_tail_clipped`` marks it; ``f_mean_direct`` keeps the direct estimate). f̄ is
P(R = 1 | h_t) under P_S only at ``--temperature 1`` (the first token is sampled at the given
temperature).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlrt_megatron.analysis import common
from rlrt_megatron.analysis.common import engine_max_len, grade_answers, sampling_config
from rlrt_megatron.errors import CommandError

if TYPE_CHECKING:  # torch is imported where it is used: `rlrt --help` stays fast
    import torch

# Candidate probabilities are exp(float32 log-probs): their sum may exceed 1 by rounding.
_MASS_TOLERANCE = 1e-4


def influence(p_student: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Eq. 5: Inf_S(t) = E_{v∼P_S}[|f(v) − f̄_S^t|] with f̄_S^t = E_{v∼P_S}[f(v)].

    Shapes: ``p_student`` [..., V] (a distribution over the last dim), ``f`` [..., V] success
    probabilities in [0, 1] → [...].
    """
    if p_student.shape != f.shape:
        raise ValueError(f"p_student {tuple(p_student.shape)} and f {tuple(f.shape)} differ")
    f_mean = (p_student * f).sum(-1, keepdim=True)
    return (p_student * (f - f_mean).abs()).sum(-1)


def bayes_teacher(p_student: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Theorem 2's teacher, the student conditioned on success (Bayes' rule):
    P_T(v) = P_S(v | R = 1) = P_S(v)·f(v) / f̄_S^t. Shapes: [..., V], [..., V] → [..., V];
    f̄ must be > 0 at every position."""
    joint = p_student * f
    f_mean = joint.sum(-1, keepdim=True)
    if bool((f_mean <= 0).any()):
        raise ValueError("f̄ = 0 at some position: conditioning on success is undefined there")
    return joint / f_mean


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p(v)·log(p(v)/q(v)): [..., V], [..., V] → [...]. Terms with p(v) = 0 are 0;
    the divergence is +inf where q(v) = 0 < p(v)."""
    import torch

    if p.shape != q.shape:
        raise ValueError(f"p {tuple(p.shape)} and q {tuple(q.shape)} differ")
    terms = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p))
    return terms.sum(-1)


def influence_from_candidates(
    p_student: Sequence[float], f: Sequence[float], f_mean: float | None = None
) -> dict[str, Any]:
    """Inf_S(t) (Eq. 5) at one position from the student's top-m candidates and a tail bucket.

    ``p_student``: the candidates' true P_S(v) (not renormalised; their sum m ≤ 1); ``f``: their
    success estimates in [0, 1]; ``f_mean``: f̄ = P(R = 1 | h_t) estimated directly (the token at
    t sampled from P_S). The tail (mass r = 1 − m) is one bucket with f_tail = (f̄ − Σ P_S f) / r,
    clipped to [0, 1] (then f̄ is recomputed from the buckets). With ``f_mean`` None the
    candidates must cover the distribution (m = 1). Returns (see the module docstring)
    ``f_mean``, ``f_mean_direct``, ``tail_mass``, ``f_tail``, ``f_tail_clipped``,
    ``influence`` (Eq. 5 on the buckets, a lower bound of the full value), ``influence_upper``,
    ``influence_normalised`` (Inf / f̄, None when f̄ = 0) and ``kl_tilt`` (KL(P_S ‖ P_tilt) on the
    buckets; None when f̄ = 0, inf when a bucket with mass has f = 0).
    """
    import torch

    if len(p_student) != len(f) or not p_student:
        raise ValueError("need one f per candidate and at least one candidate")
    if any(p < 0 for p in p_student) or any(not 0 <= x <= 1 for x in f):
        raise ValueError("candidate probabilities must be >= 0 and f in [0, 1]")
    mass = sum(p_student)
    if mass > 1 + _MASS_TOLERANCE or mass <= 0:
        raise ValueError(f"candidate probabilities sum to {mass}: expected a mass in (0, 1]")
    tail = max(0.0, 1.0 - mass)
    probs, values = list(p_student), list(f)
    f_tail, clipped = None, False
    if tail > _MASS_TOLERANCE:
        if f_mean is None:
            raise ValueError(
                f"the candidates cover {mass:.6f} of P_S: give f_mean (the directly estimated "
                "f̄) so the tail bucket's success can be inferred"
            )
        if not 0 <= f_mean <= 1:
            raise ValueError(f"f_mean must be in [0, 1], got {f_mean}")
        raw = (f_mean - sum(p * x for p, x in zip(probs, values, strict=True))) / tail
        f_tail = min(1.0, max(0.0, raw))
        clipped = f_tail != raw
        probs.append(tail)
        values.append(f_tail)
    else:  # the candidates hold all the mass (up to float32 rounding)
        tail = 0.0
        probs = [p / mass for p in probs]
    q = torch.tensor(probs, dtype=torch.float64)
    g = torch.tensor(values, dtype=torch.float64)
    mean = float((q * g).sum())
    inf = float(influence(q, g))
    upper = inf
    if f_tail is not None:  # the tail's worst case: f ∈ {0, 1} with mean f_tail
        upper += tail * (f_tail * (1 - mean) + (1 - f_tail) * mean - abs(f_tail - mean))
    kl = None
    if mean > 0:
        kl = max(0.0, float(kl_divergence(q, bayes_teacher(q, g))))
    return {
        "f_mean": mean,
        "f_mean_direct": f_mean,
        "tail_mass": tail,
        "f_tail": f_tail,
        "f_tail_clipped": clipped,
        "influence": inf,
        "influence_upper": upper,
        "influence_normalised": inf / mean if mean > 0 else None,
        "kl_tilt": kl,
    }


influence_stats = influence_from_candidates  # the name this module had before Eq. 5


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation with average ranks for ties; None below 3 points or for a
    constant input."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 3:
        return None

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def run_influence(
    pool: Any,
    tokenizer: Any,
    trajectories: Sequence[Any],
    views: Sequence[dict],
    answers: Sequence[str],
    *,
    positions: int = 4,
    candidates: int = 4,
    continuations: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    grade=None,
) -> tuple[list[dict], dict]:
    """Monte-Carlo f(v) and f̄ at sampled positions (see the module docstring). ``views``: each
    trajectory's pair views with candidates (the first ``candidates`` of ``cand_ids`` are the
    student's top-m). Per position the engine continues h_t ⊕ v for each candidate v and h_t
    itself (its token at t sampled from P_S, for f̄), ``continuations`` times each. Returns a
    record per position and the summary."""
    grade = grade or grade_answers
    rng = random.Random(seed)
    sites, candidate_prompts, direct_prompts = [], [], []
    for i, (t, v) in enumerate(zip(trajectories, views, strict=True)):
        response = t.request.response_ids
        for pos in sorted(rng.sample(range(len(response)), min(positions, len(response)))):
            ids = [int(x) for x in v["cand_ids"][pos][:candidates]]
            probs = [math.exp(x) for x in v["cand_student_log_prob"][pos][:candidates]]
            sites.append((i, pos, ids, probs))
            history = list(t.request.prompt_ids) + response[:pos]
            candidate_prompts += [history + [token] for token in ids]
            direct_prompts.append(history)  # f̄: the engine samples y_t from P_S
    sampling = sampling_config(continuations, max_new_tokens, temperature, seed)
    # The f̄ continuations sample y_t too: one token more, the same budget after y_t.
    direct = sampling_config(continuations, max_new_tokens + 1, temperature, seed)
    candidate_results = iter(pool.generate(candidate_prompts, sampling))
    direct_results = iter(pool.generate(direct_prompts, direct))
    texts, owners = [], []
    for i, pos, ids, _ in sites:
        prefix = trajectories[i].request.response_ids[:pos]
        groups = [(prefix + [token], next(candidate_results)) for token in ids]
        groups.append((prefix, next(direct_results)))
        for head, group in groups:
            if len(group) != continuations:
                raise RuntimeError(f"engine returned {len(group)} samples, not {continuations}")
            for sample in group:
                texts.append(tokenizer.decode(head + list(sample.token_ids)))
                owners.append(i)
    graded = grade(texts, [answers[i] for i in owners])
    records, cursor = [], 0
    for i, pos, ids, probs in sites:
        rates = []
        for _ in range(len(ids) + 1):
            rates.append(sum(graded[cursor : cursor + continuations]) / continuations)
            cursor += continuations
        f, f_direct = rates[:-1], rates[-1]
        stats = influence_from_candidates(probs, f, f_direct)
        records.append(
            dict(
                where=trajectories[i].where,
                position=pos,
                kl_context=views[i]["kl"][pos],
                candidates=[tokenizer.decode([x]) for x in ids],
                p_student=probs,
                f=f,
                **stats,
            )
        )
    summary = summarize_influence(records, continuations=continuations, candidates=candidates)
    return records, summary | {"temperature": temperature}


INF_DEFINITION = (
    "Eq. 5: Inf_S(t) = E_{v~P_S}|f(v) - f_mean|, over the student's top candidates with their "
    "true P_S plus one tail bucket of mass 1 - sum P_S(top) whose success f_tail follows from "
    "the directly estimated f_mean (a lower bound of the full-vocabulary value; "
    "influence_upper is the upper bound; influence_normalised = influence / f_mean)"
)


def summarize_influence(records: Sequence[dict], *, continuations: int, candidates: int) -> dict:
    """How often Inf_S(t)² ≤ 2·D̄_t holds with each teacher, and the rank correlations.

    ``bound_holds_tilt``: Theorem 2 on the buckets with the Bayesian-tilt teacher (always 1 up to
    rounding: the bookkeeping check), over positions with f̄ > 0. ``bound_holds_context``: the
    paper's Inf_S(t) (``influence``, a lower bound of the full value, so a failure here is a real
    one up to Monte-Carlo noise) against D̄_t of the context teacher; ``..._upper`` the same with
    ``influence_upper`` (a success there is certain up to noise); ``..._normalised`` with
    Inf / f̄ (positions with f̄ > 0).
    """
    records = list(records)
    success = [r for r in records if r["f_mean"] > 0]

    def fraction(rows: list[dict], inf_key: str, kl_key: str) -> float | None:
        holds = [r[inf_key] ** 2 <= 2 * r[kl_key] + 1e-12 for r in rows]
        return sum(holds) / len(holds) if holds else None

    def rank(rows: list[dict], inf_key: str, kl_key: str) -> float | None:
        finite = [r for r in rows if math.isfinite(r[kl_key])]
        return spearman([r[kl_key] for r in finite], [r[inf_key] for r in finite])

    return {
        "positions": len(records),
        "positions_with_success": len(success),
        "candidates_per_position": candidates,
        "continuations_per_candidate": continuations,
        "inf_definition": INF_DEFINITION,
        "tail_mass_mean": (
            sum(r["tail_mass"] for r in records) / len(records) if records else None
        ),
        "f_tail_clipped": sum(bool(r["f_tail_clipped"]) for r in records),
        "bound_holds_tilt": fraction(success, "influence", "kl_tilt"),
        "bound_holds_context": fraction(records, "influence", "kl_context"),
        "bound_holds_context_upper": fraction(records, "influence_upper", "kl_context"),
        "bound_holds_context_normalised": fraction(success, "influence_normalised", "kl_context"),
        "spearman_tilt": rank(success, "influence", "kl_tilt"),
        "spearman_context": rank(records, "influence", "kl_context"),
        "spearman_context_normalised": rank(success, "influence_normalised", "kl_context"),
    }


# ------------------------------------------------------------------------------- command


def run_influence_command(args: argparse.Namespace) -> int:
    from rlrt_megatron.analysis.inputs import (
        load_pairs_for,
        open_model,
        score_pairs_for,
        write_atomically,
    )

    if min(args.positions, args.candidates, args.continuations) < 1:
        raise CommandError("--positions, --candidates and --continuations must be >= 1")
    model = open_model(args.model, args.tp, args.pp)
    trajectories = load_pairs_for(args, model, need=("answer",))
    k = min(args.candidates, model.vocab_size)
    views = score_pairs_for(args, model, trajectories, topk=k)
    if views is None:
        return 0
    length = engine_max_len(trajectories, 1 + args.max_new_tokens, model.max_positions)
    with common.open_engine_pool(model.path, max_model_len=length, engines=args.engines) as pool:
        records, summary = run_influence(
            pool,
            model.tokenizer,
            trajectories,
            views,
            [str(t.record["answer"]) for t in trajectories],
            positions=args.positions,
            candidates=k,
            continuations=args.continuations,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
        )
    out = args.output

    def clean(value: Any) -> Any:  # JSON has no infinity
        return "inf" if isinstance(value, float) and math.isinf(value) else value

    write_atomically(
        out / "positions.jsonl",
        "".join(
            json.dumps({k: clean(v) for k, v in r.items()}, ensure_ascii=False) + "\n"
            for r in records
        ),
    )
    write_atomically(out / "summary.json", json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def add_influence_arguments(parser: argparse.ArgumentParser) -> None:
    from rlrt_megatron.analysis.inputs import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--data", type=Path, required=True, help="rollouts jsonl with context and answer"
    )
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--positions", type=int, default=4, help="sampled positions/rollout")
    parser.add_argument("--candidates", type=int, default=4, help="student top-m candidates")
    parser.add_argument(
        "--continuations", type=int, default=8, help="M per candidate (and for f̄ at h_t)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature (1: f̄ samples y_t from P_S itself, as Eq. 5 needs)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", type=int, default=1, help="vLLM engines")

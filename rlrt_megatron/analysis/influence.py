"""``rlrt analyze influence``: a Monte-Carlo check of Theorem 2 (an estimate).

**Influence check** (Theorem 2, an estimate). At ``positions`` sampled positions of each
rollout, for the student's top-m candidates v (P_S renormalised over them),
f(v) = P(R = 1 | h_t, y_t = v) is estimated from M sampled continuations. With
f̄ = E_{P_S} f the influence is Inf_S(t) = E_{v∼P_S} |f(v) − f̄| / f̄, the L1 distance between
P_S and the Bayesian tilt P_T(v) ∝ P_S(v) f(v) (the posterior given success). Pinsker's inequality
gives Inf_S(t)² ≤ 2·KL(P_S ‖ P_tilt) exactly (a check of the estimator's bookkeeping); with the
context-conditioned teacher (D̄_t over the full vocabulary) it is an empirical question, reported
with the Spearman rank correlation of D̄_t and Inf_S(t). Positions where no candidate ever
succeeds (f̄ = 0) have no defined influence and are counted separately.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlrt_megatron.cli import CommandError


def influence_stats(p_student: Sequence[float], f: Sequence[float]) -> dict[str, float | None]:
    """Inf_S(t), f̄ and KL(P_S ‖ P_tilt) from candidate probabilities (renormalised here) and
    success estimates f(v) ∈ [0, 1]. ``influence`` is None when f̄ = 0; ``kl_tilt`` is inf when
    some candidate with P_S > 0 has f = 0 (the tilt gives it no mass)."""
    total = sum(p_student)
    if total <= 0 or len(p_student) != len(f):
        raise ValueError("need positive candidate probabilities, one f per candidate")
    p = [x / total for x in p_student]
    mean = sum(pi * fi for pi, fi in zip(p, f, strict=True))
    if mean <= 0:
        return {"f_mean": 0.0, "influence": None, "kl_tilt": None}
    influence = sum(pi * abs(fi - mean) for pi, fi in zip(p, f, strict=True)) / mean
    if any(pi > 0 and fi == 0 for pi, fi in zip(p, f, strict=True)):
        kl = math.inf
    else:
        kl = sum(pi * math.log(mean / fi) for pi, fi in zip(p, f, strict=True) if pi > 0)
    return {"f_mean": mean, "influence": influence, "kl_tilt": max(kl, 0.0)}


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
    """Monte-Carlo f(v) at sampled positions (see the module docstring). ``views``: each
    trajectory's pair views with candidates (the first ``candidates`` of ``cand_ids`` are the
    student's top-m). Returns a record per position and the summary."""
    from rlrt_megatron.analysis.commands import grade_answers

    grade = grade or grade_answers
    rng = random.Random(seed)
    sites, prompts = [], []
    for i, (t, v) in enumerate(zip(trajectories, views, strict=True)):
        response = t.request.response_ids
        for pos in sorted(rng.sample(range(len(response)), min(positions, len(response)))):
            ids = [int(x) for x in v["cand_ids"][pos][:candidates]]
            probs = [math.exp(x) for x in v["cand_student_log_prob"][pos][:candidates]]
            sites.append((i, pos, ids, probs))
            for token in ids:
                prompts.append(list(t.request.prompt_ids) + response[:pos] + [token])
    results = pool.generate(
        prompts, _engines()._sampling(continuations, max_new_tokens, temperature, seed)
    )
    texts, owners = [], []
    cursor = 0
    for i, pos, ids, _ in sites:
        prefix = trajectories[i].request.response_ids[:pos]
        for token in ids:
            for sample in results[cursor]:
                texts.append(tokenizer.decode(prefix + [token] + list(sample.token_ids)))
                owners.append(i)
            cursor += 1
    graded = grade(texts, [answers[i] for i in owners])
    records, cursor = [], 0
    for i, pos, ids, probs in sites:
        f = []
        for _ in ids:
            f.append(sum(graded[cursor : cursor + continuations]) / continuations)
            cursor += continuations
        stats = influence_stats(probs, f)
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
    return records, summarize_influence(records, continuations=continuations, candidates=candidates)


def summarize_influence(records: Sequence[dict], *, continuations: int, candidates: int) -> dict:
    """How often Inf² ≤ 2·D̄ holds with each teacher, and the rank correlations."""
    defined = [r for r in records if r["influence"] is not None]
    summary: dict[str, Any] = {
        "positions": len(records),
        "positions_with_success": len(defined),
        "candidates_per_position": candidates,
        "continuations_per_candidate": continuations,
        "inf_definition": "E_{P_S}|f - f_mean| / f_mean over the student's top candidates "
        "(P_S renormalised)",
    }
    for name, key in (("tilt", "kl_tilt"), ("context", "kl_context")):
        holds = [r["influence"] ** 2 <= 2 * r[key] + 1e-12 for r in defined]
        summary[f"bound_holds_{name}"] = sum(holds) / len(holds) if holds else None
        finite = [r for r in defined if math.isfinite(r[key])]
        summary[f"spearman_{name}"] = spearman(
            [r[key] for r in finite], [r["influence"] for r in finite]
        )
    return summary


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
    length = _engines().engine_max_len(trajectories, 1 + args.max_new_tokens, model.max_positions)
    with _engines().open_engine_pool(
        model.path, max_model_len=length, engines=args.engines
    ) as pool:
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
    parser.add_argument("--continuations", type=int, default=8, help="M per candidate")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", type=int, default=1, help="vLLM engines")


def _engines():
    from rlrt_megatron.analysis import engine_analyses

    return engine_analyses

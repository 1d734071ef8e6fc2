"""Comparing top-k blocks (ids + log-probs + tails) of two runs whose float32 rounding differs.

Two layouts (or Megatron vs HF) compute the same log-probs to ~1e-6, not bitwise. Where two of
the student's vocabulary entries are that close, their order in the top-k, or which of them is
k-th, can flip between runs (CI saw such a swap once). Both results are then correct, and the
ids must agree *up to near-ties*: an id may sit in another slot, or trade places with the
(k+1)-th entry, only when the student log-probs it trades with are within tolerance.

The teacher's values are read at the student's ids, so a swap moves them too: they are compared
per id, and where an id traded places with the (k+1)-th entry, the teacher mass of the traded
entries plus the tail must agree. Nothing else gets slack: the student's sorted top-k values and
tails are compared as they are.
"""

from __future__ import annotations

import torch

TEACHER_FIELDS = ("teacher_topk_log_prob", "teacher_tail")


def align_topk_to_reference(got: dict, want: dict, atol: float, rtol: float = 0.0) -> dict:
    """Return `got` with near-tie swaps of `topk_ids` undone, after checking they are near-ties.

    got, want: dicts with "topk_ids" [..., k], "student_topk_log_prob" [..., k] (sorted, largest
    first) and optionally "teacher_topk_log_prob" [..., k] and "teacher_tail" [...]. The result
    holds want's ids, and the teacher values re-read at them from got, so that the caller's
    field-by-field comparison checks everything else. Raises AssertionError naming the position
    when a difference is not a near-tie.
    """
    got_ids, want_ids = got["topk_ids"], want["topk_ids"]
    assert got_ids.shape == want_ids.shape, ("topk_ids", got_ids.shape, want_ids.shape)
    rows = (got_ids != want_ids).flatten(0, -2).any(-1).nonzero().flatten().tolist()
    if not rows:
        return got
    k = want_ids.shape[-1]
    has_teacher = got.get("teacher_topk_log_prob") is not None
    aligned = dict(got)
    aligned["topk_ids"] = want_ids.clone()
    got_rows, want_rows = got_ids.reshape(-1, k), want_ids.reshape(-1, k)
    got_s = got["student_topk_log_prob"].reshape(-1, k).double()
    want_s = want["student_topk_log_prob"].reshape(-1, k).double()
    if has_teacher:
        got_t = got["teacher_topk_log_prob"].reshape(-1, k)
        got_tail = got["teacher_tail"].reshape(-1)
        want_t = want["teacher_topk_log_prob"].reshape(-1, k)
        want_tail = want["teacher_tail"].reshape(-1)
        new_t, new_tail = got_t.clone(), got_tail.clone()
    for row in rows:
        g, w = got_rows[row].tolist(), want_rows[row].tolist()
        where = (
            f"topk_ids row {row} (flattened): {g} (log-probs {got_s[row].tolist()}) vs "
            f"reference {w} ({want_s[row].tolist()})"
        )
        # Per id: the same student log-prob in both runs, or, for an id in only one top-k, not
        # above the other run's k-th by more than the tolerance (it traded places with it).
        for ids, values, other_ids, other_values in ((g, got_s, w, want_s), (w, want_s, g, got_s)):
            for j, token in enumerate(ids):
                tol = atol + rtol * abs(values[row, j].item())
                if token in other_ids:
                    gap = abs(values[row, j] - other_values[row, other_ids.index(token)]).item()
                else:
                    gap = (values[row, j] - other_values[row, k - 1]).item()
                assert gap <= tol, f"{where}: id {token} is not a near-tie ({gap:.3g} > {tol:.3g})"
        if not has_teacher:
            continue
        traded_in = [j for j, token in enumerate(w) if token not in g]  # want slots
        traded_out = [j for j, token in enumerate(g) if token not in w]  # got slots
        for j, token in enumerate(w):
            new_t[row, j] = got_t[row, g.index(token)] if token in g else want_t[row, j]
        if traded_in:  # teacher mass of the traded entries + tail is the same in both runs
            mass_got = torch.cat([got_t[row, traded_out], got_tail[row, None]]).logsumexp(0)
            mass_want = torch.cat([want_t[row, traded_in], want_tail[row, None]]).logsumexp(0)
            torch.testing.assert_close(
                mass_got,
                mass_want,
                atol=atol,
                rtol=rtol,
                msg=lambda default, where=where: f"{where}: teacher mass outside: {default}",
            )
            new_tail[row] = want_tail[row]
    if has_teacher:
        aligned["teacher_topk_log_prob"] = new_t.view_as(got["teacher_topk_log_prob"])
        aligned["teacher_tail"] = new_tail.view_as(got["teacher_tail"])
    return aligned

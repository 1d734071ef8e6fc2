"""The near-tie top-k comparison used by the layout tests accepts only genuine near-ties."""

from __future__ import annotations

import pytest
import torch
from _topk import align_topk_to_reference

from rlrt_megatron.algorithms.distillation import topk_with_tail

K = 3
ATOL = 1e-5


def _block(student_logits, teacher_logits):
    s, t = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)
    ids, s_k, s_tail, t_k, t_tail = topk_with_tail(s, t, K)
    return {
        "topk_ids": ids,
        "student_topk_log_prob": s_k,
        "student_tail": s_tail,
        "teacher_topk_log_prob": t_k,
        "teacher_tail": t_tail,
    }


def _logits(tied_slots, gap):
    """[2, 8] student logits: row 1 holds entries `tied_slots` `gap` apart, row 0 no tie."""
    logits = torch.tensor(
        [[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0], [4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0]],
        dtype=torch.float64,
    )
    a, b = tied_slots
    logits[1, b] = logits[1, a] - gap
    return logits


TEACHER = torch.randn(2, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("tied_slots", [(0, 1), (2, 3)], ids=["inside", "kth_and_next"])
def test_a_near_tie_swap_is_undone_and_the_teacher_reread(tied_slots):
    want = _block(_logits(tied_slots, 1e-7), TEACHER)
    got = _block(_logits(tied_slots, -1e-7), TEACHER)  # the tied pair in the other order
    assert not torch.equal(got["topk_ids"], want["topk_ids"])
    aligned = align_topk_to_reference(got, want, atol=ATOL)
    assert torch.equal(aligned["topk_ids"], want["topk_ids"])
    for field in ("teacher_topk_log_prob", "teacher_tail", "student_topk_log_prob"):
        torch.testing.assert_close(aligned[field], want[field], atol=ATOL, rtol=0)


@pytest.mark.parametrize("tied_slots", [(0, 1), (2, 3)], ids=["inside", "kth_and_next"])
def test_a_swap_that_is_not_a_near_tie_fails(tied_slots):
    want = _block(_logits(tied_slots, 1e-3), TEACHER)
    got = _block(_logits(tied_slots, -1e-3), TEACHER)
    with pytest.raises(AssertionError, match="not a near-tie"):
        align_topk_to_reference(got, want, atol=ATOL)


def test_a_traded_entry_with_other_teacher_mass_fails():
    want = _block(_logits((2, 3), 1e-7), TEACHER)
    got = _block(_logits((2, 3), -1e-7), TEACHER)
    got["teacher_tail"] = got["teacher_tail"] + 1e-2
    with pytest.raises(AssertionError, match="teacher mass"):
        align_topk_to_reference(got, want, atol=ATOL)


def test_equal_ids_pass_through_untouched():
    block = _block(_logits((0, 1), 1.0), TEACHER)
    assert align_topk_to_reference(block, dict(block), atol=ATOL) is block

import pytest
import torch

from rlrt_megatron.teacher import (
    PEER_TEMPLATE,
    build_view,
    gather_response_logprobs,
    response_logit_positions,
    teacher_prompt,
)


def test_peer_template_matches_the_sdpo_reference_layout():
    text = teacher_prompt("What is 2+2?", "2+2 = \\boxed{4}")
    assert text == (
        "What is 2+2?\nCorrect solution:\n\n2+2 = \\boxed{4}\n\n\n\n"
        "Correctly solve the original question.\n"
    )
    assert teacher_prompt("q", "c", PEER_TEMPLATE) == teacher_prompt("q", "c")
    with pytest.raises(ValueError, match="context is empty"):
        teacher_prompt("q", "  ")


def test_student_and_teacher_views_score_the_same_response_tokens():
    response = [7, 8, 9]
    student_ids, student_slice = build_view([1, 2], response)
    teacher_ids, teacher_slice = build_view([1, 5, 5, 5, 2], response)
    assert student_slice == slice(1, 4) and teacher_slice == slice(4, 7)
    # The logit at position p predicts token p + 1: both slices predict exactly the response.
    assert student_ids[student_slice.start + 1 : student_slice.stop + 1].tolist() == response
    assert teacher_ids[teacher_slice.start + 1 : teacher_slice.stop + 1].tolist() == response


def test_gather_response_logprobs():
    logprobs = torch.log_softmax(torch.arange(20.0).reshape(5, 4), -1)
    ids = torch.tensor([0, 1, 3, 2, 0])
    out = gather_response_logprobs(logprobs, ids, prompt_len=2)
    expected = torch.stack([logprobs[1, 3], logprobs[2, 2], logprobs[3, 0]])
    torch.testing.assert_close(out, expected)


def test_bad_input():
    with pytest.raises(ValueError, match="prompt_len must be >= 1"):
        response_logit_positions(0, 3)
    with pytest.raises(ValueError, match="response is empty"):
        build_view([1], [])

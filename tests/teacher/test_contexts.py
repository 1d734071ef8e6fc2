import pytest
import torch

from rlrt_megatron.teacher.contexts import GroupInputs, plan_teacher_batch, teacher_messages

GROUPS = [
    GroupInputs(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        responses=["2. \\boxed{2}", "3. \\boxed{3}", "1+1 = \\boxed{2}"],
        ground_truth="2",
    ),
    GroupInputs(
        messages=[{"role": "user", "content": "2*3?"}],
        responses=["\\boxed{5}", "\\boxed{6}", "\\boxed{7}"],
        ground_truth="6",
        solution="2*3 = 6. \\boxed{6}",
    ),
]
CORRECT = torch.tensor([[True, False, True], [False, True, False]])
ADV = torch.tensor([[0.5, -1.0, 0.5], [-0.5, 1.0, -0.5]])


def test_a_blank_correct_rollout_is_nobodys_peer():
    """A correct rollout with a blank text (e.g. one that ended at once) has nothing to show:
    its correct peers get no context from it; it can still see a non-blank peer itself."""
    groups = [
        GroupInputs(
            messages=[{"role": "user", "content": "1+1?"}],
            responses=["  \n", "\\boxed{2}", "\\boxed{3}"],
            ground_truth="2",
        )
    ]
    correct = torch.tensor([[True, True, False]])
    plan = plan_teacher_batch("rlrt", groups, correct, torch.tensor([[0.5, 0.5, -1.0]]), lam=0.5)
    assert plan.peers[0].tolist() == [1, -1, 1]
    assert plan.rows.tolist() == [True, False, False]
    assert "\\boxed{2}" in plan.messages[0][0]["content"]


def test_rlrt_teacher_sees_the_other_correct_rollout():
    plan = plan_teacher_batch("rlrt", GROUPS, CORRECT, ADV, lam=0.5)
    # Group 0: rollouts 0 and 2 are correct and each other's only peer. Group 1: the lone
    # correct rollout has no peer → no teacher.
    assert plan.rows.tolist() == [True, False, True, False, False, False]
    assert plan.peers[0, 0] == 2 and plan.peers[0, 2] == 0 and plan.peers[0, 1] in (0, 2)
    assert plan.peers[1].tolist() == [1, -1, 1]
    msgs = plan.messages[0]
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["content"].startswith("1+1?\nCorrect solution:\n\n1+1 = \\boxed{2}")
    assert plan.messages[1] is None
    assert GROUPS[0].messages[1]["content"] == "1+1?"  # the student's messages are untouched


def test_sdpo_and_srpo_rows():
    sdpo = plan_teacher_batch("sdpo", GROUPS, CORRECT, ADV, lam=0.0)
    # SDPO: every rollout that has a different correct peer (λ plays no role).
    assert sdpo.rows.tolist() == [True, True, True, True, False, True]
    srpo = plan_teacher_batch("srpo", GROUPS, CORRECT, ADV, lam=0.0)
    assert srpo.rows.tolist() == [False, True, False, True, False, True]
    assert "Correct solution:\n\n\\boxed{6}" in srpo.messages[3][0]["content"]


def test_rlsd_uses_the_solution_or_the_boxed_answer():
    plan = plan_teacher_batch("rlsd", GROUPS, CORRECT, ADV, lam=0.5)
    assert plan.rows.all() and plan.has_context.all()
    assert (
        "Reference solution:\n\nThe final answer is \\boxed{2}." in plan.messages[0][1]["content"]
    )
    assert "Reference solution:\n\n2*3 = 6. \\boxed{6}" in plan.messages[4][0]["content"]


def test_no_teacher_for_grpo_and_errors():
    plan = plan_teacher_batch("grpo", GROUPS, CORRECT, ADV, lam=0.5)
    assert not plan.rows.any() and plan.messages == [None] * 6
    with pytest.raises(ValueError, match="groups must be 2 groups of 3"):
        plan_teacher_batch("rlrt", GROUPS[:1], CORRECT, ADV, lam=0.5)
    with pytest.raises(ValueError, match="advantages has shape"):
        plan_teacher_batch("rlrt", GROUPS, CORRECT, ADV[:, :2], lam=0.5)
    with pytest.raises(ValueError, match="no user message"):
        teacher_messages([{"role": "system", "content": "x"}], "c", "{prompt}{context}")

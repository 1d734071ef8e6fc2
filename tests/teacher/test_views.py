import pytest

from rlrt_megatron.teacher import PEER_TEMPLATE, teacher_prompt


def test_peer_template_matches_the_sdpo_reference_layout():
    text = teacher_prompt("What is 2+2?", "2+2 = \\boxed{4}")
    assert text == (
        "What is 2+2?\nCorrect solution:\n\n2+2 = \\boxed{4}\n\n\n\n"
        "Correctly solve the original question.\n"
    )
    assert teacher_prompt("q", "c", PEER_TEMPLATE) == teacher_prompt("q", "c")
    with pytest.raises(ValueError, match="context is empty"):
        teacher_prompt("q", "  ")


# SDPO's reference slots (lasgroup/SDPO SelfDistillationConfig defaults), written out here so the
# test composes the expected text the way SDPO does rather than restating PEER_TEMPLATE.
SDPO_REPROMPT = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.\n"
SDPO_SOLUTION = "\nCorrect solution:\n\n{successful_previous_attempt}\n\n"


def test_peer_template_is_sdpo_reprompt_with_solution_and_no_feedback():
    prompt, peer = "Find x if 2x = 6.\n\nPut it in \\boxed{}.", "x = 3.\n\n\\boxed{3}"
    sdpo = SDPO_REPROMPT.format(
        prompt=prompt,
        solution=SDPO_SOLUTION.format(successful_previous_attempt=peer),
        feedback="",
    )
    assert teacher_prompt(prompt, peer) == sdpo
    # Whitespace spelled out: one newline before "Correct solution:", a blank line after it, and
    # four newlines between the peer and the closing request.
    assert sdpo == (
        prompt
        + "\nCorrect solution:\n\n"
        + peer
        + "\n\n\n\nCorrectly solve the original question.\n"
    )


def test_teacher_chat_prompt_keeps_the_system_message_then_applies_the_chat_template(tmp_path):
    from transformers import AutoTokenizer

    from rlrt_megatron.data.templating import render_chat
    from rlrt_megatron.models.tiny import build_tokenizer
    from rlrt_megatron.teacher.contexts import teacher_messages

    build_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    student = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    messages = teacher_messages(student, "1+1 = \\boxed{2}", PEER_TEMPLATE)
    assert render_chat(tokenizer, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n1+1?\nCorrect solution:\n\n1+1 = \\boxed{2}\n\n\n\n"
        "Correctly solve the original question.\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )

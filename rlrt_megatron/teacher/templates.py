r"""Teacher prompts: the student's prompt plus privileged context, as text before chat templating.

The peer template is SDPO's reference template (lasgroup/SDPO, ``SelfDistillationConfig`` in
``verl/workers/config/actor.py``), character for character, which RLRT and SRPO reuse (DESIGN.md
§1). SDPO composes three slots::

    reprompt_template = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.\n"
    solution_template = "\nCorrect solution:\n\n{successful_previous_attempt}\n\n"

with ``feedback`` empty (its default ``include_environment_feedback=False``; math has no
environment feedback), so the teacher's user message is::

    prompt + "\nCorrect solution:\n\n" + peer + "\n\n"
           + "\n\nCorrectly solve the original question.\n"

``prompt`` is the text of the student's last user message (not chat-templated); the teacher's chat
messages are the student's with that message replaced (`teacher.contexts.teacher_messages`: the
system message stays, as in SDPO), and the tokenizer's chat template is applied to them like to
the student's. The peer text is the engine's decoded response text (vLLM's ``text``: special
tokens skipped, no EOS); SDPO's ``remove_thinking_from_demonstration`` defaults to off and is not
applied here either. ``tests/teacher/test_views.py`` checks the exact string and the templated
prompt.

The ground-truth template (RLSD) is this project's choice (the RLSD paper gives no template): it
shows the reference solution (or only the final answer when no worked solution exists) in the
same frame, with "Reference solution:" in place of "Correct solution:".
"""

from __future__ import annotations

# prompt + "\nCorrect solution:\n\n{peer}\n\n" + "\n\nCorrectly solve the original question.\n"
PEER_TEMPLATE = (
    "{prompt}\nCorrect solution:\n\n{context}\n\n\n\nCorrectly solve the original question.\n"
)
GROUND_TRUTH_TEMPLATE = (
    "{prompt}\nReference solution:\n\n{context}\n\n\n\nCorrectly solve the original question.\n"
)


def teacher_prompt(prompt: str, context: str, template: str = PEER_TEMPLATE) -> str:
    """The teacher's user message: ``template`` filled with the prompt and the context text."""
    if not isinstance(prompt, str) or not isinstance(context, str):
        raise ValueError("prompt and context must be strings")
    if not context.strip():
        raise ValueError("teacher context is empty: a row without context must not get a teacher")
    return template.format(prompt=prompt, context=context)

"""Teacher prompts: the student's prompt plus privileged context, as text before chat templating.

The peer template follows SDPO's reference implementation (lasgroup/SDPO), which RLRT and SRPO
reuse: the question, a correct solution, then a request to solve the original question. The
ground-truth template (RLSD) shows the reference solution (or only the final answer when no
worked solution exists) in the same frame.
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

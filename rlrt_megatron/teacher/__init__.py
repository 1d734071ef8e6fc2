"""Teacher view construction: peer selection, privileged-context prompts, token alignment."""

from rlrt_megatron.teacher.alignment import (
    build_view,
    gather_response_logprobs,
    response_logit_positions,
)
from rlrt_megatron.teacher.peers import select_peers
from rlrt_megatron.teacher.templates import GROUND_TRUTH_TEMPLATE, PEER_TEMPLATE, teacher_prompt

__all__ = [
    "GROUND_TRUTH_TEMPLATE",
    "PEER_TEMPLATE",
    "build_view",
    "gather_response_logprobs",
    "response_logit_positions",
    "select_peers",
    "teacher_prompt",
]

"""Teacher view construction: peer selection and privileged-context prompts.

(The student and teacher views score the same response tokens, aligned at the tail of each
sequence: `rlrt_megatron.megatron.microbatch` lays them out.)"""

from rlrt_megatron.teacher.peers import select_peers
from rlrt_megatron.teacher.templates import GROUND_TRUTH_TEMPLATE, PEER_TEMPLATE, teacher_prompt

__all__ = [
    "GROUND_TRUTH_TEMPLATE",
    "PEER_TEMPLATE",
    "select_peers",
    "teacher_prompt",
]

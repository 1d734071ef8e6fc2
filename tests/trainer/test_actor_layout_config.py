"""Actor layout settings of the run config: refused at config load (before Ray or any rank
starts), naming the key."""

from __future__ import annotations

import pytest

from rlrt_megatron.configuration import ConfigError
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.stack import actor_config

PAPER = "configs/paper/qwen3_4b_base/grpo.yaml"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["actor.parallel.context_parallel=2", "actor.packing=false"],
            "actor.parallel.context_parallel=2 splits packed sequences",
        ),
        (["actor.attention=local"], "actor.attention=local"),
        (["actor.parallel.context_parallel=0"], "context_parallel must be a positive integer"),
        (["actor.data_parallel=0"], "actor.data_parallel must be >= 1"),
    ],
)
def test_bad_actor_layout_is_refused_at_config_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(PAPER, overrides)


def test_context_parallel_and_packing_reach_the_actor():
    config = load_run_config(
        PAPER,
        [
            "actor.parallel.tensor_parallel=2",
            "actor.parallel.context_parallel=2",
            "actor.data_parallel=3",
            "actor.packing=true",
        ],
    )
    actor = actor_config(config)
    assert actor.parallel.context_parallel == 2 and actor.packing
    assert actor.parallel.model_parallel * config.actor.data_parallel == 12  # ranks started

"""In-rank generation on Megatron ranks (gloo, float32): with TP = 2 every rank gathers the whole
model and decodes its share of the prompts; together they return what one process generates
from the checkpoint. The distributed optimizer's parameter all-gather runs single-threaded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _dist import run_distributed

pytestmark = pytest.mark.distributed

PROMPTS = [[5, 17, 42, 9], [77, 3, 120, 64, 8, 11, 250], [300, 12], [44, 45, 46, 47, 48], [9, 9, 9]]


def _sampling():
    from rlrt_megatron.rollout.sampling import SamplingConfig

    return SamplingConfig(n=3, temperature=0.9, top_k=20, max_tokens=12, seed=7)


def _ranks(rank: int, hf_path: str, out: str) -> None:
    from rlrt_megatron.cluster.in_rank_engines import InRankConfig, generate_on_rank
    from rlrt_megatron.megatron.actor import ActorConfig, PolicyActor
    from rlrt_megatron.megatron.parallel import ParallelConfig

    actor = PolicyActor(
        ActorConfig(
            hf_path=hf_path, parallel=ParallelConfig(tensor_parallel=2), dtype=torch.float32
        )
    )
    wrapped = [getattr(c.start_param_sync, "__wrapped__", None) for c in actor.model.chunks]
    config = InRankConfig(model_path=hf_path, max_model_len=64)
    share = generate_on_rank(actor, PROMPTS, _sampling(), config, version=2)
    decoder = actor._in_rank_generation.decoder
    again = generate_on_rank(actor, PROMPTS, _sampling(), config, version=2)
    result = {
        "share": [[dataclasses.asdict(sample) for sample in group] for group in share],
        "same_decoder": actor._in_rank_generation.decoder is decoder and again == share,
        "wrapped": all(w is not None for w in wrapped),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_tp2_ranks_generate_what_one_process_generates(tiny_qwen3_dir, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from rlrt_megatron.cluster.in_rank_engines import stop_token_ids
    from rlrt_megatron.rollout.in_rank import generate_in_rank
    from rlrt_megatron.rollout.kv_decoder import Qwen3KVDecoder

    run_distributed(_ranks, 2, str(tiny_qwen3_dir), str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["same_decoder"] and r["wrapped"] for r in results)
    # Contiguous shares in rank order: 3 prompts, then 2.
    assert [len(r["share"]) for r in results] == [3, 2]
    together = results[0]["share"] + results[1]["share"]

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    reference = generate_in_rank(
        Qwen3KVDecoder(dict(model.state_dict()), config),
        PROMPTS,
        _sampling(),
        stop_ids=stop_token_ids(tiny_qwen3_dir),
        tokenizer=Tokenizer.from_file(str(tiny_qwen3_dir / "tokenizer.json")),
        weight_version=2,
    )
    for mine, ref in zip(together, reference, strict=True):
        for a, b in zip(mine, ref, strict=True):
            assert a["token_ids"] == b.token_ids and a["finish_reason"] == b.finish_reason
            assert a["text"] == b.text and a["weight_version"] == 2
            torch.testing.assert_close(
                torch.tensor(a["logprobs"]), torch.tensor(b.logprobs), atol=1e-5, rtol=0
            )


def test_one_intra_op_thread_inside_and_restored_after():
    from rlrt_megatron.megatron.serial_collectives import with_one_intra_op_thread

    before = torch.get_num_threads()
    seen = with_one_intra_op_thread(torch.get_num_threads)()
    assert seen == 1 and torch.get_num_threads() == before

    def fails():
        raise RuntimeError("collective failed")

    with pytest.raises(RuntimeError, match="collective failed"):
        with_one_intra_op_thread(fails)()
    assert torch.get_num_threads() == before

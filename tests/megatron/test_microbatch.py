import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrt_megatron.megatron.microbatch import (
    gather_response,
    pad_sequences,
    response_mask,
    token_budget_microbatches,
)


def test_greedy_packing_hand_computed():
    # Longest first: 8 alone (2·8 > 10); 5 + 3 fill 2·5 = 10; 2 starts a new one (3·5 > 10).
    assert token_budget_microbatches([5, 3, 8, 2], max_tokens=10) == [[2], [0, 1], [3]]
    assert token_budget_microbatches([5, 3, 8, 2], max_tokens=16, max_sequences=2) == [
        [2, 0],
        [1, 3],
    ]
    # Padding to a multiple of 4: 5 → 8, so 5 and 3 no longer fit in 10 together.
    assert token_budget_microbatches([5, 3], max_tokens=10, pad_to_multiple_of=4) == [[0], [1]]


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    budget=st.integers(40, 200),
    multiple=st.sampled_from([1, 4, 8]),
)
def test_every_sequence_once_and_within_budget(lengths, budget, multiple):
    batches = token_budget_microbatches(lengths, budget, pad_to_multiple_of=multiple)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = -(-max(lengths[i] for i in b) // multiple) * multiple
        assert len(b) * width <= budget


def test_budget_errors():
    with pytest.raises(ValueError, match="sequence 1 has 12 tokens"):
        token_budget_microbatches([3, 12], max_tokens=10)
    with pytest.raises(ValueError, match="sequence 0 has length 0"):
        token_budget_microbatches([0], max_tokens=10)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        token_budget_microbatches([1], max_tokens=0)


def test_padding_and_tail_aligned_response_gather():
    batch = pad_sequences([[1, 2, 3], [4]], [[7, 8], [9, 9, 9]], pad_id=0, pad_to_multiple_of=4)
    assert batch.input_ids.tolist() == [[1, 2, 3, 7, 8, 0, 0, 0], [4, 9, 9, 9, 0, 0, 0, 0]]
    assert batch.response_start.tolist() == [2, 0]
    # values[b, p] = 10·b + p: the logit at position p predicts token p + 1.
    values = (10 * torch.arange(2).unsqueeze(1) + torch.arange(8)).float()
    out = gather_response(values, batch, fill=-1.0)
    assert out.tolist() == [[2.0, 3.0, -1.0], [10.0, 11.0, 12.0]]
    # Positions predict exactly the response tokens.
    ids = gather_response(batch.input_ids[:, 1:], batch, fill=-1)
    assert ids.tolist() == [[7, 8, -1], [9, 9, 9]]
    assert response_mask(batch).tolist() == [[True, True, False], [True, True, True]]
    vector = gather_response(torch.stack([values, -values], dim=-1), batch)
    assert vector.shape == (2, 3, 2) and vector[1, 2].tolist() == [12.0, -12.0]


def test_padding_errors():
    with pytest.raises(ValueError, match="row 1: empty response"):
        pad_sequences([[1], [2]], [[3], []], pad_id=0)
    with pytest.raises(ValueError, match="row 0: empty prompt"):
        pad_sequences([[]], [[3]], pad_id=0)


def test_pack_sequences_restarts_positions_and_pads_each_sequence():
    from rlrt_megatron.megatron.microbatch import pack_sequences

    packed = pack_sequences([[1, 2], [3]], [[4], [5, 6, 7]], 0, pad_to_multiple_of=4)
    assert packed.input_ids.tolist() == [[1, 2, 4, 0, 3, 5, 6, 7]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert packed.cu_seqlens.tolist() == [0, 4, 8] and packed.seq_len.tolist() == [3, 4]
    # logit at p predicts p + 1: responses are scored at (P − 1) .. of each sequence
    assert packed.response_positions().tolist() == [1, 4, 5, 6]
    assert packed.num_tokens == 8 and packed.max_seqlen == 4 and packed.max_response_len == 3
    tail = pack_sequences([[1]], [[2]], 0, pad_to_multiple_of=2, total_multiple_of=8)
    assert tail.cu_seqlens.tolist() == [0, 8]  # the last sequence absorbs the row's padding
    with pytest.raises(ValueError, match="must be a multiple of pad_to_multiple_of"):
        pack_sequences([[1]], [[2]], 0, pad_to_multiple_of=4, total_multiple_of=6)


def test_packed_plan_fills_micro_batches_with_real_tokens():
    from rlrt_megatron.megatron.forward import SequenceLayout, plan_microbatches

    prompts = [[1] * 3, [1] * 2, [1] * 5, [1] * 1]
    responses = [[2] * 5, [2] * 2, [2] * 9, [2] * 1]
    teachers = [None, [3] * 4, None, [3] * 2]
    packed = plan_microbatches(
        range(4), prompts, responses, teachers, max_tokens=16, layout=SequenceLayout(packing=True)
    )
    padded = plan_microbatches(range(4), prompts, responses, teachers, max_tokens=16)
    real = 8 + (4 + 6) + 14 + (2 + 3)
    assert sum(mb.inputs.num_tokens for mb in packed) == real
    assert sum(mb.inputs.num_tokens for mb in padded) > real
    assert sorted(r for mb in packed for r in mb.rows) == [0, 1, 2, 3]
    assert all(mb.inputs.num_tokens <= 16 for mb in packed)
    for mb in packed:  # a rollout's teacher view travels with its student
        assert all(teachers[mb.rows[j]] is not None for j in mb.paired)
    cp = plan_microbatches(
        range(4),
        prompts,
        responses,
        teachers,
        max_tokens=64,
        layout=SequenceLayout(packing=True, cp_size=2),
    )
    lengths = (cp[0].inputs.cu_seqlens[1:] - cp[0].inputs.cu_seqlens[:-1]).tolist()
    assert all(n % 4 == 0 for n in lengths)  # 2·CP chunks per sequence
    with pytest.raises(ValueError, match="context parallelism needs packed"):
        SequenceLayout(packing=False, cp_size=2)

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrt_megatron.megatron.forward import plan_microbatches
from rlrt_megatron.megatron.microbatch import pad_sequences


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    budget=st.integers(48, 200),
    multiple=st.sampled_from([1, 4, 8]),
)
def test_every_rollout_once_and_within_budget(lengths, budget, multiple):
    prompts = [[1]] * len(lengths)  # a sequence of n + 1 tokens, padded to the multiple
    responses = [[2] * n for n in lengths]
    batches = plan_microbatches(
        range(len(lengths)),
        prompts,
        responses,
        None,
        max_tokens=budget,
        pad_to_multiple_of=multiple,
    )
    assert sorted(r for mb in batches for r in mb.rows) == list(range(len(lengths)))
    for mb in batches:
        width = -(-max(lengths[r] + 1 for r in mb.rows) // multiple) * multiple
        assert mb.inputs.input_ids.shape == (len(mb.rows), width)
        assert mb.inputs.num_tokens <= budget


def test_padding_and_tail_aligned_response_positions():
    batch = pad_sequences([[1, 2, 3], [4]], [[7, 8], [9, 9, 9]], pad_id=0, pad_to_multiple_of=4)
    assert batch.input_ids.tolist() == [[1, 2, 3, 7, 8, 0, 0, 0], [4, 9, 9, 9, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [list(range(8))] * 2
    assert batch.response_start.tolist() == [2, 0] and batch.max_response_len == 3
    # Flat [B·S] logit positions, row by row; the logit at position p predicts token p + 1.
    positions = batch.response_positions()
    assert positions.tolist() == [2, 3, 8, 9, 10]
    assert batch.input_ids.flatten()[positions + 1].tolist() == [7, 8, 9, 9, 9]


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

"""Pure parts of the analyses: corpora, tables, HTML, shift summaries, injection and influence
bookkeeping, and the single-process vocab-parallel JS against a dense reference."""

from __future__ import annotations

import math
import random

import pytest
import torch
from _analysis_data import check_heatmap_html

from rlrt_megatron.analysis.engine_analyses import choose_positions, problem_counts, run_injection
from rlrt_megatron.analysis.heatmap import (
    TrajectoryHeatmap,
    build_heatmap,
    rank_candidates,
    render_html,
    render_png,
)
from rlrt_megatron.analysis.injection import flip_rates
from rlrt_megatron.analysis.markers import (
    build_corpora,
    explore_exploit_ids,
    markers_table,
    one_correct_one_incorrect,
    score_markers,
    volcano_plot,
    write_csv,
)
from rlrt_megatron.analysis.shift import (
    overlap_from_ids,
    summarize_shift,
    topk_overlap,
)
from rlrt_megatron.analysis.views import vocab_parallel_js

TOY_VOCAB = ["Wait", " wait", "so", " therefore", "\n", "x"]


def test_corpora_builder_on_a_toy_vocabulary():
    # Position 0: D = log(0.5/0.1), log(0.1/0.5), 0, 0, 0, 0 → explore "Wait", exploit " wait".
    # Position 1: student favours " therefore" (id 3) most vs the teacher; the teacher "so" (2).
    student = torch.log(
        torch.tensor([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.05, 0.55, 0.1, 0.1]])
    )
    teacher = torch.log(
        torch.tensor([[0.1, 0.5, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.45, 0.15, 0.1, 0.1]])
    )
    hi, lo = explore_exploit_ids(student, teacher)
    assert hi.tolist() == [0, 3] and lo.tolist() == [1, 2]
    # Two rollouts: the one above and one whose every position picks the newline / "x".
    explore, exploit = build_corpora(
        [hi.tolist(), [4, 5]], [lo.tolist(), [5, 4]], lambda i: TOY_VOCAB[i]
    )
    # Case-folded (App. D): "Wait" counts as "wait"; whitespace-only "\n" is dropped.
    assert explore == {"wait": 1, "therefore": 1, "x": 1}
    assert exploit == {"wait": 1, "so": 1, "x": 1}
    # With case_fold=False, " wait" and "Wait" stay distinct types.
    kept_case, _ = build_corpora(
        [hi.tolist(), [4, 5]], [lo.tolist(), [5, 4]], lambda i: TOY_VOCAB[i], case_fold=False
    )
    assert kept_case == {"Wait": 1, "therefore": 1, "x": 1}
    with pytest.raises(ValueError, match="differ in length"):
        build_corpora([[0, 1]], [[0]], lambda i: TOY_VOCAB[i])


def test_one_correct_one_incorrect_per_problem():
    problems = ["a", "a", "a", "b", "b", "c"]
    correct = [False, True, True, True, True, False]
    # a: first wrong (0) and first right (1); b: all right; c: all wrong → dropped.
    assert one_correct_one_incorrect(problems, correct) == [0, 1]


def test_marker_table_csv_and_volcano(tmp_path):
    rows = score_markers(
        {"Wait": 60, "therefore": 5, "maybe": 40, "zebra": 50},
        {"Wait": 5, "therefore": 60, "maybe": 2, "zebra": 50},
        stopwords=frozenset(),
    )
    table = markers_table(rows, {"reflection": ["wait"], "conclusion": ["therefore"]})
    assert "| reflection | Wait (+" in table and "| conclusion | — | therefore (-" in table
    assert "| other | maybe (+" in table and "zebra" not in table  # z = 0: not kept
    csv_text = write_csv(rows)
    assert csv_text.splitlines()[0] == "token,explore,exploit,delta,z,kept,filtered"
    assert len(csv_text.splitlines()) == 5
    figure = volcano_plot(rows)
    figure.savefig(tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 1000


def test_heatmap_candidates_and_escaped_html(tmp_path):
    explore, exploit = rank_candidates(
        [5, 6, 7, 5, 8],
        [math.log(0.5), math.log(0.3), math.log(0.1), math.log(0.5), -30.0],
        [math.log(0.2), math.log(0.3), math.log(0.4), math.log(0.2), math.log(0.05)],
        lambda i: f"<t{i}>",
    )
    assert [c.token_id for c in explore] == [5]  # duplicates dropped; only positive gaps
    assert [c.token_id for c in exploit] == [7, 8]
    assert exploit[0].gap == pytest.approx(-0.3)
    pieces = {0: "<script>", 1: "alert(1)", 2: "</script>", 3: ' & "q"', 4: "\n\x0b"}
    views = {
        "kl": [0.1, 0.5, 0.0, 0.25, 0.05],
        "cand_ids": [[0, 1, 2, 3]] * 5,
        "cand_student_log_prob": [[math.log(p) for p in (0.4, 0.3, 0.2, 0.1)]] * 5,
        "cand_teacher_log_prob": [[math.log(p) for p in (0.1, 0.2, 0.3, 0.4)]] * 5,
    }
    heat = build_heatmap("a <b> title", [0, 1, 2, 3, 4], views, pieces.get, top=2)
    assert [c.position for c in heat.critical] == [1, 3]
    assert [c.token_id for c in heat.critical[0].explore] == [0, 1]
    page = render_html([heat], window=1)
    collector = check_heatmap_html(page)
    full = collector.kl[:5]
    assert full == views["kl"]  # exact values, then the zoomed copies
    assert "<script>" not in page.split("</style>", 1)[1] and "&lt;script&gt;" in page
    assert "<script>" in "".join(collector.text)  # the reader sees the piece itself
    figure = render_png(heat)
    figure.savefig(tmp_path / "h.png")
    empty = TrajectoryHeatmap("empty critical", ["a"], [0.0])
    check_heatmap_html(render_html([empty]))


def test_shift_summary_on_hand_made_distributions():
    ft = torch.log(
        torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1]])
    )
    base = torch.log(
        torch.tensor([[0.002, 0.5, 0.3, 0.198], [0.25, 0.25, 0.25, 0.25], [0.6, 0.15, 0.2, 0.05]])
    )
    ft_ids, base_ids = ft.topk(4).indices, base.topk(4).indices
    for k in range(1, 5):
        assert torch.equal(overlap_from_ids(ft_ids, base_ids, k), topk_overlap(ft, base, k))
    js = torch.tensor([0.5, 0.0, 0.2])
    top1 = ft.argmax(-1, keepdim=True)
    summary = summarize_shift(
        js, ft_ids, base_ids, base.gather(-1, top1).squeeze(-1), ccdf_grid=[0.1, 0.3]
    )
    assert summary["shifted_positions"] == 2
    assert summary["ccdf"]["fraction_above"] == pytest.approx([2 / 3, 1 / 3])
    # Shifted rows 0 and 2. k=1: ft top-1 {0}, {1}; base {1}, {0} → overlap 0 at both.
    # k=2: row 0 {0,1} vs {1,2} → 1/2; row 2 {1,2} vs {0,2} → 1/2.
    assert summary["topk_overlap"]["mean_overlap"][:2] == [0.0, 0.5]
    # Base probability of the new top-1: 0.002 (row 0) and 0.15 (row 2).
    assert summary["tail_promotion"]["fraction_below"] == [0.5, 0.5, 0.0, 0.0]


def test_vocab_parallel_js_matches_dense_reference():
    torch.manual_seed(0)
    p, q = torch.randn(2, 7, 50) * 3, torch.randn(2, 7, 50) * 3
    lp, lq = p.log_softmax(-1), q.log_softmax(-1)
    lm = torch.logaddexp(lp, lq) - math.log(2)
    ref = 0.5 * (lp.exp() * (lp - lm)).sum(-1) + 0.5 * (lq.exp() * (lq - lm)).sum(-1)
    assert torch.allclose(vocab_parallel_js(p, q, chunk_size=3), ref, atol=1e-6)
    # Padded vocabulary columns (ids >= vocab_size) take no part.
    padded = torch.cat([p, torch.full((2, 7, 14), 50.0)], -1)
    padded_q = torch.cat([q, torch.full((2, 7, 14), -50.0)], -1)
    assert torch.allclose(vocab_parallel_js(padded, padded_q, vocab_size=50), ref, atol=1e-6)
    assert vocab_parallel_js(p, p).abs().max() < 1e-6


class _ScriptedPool:
    """Answers each prompt with one scripted continuation (the engine's role in bookkeeping)."""

    def __init__(self, texts):
        self.texts = list(texts)
        self.prompts = None

    def generate(self, prompts, sampling):
        from rlrt_megatron.rollout import Sample

        self.prompts = prompts
        return [
            [Sample(token_ids=[i], logprobs=[0.0], finish_reason="stop", text="", weight_version=0)]
            for i, _ in enumerate(prompts)
        ]


class _Tok:
    def decode(self, ids):
        return " ".join(str(i) for i in ids)

    def encode(self, text, add_special_tokens=False):
        return [900]


class _Req:
    def __init__(self, prompt, response):
        self.prompt_ids, self.response_ids = prompt, response


class _Traj:
    def __init__(self, problem, response):
        self.request = _Req([1, 2], response)
        self.problem = problem
        self.where = f"f:{problem}"


def test_flip_rate_bookkeeping_on_scripted_outcomes():
    # Problem h (hard, 1/4 correct) and e (easy, 3/4 correct), four rollouts each.
    trajectories = [_Traj("h", [10, 11, 12]) for _ in range(4)] + [
        _Traj("e", [20, 21]) for _ in range(4)
    ]
    correct = [True, False, False, False, True, True, True, False]
    kls = [[0.1, 0.9, 0.0]] * 4 + [[0.5, 0.2]] * 4
    # Scripted grades per continuation, in (rollout, kind) order: max_kl, random, min_kl.
    script = {
        1: (True, False, False),
        2: (True, True, False),
        3: (False, False, False),
        4: (False, True, True),
        5: (True, True, True),
        6: (False, True, True),
    }

    def grade(texts, answers):
        out = []
        for n, _ in enumerate(texts):
            rollout, kind = divmod(n, 3)
            out.append(script.get(rollout, (False,) * 3)[kind])
        return out

    pool = _ScriptedPool([])
    outcomes, records = run_injection(
        pool, _Tok(), trajectories, kls, correct, ["a"] * 8, grade=grade, seed=3
    )
    assert len(outcomes) == 24 and len(pool.prompts) == 24
    # Insertion before the token at argmax D̄ (position 1 of [10, 11, 12]): prompt ⊕ y_<1 ⊕ text.
    assert pool.prompts[3] == [1, 2, 10, 900] and records[3]["position"] == 1
    assert pool.prompts[5] == [1, 2, 10, 11, 900]  # argmin: position 2
    # Four rollouts per problem here: hard = 0 or 1 of 4 correct, easy = 3 of 4.
    rates = flip_rates(outcomes, hard_correct=(0, 1), easy_correct=(3,), group_size=4)
    # Hard wrong rollouts 1, 2, 3: max_kl flips 2/3, random 1/3, min_kl 0/3.
    assert rates["max_kl"]["wrong_to_right"] == pytest.approx(2 / 3)
    assert rates["random"]["wrong_to_right"] == pytest.approx(1 / 3)
    assert rates["min_kl"]["wrong_to_right"] == 0 and rates["min_kl"]["hard_wrong_rollouts"] == 3
    # Easy right rollouts 4, 5, 6: right→wrong where the grade is False.
    assert rates["max_kl"]["right_to_wrong"] == pytest.approx(2 / 3)
    assert rates["random"]["right_to_wrong"] == 0 and rates["random"]["easy_right_rollouts"] == 3
    assert problem_counts(["h", "h", "e"], [True, False, True]) == {"h": (1, 2), "e": (1, 1)}
    positions = choose_positions([0.2, 0.9, 0.9, 0.0], random.Random(0))
    assert positions["max_kl"] == 1 and positions["min_kl"] == 3

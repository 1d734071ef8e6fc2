"""``rlrt analyze rollouts``: sample K rollouts per prompt, grade them, attach peer contexts.

Writes the jsonl every other analysis reads, so they can run on any checkpoint and prompt file
(the trainer's formats: verl parquet or jsonl, see :mod:`rlrt_megatron.data.readers`). Prompts
are chat-templated exactly as the trainer does; each rollout gets, as its teacher context, a
*different* correct rollout of its group drawn uniformly (the RLRT teacher,
:func:`rlrt_megatron.teacher.peers.select_peers`), or none when its group has no other correct
rollout. Those rollouts get instead ``ground_truth_teacher_prompt_ids``: the same teacher template
around a known correct solution (the data's worked ``solution``, else the boxed answer), which
``rlrt analyze inject`` uses so that problems with no (other) correct rollout are not dropped (the
paper's "feeding a known correct solution c"); the other analyses leave those rollouts out or
stop (``--skip-without-context``). One line per rollout::

    {"prompt_ids", "response_ids", "teacher_prompt_ids" | null,
     "ground_truth_teacher_prompt_ids" | null, "question", "response", "answer", "solution",
     "correct", "problem", "peer" | null, "problem_correct", "problem_rollouts"}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlrt_megatron.errors import CommandError
from rlrt_megatron.teacher.templates import PEER_TEMPLATE


def run_rollouts(args: argparse.Namespace) -> int:
    import torch

    from rlrt_megatron.analysis import common
    from rlrt_megatron.analysis.common import grade_answers, sampling_config
    from rlrt_megatron.analysis.inputs import known_solution, open_model, write_atomically
    from rlrt_megatron.data.prompts import load_prompts
    from rlrt_megatron.data.templating import encode_chat
    from rlrt_megatron.teacher.contexts import teacher_messages
    from rlrt_megatron.teacher.peers import select_peers

    if args.k < 1 or args.max_new_tokens < 1:
        raise CommandError("--k and --max-new-tokens must be >= 1")
    for field in ("{prompt}", "{context}"):
        if field not in args.teacher_template:
            raise CommandError(f"--teacher-template must contain {field}")
    model = open_model(args.model)
    try:
        prompts, counts = load_prompts(
            [str(args.prompts)], model.tokenizer, max_prompt_tokens=args.max_prompt_tokens
        )
    except (ValueError, OSError) as error:
        raise CommandError(str(error)) from None
    prompts = prompts[: args.limit] if args.limit else prompts
    length = min(model.max_positions, args.max_prompt_tokens + args.max_new_tokens)
    with common.open_engine_pool(model.path, max_model_len=length, engines=args.engines) as pool:
        groups = pool.generate(
            [p.ids for p in prompts],
            sampling_config(args.k, args.max_new_tokens, args.temperature, args.seed),
        )
    texts = [model.tokenizer.decode(s.token_ids) for group in groups for s in group]
    truths = [p.record.ground_truth for p in prompts for _ in range(args.k)]
    graded = grade_answers(texts, truths, args.grader)
    correct = torch.tensor(graded, dtype=torch.bool).view(len(prompts), args.k)
    peers = select_peers(correct, torch.Generator().manual_seed(args.seed))
    lines = []
    for g, (prompt, group) in enumerate(zip(prompts, groups, strict=True)):
        record = prompt.record
        for k, sample in enumerate(group):
            peer = int(peers[g, k])
            teacher = ground_truth_teacher = None
            if peer >= 0:
                context = texts[g * args.k + peer]
                messages = teacher_messages(record.prompt, context, args.teacher_template)
                teacher = encode_chat(model.tokenizer, messages)
            else:
                context = known_solution(record.ground_truth, record.solution)
                messages = teacher_messages(record.prompt, context, args.teacher_template)
                ground_truth_teacher = encode_chat(model.tokenizer, messages)
            row = {
                "prompt_ids": prompt.ids,
                "response_ids": list(sample.token_ids),
                "teacher_prompt_ids": teacher,
                "ground_truth_teacher_prompt_ids": ground_truth_teacher,
                "question": record.question,
                "response": texts[g * args.k + k],
                "answer": record.ground_truth,
                "solution": record.solution,
                "correct": bool(correct[g, k]),
                "problem": f"{record.data_source}:{record.index}",
                "peer": peer if peer >= 0 else None,
                "problem_correct": int(correct[g].sum()),
                "problem_rollouts": args.k,
            }
            if row["response_ids"]:  # an immediate EOS leaves nothing to analyse
                lines.append(json.dumps(row, ensure_ascii=False))
    write_atomically(args.output, "".join(line + "\n" for line in lines))
    accuracy = float(correct.float().mean())
    print(
        f"wrote {len(lines)} rollouts of {len(prompts)} prompts ({counts['too_long']} too long "
        f"skipped) to {args.output}; accuracy {accuracy:.3f}"
    )
    return 0


def add_rollouts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (HF, step, run)")
    parser.add_argument("--prompts", type=Path, required=True, help="prompt file (jsonl/parquet)")
    parser.add_argument("--output", type=Path, required=True, help="rollouts jsonl to write")
    parser.add_argument("--k", type=int, default=8, help="rollouts per prompt (8)")
    parser.add_argument("--limit", type=int, default=0, help="first N prompts only (0: all)")
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", type=int, default=1, help="vLLM engines")
    parser.add_argument("--grader", default="math", help="registered reward (math)")
    parser.add_argument("--teacher-template", default=PEER_TEMPLATE)

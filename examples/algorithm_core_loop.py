"""The algorithm core in your own training loop: RLRT on a tiny Qwen3, plain PyTorch.

No Megatron, no vLLM, no Ray: Hugging Face transformers samples and scores the responses, and
`rlrt_megatron.algorithms` does the method's math, one pure tensor function per step of the paper:

    rewards ─ group_advantages ─ select_peers ─ teacher log-probs ─ token_advantages ─ policy_loss

The task is a toy with a verifiable reward (1 if the response contains a digit), so that a random
tiny model gets a mix of rewards in every group. Run:

    python examples/algorithm_core_loop.py --steps 3
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from rlrt_megatron.algorithms import (
    get_method,
    group_advantages,
    policy_loss,
    token_advantages,
    token_weight_stats,
)
from rlrt_megatron.models.tiny import build_tiny_qwen3
from rlrt_megatron.teacher import select_peers, teacher_prompt

PROMPTS = ["Compute 12 + 7.", "Compute 3 * 4.", "What is 9 - 5?", "Compute 6 + 6."]


def reward(response: str) -> float:
    """The toy verifiable reward: did the model answer with a number at all?"""
    return float(any(ch.isdigit() for ch in response))


def chat_ids(tokenizer, user_message: str) -> list[int]:
    messages = [{"role": "user", "content": user_message}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    return encoded["input_ids"]


def response_logprobs(model, prompts: list[list[int]], responses: torch.Tensor) -> torch.Tensor:
    """log π(y_t | prompt, y_<t) of every response token: [B, T].

    Each row is prompt ⊕ response, right-padded: the padding sits after everything a causal model
    attends to, so no attention mask is needed. The logit at position p−1+t predicts token t."""
    rows = [torch.tensor(p + r.tolist()) for p, r in zip(prompts, responses, strict=True)]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    logits = model(input_ids=ids).logits  # [B, L, V]
    starts = torch.tensor([len(p) - 1 for p in prompts])
    positions = starts[:, None] + torch.arange(responses.shape[1])  # [B, T]
    picked = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))
    return picked.log_softmax(-1).gather(-1, responses[..., None]).squeeze(-1)


def rollout(model, tokenizer, k: int, max_tokens: int):
    """K samples per prompt: token ids [G·K, T], their mask, texts, and each row's prompt ids."""
    prompts, responses = [], []
    for prompt in PROMPTS:
        ids = chat_ids(tokenizer, prompt)
        out = model.generate(
            torch.tensor([ids]),
            do_sample=True,
            top_k=0,
            max_new_tokens=max_tokens,
            num_return_sequences=k,
            pad_token_id=tokenizer.pad_token_id,
        )
        response = out[:, len(ids) :]
        pad = (0, max_tokens - response.shape[1])  # generate stops early when all rows ended
        responses.append(torch.nn.functional.pad(response, pad, value=tokenizer.pad_token_id))
        prompts += [ids] * k
    responses = torch.cat(responses)
    # Response tokens up to and including the first end-of-turn token.
    is_eos = responses == tokenizer.eos_token_id
    ended_before = is_eos.long().cumsum(-1) - is_eos.long()
    mask = ended_before == 0
    pairs = zip(responses, mask, strict=True)
    texts = [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in pairs]
    return prompts, responses, mask.float(), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=8, help="K: samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    hf_logging.disable_progress_bar()  # keep the console to the step lines
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="tiny_qwen3_") as model_dir:
        build_tiny_qwen3(model_dir)  # config, random weights and a tokenizer, no download
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    method = get_method("rlrt")  # the paper's defaults: std-normalised A, λ = 0.5, ε_w = 1.0
    lam, eps_w = method.defaults.lam_init, method.defaults.eps_w
    groups, k = len(PROMPTS), args.rollouts

    for step in range(1, args.steps + 1):
        model.eval()
        with torch.no_grad():
            prompts, responses, mask, texts = rollout(model, tokenizer, k, args.max_tokens)
        rewards = torch.tensor([reward(t) for t in texts]).view(groups, k)  # [G, K]
        advantages = group_advantages(rewards, method.defaults.normalize_by_std).flatten()
        correct = rewards.bool().flatten()

        # Teacher view: the same model, shown a *different* correct rollout of the group (RLRT).
        peers = select_peers(rewards.bool()).flatten()  # [G·K] index within the group, or −1
        has_teacher = peers >= 0
        teacher_prompts = [
            chat_ids(tokenizer, teacher_prompt(PROMPTS[i // k], texts[(i // k) * k + int(p)]))
            if p >= 0
            else prompts[i]  # no teacher: scored but ignored by token_advantages
            for i, p in enumerate(peers)
        ]
        with torch.no_grad():
            old_logprobs = response_logprobs(model, prompts, responses)
            teacher_logprobs = response_logprobs(model, teacher_prompts, responses)

        # A_t = A·[(1−λ) + λ·clip(exp(sign(A)·D_t), 1−ε_w, 1+ε_w)] on correct rows (paper Eq. 7).
        args_t = (advantages, correct, old_logprobs, teacher_logprobs, mask, has_teacher)
        a_t = token_advantages(method, *args_t, lam=lam, eps_w=eps_w)
        stats = token_weight_stats(method, *args_t, eps_w=eps_w)

        # Two PPO epochs on the batch with the DAPO surrogate (clip-higher, token-mean, no KL).
        model.train()
        for _ in range(2):
            logprobs = response_logprobs(model, prompts, responses)
            loss, metrics = policy_loss(logprobs, old_logprobs, a_t, mask)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

        # Did the update move the policy towards the rollouts with a positive advantage?
        with torch.no_grad():
            new_logprobs = response_logprobs(model, prompts, responses)
        positive = advantages > 0
        before = (old_logprobs * mask).sum(-1)[positive].mean().item()
        after = (new_logprobs * mask).sum(-1)[positive].mean().item()
        print(
            f"step {step}: reward {rewards.mean().item():.3f} | rows with a peer "
            f"{int(has_teacher.sum())}/{len(texts)} | reweighted tokens "
            f"{int(stats['reweighted_tokens'])} (w>1 {stats['weight_gt1_frac']:.2f}, "
            f"w<1 {stats['weight_lt1_frac']:.2f}) | loss {metrics['pg_loss']:+.4f} | "
            f"log-prob of A>0 rollouts {before:.3f} -> {after:.3f}"
        )


if __name__ == "__main__":
    main()

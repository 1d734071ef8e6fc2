"""Peak memory of the chunked vocab-parallel path vs a naive full-softmax path (CPU, fp32 logits).

Both paths compute, for T tokens over a V-token vocabulary, from a student and a teacher view:
log P_S(y), log P_T(y), H(P_S) and KL(P_S ‖ P_T) per token.

    chunked: rlrt_megatron.megatron.vocab_parallel.vocab_parallel_pair_stats (one fused pass,
             token chunks, default chunk budget unless --chunk-size)
    naive:   log_softmax of both full [T, V] fp32 views, gather, entropy, KL

Method: each (path, T) runs in its own subprocess. The subprocess allocates both [T, V] fp32 views
(plus targets), reads its resident set size (VmRSS) as the baseline, runs the path, and reports
the peak RSS (getrusage ru_maxrss) minus that baseline: the extra memory the path needed.
Before each subprocess the parent checks MemAvailable; the subprocess caps its address space
(RLIMIT_AS) at what is available, so a path that does not fit fails with an allocation error
(reported as OOM) instead of waking the kernel's OOM killer on a shared machine. When the naive
path cannot fit at --tokens, it is measured at the largest halved T that fits (--naive-tokens to
force one) and its extra memory at --tokens is extrapolated linearly (it is exactly linear in T).

Usage:  python benchmarks/logprob_memory.py [--tokens 8192] [--vocab 151936]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2**30
# Naive path's extra working set in units of one [T, V] fp32 view: log P_S, log P_T, P_S, and two
# [T, V] temporaries alive at once (log P_S − log P_T, then its product with P_S).
NAIVE_VIEWS = 5
SAFETY = 3 * GIB  # never allowed to a subprocess: left to the other users of the machine
# The naive path is planned to leave this share of MemAvailable free too (its extra memory is
# exactly linear in T, so a smaller T loses nothing but wall time).
PLAN_HEADROOM = 0.3


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


# ------------------------------------------------------------------------------------ child


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    # Imported before the baseline is taken, so its (small) footprint is not counted.
    from rlrt_megatron.megatron.vocab_parallel import vocab_parallel_pair_stats

    t, v = args.tokens, args.vocab
    g = torch.Generator().manual_seed(0)
    student = torch.empty(t, v).normal_(0.0, 2.0, generator=g)
    teacher = torch.empty(t, v).normal_(0.0, 2.0, generator=g).add_(student)
    target = torch.randint(0, v, (t,), generator=g)
    baseline = _status("VmRSS")
    # Cap the address space: going past what the machine has left raises instead of OOM-killing.
    limit = _status("VmSize") + args.allow_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start = time.perf_counter()
    try:
        if args.child == "chunked":
            st = vocab_parallel_pair_stats(student, teacher, target, chunk_size=args.chunk_size)
            out = [st.student_log_prob, st.teacher_log_prob, st.student_entropy, st.kl]
        else:
            with torch.no_grad():
                ls = torch.log_softmax(student, dim=-1)
                lt = torch.log_softmax(teacher, dim=-1)
                y = target.unsqueeze(1)
                lp_s, lp_t = ls.gather(1, y).squeeze(1), lt.gather(1, y).squeeze(1)
                ps = ls.exp()
                ent = -(ps * ls).sum(dim=-1)
                kl = (ps * (ls - lt)).sum(dim=-1)
                out = [lp_s, lp_t, ent, kl]
        status = "ok"
    except (RuntimeError, MemoryError) as e:
        # The address-space cap was hit: the path needs more than this machine had free.
        cap = args.allow_bytes / GIB
        status = f"OOM: needs > {cap:.1f} GiB extra ({type(e).__name__}: {str(e)[:60]!r})"
        out = None
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if out is not None and args.save:
        torch.save([o.clone() for o in out], args.save)
    extra = peak - baseline if out is not None else None
    rec = dict(status=status, baseline=baseline, extra=extra, seconds=seconds)
    print("RESULT " + json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------------- parent


def _run(path: str, tokens: int, args: argparse.Namespace, save: str | None) -> dict:
    logits = 2 * tokens * args.vocab * 4
    avail = _meminfo("MemAvailable")
    allow = avail - logits - SAFETY
    if allow <= 0:
        return dict(
            status=f"skipped: {avail / GIB:.1f} GiB available, logits need {logits / GIB:.1f} GiB",
            extra=None,
            seconds=None,
        )
    cmd = [
        sys.executable,
        __file__,
        "--child",
        path,
        "--tokens",
        str(tokens),
        "--vocab",
        str(args.vocab),
        "--threads",
        str(args.threads),
        "--allow-bytes",
        str(allow),
    ]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return dict(
        status=f"child failed (rc {proc.returncode}): {proc.stderr[-300:]}",
        extra=None,
        seconds=None,
    )


def _naive_tokens(args: argparse.Namespace) -> int:
    if args.naive_tokens:
        return args.naive_tokens
    avail = _meminfo("MemAvailable")
    avail -= max(SAFETY, PLAN_HEADROOM * avail)
    t = args.tokens
    while t > 1 and (2 + NAIVE_VIEWS) * t * args.vocab * 4 > avail:
        t //= 2
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192, help="T: tokens (rows of logits)")
    ap.add_argument("--vocab", type=int, default=151_936, help="V: vocabulary (columns)")
    ap.add_argument("--chunk-size", type=int, default=None, help="chunked path: tokens/chunk")
    ap.add_argument("--naive-tokens", type=int, default=None, help="force T for the naive path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--allow-bytes", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    from rlrt_megatron.megatron.vocab_common import DEFAULT_CHUNK_BYTES, chunk_rows

    t_full, v = args.tokens, args.vocab
    t_naive = _naive_tokens(args)
    rows = chunk_rows(args.chunk_size, v, n_buffers=4)
    print(
        f"T={t_full} V={v}, fp32 logits, two views (student, teacher); chunked path: "
        f"{rows} tokens/chunk"
        + ("" if args.chunk_size else f" (budget {DEFAULT_CHUNK_BYTES / 2**20:.0f} MiB)")
    )
    print("Measured per subprocess: peak RSS (ru_maxrss) minus RSS after the logits are allocated.")
    print(f"MemAvailable at start: {_meminfo('MemAvailable') / GIB:.1f} GiB\n")

    runs = [("chunked", t_full)]
    if t_naive != t_full:
        runs.append(("chunked", t_naive))
    runs.append(("naive", t_naive))
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for path, tokens in runs:
            save = os.path.join(d, f"{path}_{tokens}.pt") if tokens == t_naive else None
            results[(path, tokens)] = _run(path, tokens, args, save)
        agree = None
        a, b = (os.path.join(d, f"{p}_{t_naive}.pt") for p in ("chunked", "naive"))
        if os.path.exists(a) and os.path.exists(b):
            import torch

            agree = [
                (x - y).abs().max().item()
                for x, y in zip(torch.load(a), torch.load(b), strict=True)
            ]

    hdr = (
        f"{'path':<8} {'T':>6} {'logits (2 views)':>17} {'extra peak':>11} {'extra/logits':>13}"
        f" {'time':>7}  status"
    )
    print(hdr)
    print("-" * len(hdr))
    for (path, tokens), r in results.items():
        logits = 2 * tokens * v * 4
        extra = r.get("extra")
        ex = f"{extra / GIB:8.3f} GiB" if extra is not None else f"{'-':>11}"
        ratio = f"{extra / logits:13.4f}" if extra is not None else f"{'-':>13}"
        sec = f"{r['seconds']:6.1f}s" if r.get("seconds") is not None else f"{'-':>7}"
        print(f"{path:<8} {tokens:>6} {logits / GIB:13.2f} GiB {ex} {ratio} {sec}  {r['status']}")
    naive = results[("naive", t_naive)]
    if t_naive != t_full and naive.get("extra") is not None and naive["status"] == "ok":
        est = naive["extra"] * t_full / t_naive
        why = (
            "forced by --naive-tokens"
            if args.naive_tokens
            else "the naive path does not fit in the memory available here"
        )
        print(
            f"\nnaive measured at T={t_naive} ({why}); at T={t_full} it would need the logits "
            f"({2 * t_full * v * 4 / GIB:.1f} GiB) + ~{est / GIB:.1f} GiB extra "
            f"(extrapolated linearly), ratio {est / (2 * t_full * v * 4):.2f}."
        )
    if agree is not None:
        print(
            f"chunked vs naive outputs at T={t_naive}, max |diff| "
            "(lpS = log P_S(y), lpT = log P_T(y)): "
            + ", ".join(
                f"{n} {x:.1e}" for n, x in zip(("lpS", "lpT", "H", "KL"), agree, strict=True)
            )
        )


if __name__ == "__main__":
    main()

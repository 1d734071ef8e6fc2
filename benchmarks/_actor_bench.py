"""Shared pieces of the actor benchmarks: a Qwen3-shaped test model, a peak-memory probe, and a
one-rank-per-process launch (each setting gets fresh processes, so peaks never carry over)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch


def build_bench_model(out_dir: str | Path, *, max_positions: int, hidden: int = 256) -> Path:
    """A small Qwen3 (2 layers, 4 query / 2 KV heads of 64, SwiGLU 4·hidden) built locally."""
    from rlrt_megatron.models.tiny import build_tiny_qwen3

    return build_tiny_qwen3(
        out_dir,
        hidden_size=hidden,
        num_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_positions,
        initializer_range=0.02,
    )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry, while the block runs: the CUDA allocator's peak on
    GPUs; on the CPU the process's resident set, sampled every millisecond by a thread (CPU
    tensors have no allocator statistics)."""

    def __enter__(self) -> PeakMemory:
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_bytes()
            self.peak = self.base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.start = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())

    @property
    def above_base(self) -> int:
        return self.peak - self.base

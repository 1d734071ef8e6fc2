"""`rlrt_megatron.megatron.host_allocator`: which processes keep freed host memory, and that
``retain`` really stops the page faults of a large block allocated again and again (the update's
activations, step after step). The allocator is process-wide, so each mode runs in a fresh
interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlrt_megatron.megatron.host_allocator import HOST_ALLOCATORS, resolve_host_allocator

# A 64 MB block (above glibc's largest mmap threshold, 32 MB: served by mmap by default), written
# in full, freed, five times after one warm-up; prints the minor faults per cycle.
CYCLES = """
import ctypes, json, resource, sys
from rlrt_megatron.megatron.host_allocator import apply_host_allocator
applied = apply_host_allocator(sys.argv[1], cuda=sys.argv[2] == "cuda")
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.restype = ctypes.c_void_p
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 64 << 20
def cycle():
    block = libc.malloc(size)
    libc.memset(block, 1, size)
    libc.free(block)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"applied": applied, "faults_per_cycle": faults}))
"""
PAGES = (64 << 20) // 4096  # 16,384 pages of 4 KB in the block


def _cycles(mode: str, device: str = "cpu") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CYCLES, mode, device], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


def test_auto_retains_on_cpu_and_leaves_cuda_processes_alone():
    assert resolve_host_allocator("auto", cuda=False) == "retain"
    assert resolve_host_allocator("auto", cuda=True) == "system"
    for mode in ("retain", "system"):
        assert resolve_host_allocator(mode, cuda=False) == mode
        assert resolve_host_allocator(mode, cuda=True) == mode
    assert HOST_ALLOCATORS == ("auto", "retain", "system")


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match=r"host_allocator must be one of .*'tcmalloc'"):
        resolve_host_allocator("tcmalloc", cuda=False)  # type: ignore[arg-type]


@pytest.mark.skipif(not _glibc(), reason="mallopt's parameters are glibc's")
def test_retain_stops_refaulting_a_reused_large_block():
    system = _cycles("system")
    retain = _cycles("retain")
    auto_on_cuda = _cycles("auto", "cuda")
    assert system["applied"] is False and auto_on_cuda["applied"] is False
    assert retain["applied"] is True
    # glibc's defaults: a fresh mapping each cycle, every page faulted in again
    assert system["faults_per_cycle"] >= 0.9 * PAGES
    assert auto_on_cuda["faults_per_cycle"] >= 0.9 * PAGES
    # retained: the block comes back from the heap already mapped
    assert retain["faults_per_cycle"] <= 0.02 * PAGES

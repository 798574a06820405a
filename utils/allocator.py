"""glibc malloc settings for the training process: freed tensors' memory is kept for the next step.

glibc serves a block above its mmap threshold (128 KB at start, raised up to 32 MB as such blocks
are freed) with fresh pages from the kernel and unmaps them on free, and it returns its heap's free
top to the kernel past twice that threshold. Paddle's CPU tensors are such blocks, so a training
step can fault its activations and gradients in again, zeroed by the kernel: in a script that
repeats one [16, 300, 80] step of the peer config, 1,600-3,900 minor page faults and 3-9 ms of
kernel time a 96 ms step.

keep_freed_memory() makes glibc serve blocks up to 32 MB from its heap (and the per-thread heaps of
OpenMP threads) and never trim them, so a step reuses the pages of the step before: 0-400 faults
there, and the step 2.5-3.5 ms faster. With make bench's batches, whose lengths vary, glibc's own
threshold often settles (1-2,500 faults a step without this; `peer_equivalent_freed_memory_returned`).
The price: the process keeps its peak heap, which the next step would fault in again anyway.
Setting MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or MALLOC_TOP_PAD_ in the environment, or
train.keep_freed_memory=false, leaves glibc as it is.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30       # mallopt takes an int: 1 GB of free heap top before any goes back
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _mallopt():
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory(enabled: bool) -> str:
    """Apply train.keep_freed_memory; returns the log line that says what malloc does."""
    if not enabled:
        return "malloc: glibc's defaults (train.keep_freed_memory=false)"
    preset = [name for name in ENVIRONMENT if name in os.environ]
    if preset:
        return f"malloc: glibc's settings from the environment ({', '.join(preset)})"
    mallopt = _mallopt()
    if mallopt is None or mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1:
        return "malloc: unchanged (no glibc mallopt here); freed tensors go back to the system"
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "malloc: blocks up to 32 MB from the heap, but glibc refused the trim threshold"
    return ("malloc: blocks up to 32 MB from the heap and freed memory kept for the next step "
            "(train.keep_freed_memory; no page faults for each step's tensors)")

"""utils/allocator.py: glibc keeps freed tensors' memory, in a process of its own (mallopt cannot be undone)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a step's worth of tensors: eight 4 MB blocks allocated, written and freed together, 20 times. With
# glibc's defaults the heap's free top (32 MB) passes the trim threshold (twice the largest block
# freed, 8 MB) and goes back to the kernel each time, to be faulted in again (8 x 1,024 pages).
PROGRAM = textwrap.dedent("""
    import ctypes, os, resource, sys
    sys.path.insert(0, sys.argv[1])
    from utils import allocator
    note = allocator.keep_freed_memory(sys.argv[2] == "on")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def churn():
        for _ in range(20):
            blocks = [libc.malloc(4 << 20) for _ in range(8)]
            for block in blocks:
                ctypes.memset(block, 1, 4 << 20)
            for block in blocks:
                libc.free(block)
    churn()  # whatever glibc learns in the first rounds
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(note)
""")


def run(setting: str, env: dict | None = None) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(ROOT), setting], capture_output=True, text=True,
                         check=True, env=env, timeout=60).stdout.splitlines()
    return int(out[0]), out[1]


def test_freed_memory_is_reused_without_page_faults():
    if run("off")[0] < 20 * 8 * 1000:  # here (Debian 12, glibc 2.36): 163,200
        pytest.skip("glibc's defaults kept the freed pages here too: nothing to compare against")
    faults, note = run("on")
    assert "freed memory kept" in note
    assert faults < 500  # the blocks reuse the same pages: 20 x 8 x 1,024 faults when they come back fresh


def test_off_and_environment_leave_glibc_alone():
    assert run("off")[1] == "malloc: glibc's defaults (train.keep_freed_memory=false)"
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072")
    assert run("on", env)[1] == "malloc: glibc's settings from the environment (MALLOC_TRIM_THRESHOLD_)"

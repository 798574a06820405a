"""What `import utils` sets up before Paddle loads: its import-time thread warning is dropped, nothing else."""
from __future__ import annotations

import io
import os
import subprocess
import sys

from conftest import ROOT

import utils


def test_paddles_omp_warning_is_dropped_and_other_stderr_kept():
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    code = "import sys, utils, paddle; print('after import', file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OMP_NUM_THREADS" not in done.stderr and "after import" in done.stderr
    bare = subprocess.run([sys.executable, "-c", "import paddle"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert "WARNING: OMP_NUM_THREADS set to 2" in bare.stderr  # what the hook drops, so the test means something


def test_dropping_stderr_drops_whole_printed_lines_only():
    out = io.StringIO()
    stream = utils._DroppingStderr(out, utils.PADDLE_THREAD_WARNINGS)
    print("keep me", file=stream)
    print("WARNING: OMP_NUM_THREADS set to 2, not 1. ...", file=stream)
    print("PLEASE USE OMP_NUM_THREADS WISELY.", file=stream)
    print("", file=stream)
    print("and me", file=stream)
    assert out.getvalue() == "keep me\n\nand me\n"

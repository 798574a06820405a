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


def test_the_hook_survives_a_mere_lookup_and_a_closed_stderr():
    """find_spec("paddle") (is it installed?) used it up; with stderr closed the warning went to stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    code = "import importlib.util, utils; importlib.util.find_spec('paddle'); import paddle; print('result')"
    looked_up = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert looked_up.returncode == 0 and "OMP_NUM_THREADS" not in looked_up.stderr, looked_up.stderr[-2000:]
    closed = subprocess.run(f"{sys.executable} -c \"import utils, paddle; print('result')\" 2>&-", shell=True,
                            capture_output=True, text=True, env=env, timeout=120)
    assert closed.stdout == "result\n"


def test_the_kernel_build_runs_with_stderr_closed():
    """The build's stderr capture failed where fd 2 was closed, and training fell back to Paddle's kernels."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import utils\nfrom utils import cpu_kernels\n"
            "try:\n    cpu_kernels.load_ops(); print('built')\n"
            "except cpu_kernels.KernelsUnavailable as err:\n    print('unavailable', err)\n")
    with_stderr = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    closed = subprocess.run(f"{sys.executable} -c \"{code}\" 2>&-", shell=True, capture_output=True, text=True,
                            env=env, timeout=300)
    assert closed.stdout.split()[0] == with_stderr.stdout.split()[0], (closed.stdout, with_stderr.stdout)


def test_dropping_stderr_drops_whole_printed_lines_only():
    out = io.StringIO()
    stream = utils._DroppingStderr(out, utils.PADDLE_THREAD_WARNINGS)
    print("keep me", file=stream)
    print("WARNING: OMP_NUM_THREADS set to 2, not 1. ...", file=stream)
    print("PLEASE USE OMP_NUM_THREADS WISELY.", file=stream)
    print("", file=stream)
    print("and me", file=stream)
    assert out.getvalue() == "keep me\n\nand me\n"

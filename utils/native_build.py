"""What our two compiled libraries share (cpu_kernels: Paddle operators; feature_kernels: a plain C
library): a build folder named by a key over the sources, the flags and the CPU (both build with
-march=native), one build at a time per folder, and stale builds removed. No Paddle here."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

BUILD_ROOT = Path(__file__).resolve().parents[1] / "build"


def cpu_description() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return "".join(line for line in handle if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


def keyed_folder(root: Path, files: list[Path], flags: list[str], extra: str = "") -> Path:
    """root/<16 hex digits> over the files' bytes, the flags, `extra` (a library version) and the CPU."""
    key = hashlib.sha256(b"".join(path.read_bytes() for path in files) + " ".join(flags).encode()
                         + extra.encode() + cpu_description().encode())
    return root / key.hexdigest()[:16]


@contextlib.contextmanager
def build_lock(folder: Path):
    """Holds folder/build.lock: processes on one machine (training ranks, test workers) build once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prune_stale(root: Path, keep: Path) -> None:
    """Removes the builds of earlier sources, flags or libraries under root."""
    for stale in root.iterdir():
        if stale != keep and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def captured_stderr(into: list[str]):
    """File descriptor 2 (this process's and its children's: Paddle's build runs setup.py in a Python that
    imports Paddle and prints its warnings) goes to a temporary file; its text is appended to `into` at the
    end, for an error message to quote. Where fd 2 is closed, or no temporary file can be made, nothing is
    captured and the work runs all the same."""
    try:
        held = tempfile.TemporaryFile()
    except OSError:
        yield
        return
    with held:
        try:
            saved = os.dup(2)
        except OSError:  # stderr closed (2>&-)
            yield
            return
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            into.append(held.read().decode("utf-8", errors="replace"))

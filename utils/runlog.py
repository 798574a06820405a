"""Where training reports go: stdout, a log file in the model folder, and VisualDL (rank 0 only)."""
from __future__ import annotations

import sys
import time
from pathlib import Path


class RunLog:
    def __init__(self, log_file: Path | None, visualdl_dir: Path | None, enabled: bool = True):
        self.enabled = enabled
        self.file = None
        self.writer = None
        if not enabled:
            return
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(log_file, "a", encoding="utf-8")
        if visualdl_dir is not None:
            from visualdl import LogWriter

            visualdl_dir.mkdir(parents=True, exist_ok=True)
            # VisualDL reads only the newest records file of a run folder: a resumed run
            # appends to it instead of starting a new one, so the curves stay whole.
            existing = sorted(visualdl_dir.glob("vdlrecords.*.log"), key=lambda p: p.stat().st_mtime)
            self.writer = LogWriter(logdir=str(visualdl_dir), file_name=existing[-1].name if existing else "")

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag=tag, value=float(value), step=int(step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file:
            self.file.close()


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)

"""Where training reports go: stdout, a log file in the model folder, and VisualDL (rank 0 only)."""
from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

_LENGTH = struct.Struct("<Q")  # VisualDL records file: each record is a uint64 length, then a Record proto


class RunLog:
    def __init__(self, log_file: Path | None, visualdl_dir: Path | None, enabled: bool = True):
        self.enabled = enabled
        self.file = None
        self.writer = None
        self.visualdl_dir = visualdl_dir
        if not enabled:
            return
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(log_file, "a", encoding="utf-8")

    def start_curves(self, train_step: int, finished_epochs: int) -> int:
        """Open the VisualDL records of this run, continuing its curves from the checkpoint it starts at.

        VisualDL reads only the newest records file of a run folder, so a resumed run appends
        to it. Points the previous run logged after its checkpoint (a kill between saves) would
        appear twice: those (Train/* past `train_step`, Test/* past `finished_epochs`) and a
        record torn by the kill are dropped first. A fresh run (0, 0) starts empty curves.
        Returns the number of points dropped.
        """
        if not self.enabled or self.visualdl_dir is None:
            return 0
        from visualdl import LogWriter

        self.visualdl_dir.mkdir(parents=True, exist_ok=True)
        existing = newest_records(self.visualdl_dir)
        dropped = rewind_records(existing, train_step, finished_epochs) if existing else 0
        self.writer = LogWriter(logdir=str(self.visualdl_dir), file_name=existing.name if existing else "")
        return dropped

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


def newest_records(run_dir: Path) -> Path | None:
    """The records file VisualDL shows for a run folder: its newest vdlrecords.*.log."""
    files = sorted(Path(run_dir).glob("vdlrecords.*.log"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def _records(data: bytes):
    """Each Record of a records file; a last one torn by a kill (length or body cut short) is None."""
    from visualdl.proto import record_pb2

    offset = 0
    while offset < len(data):
        header_end = offset + _LENGTH.size
        end = header_end + _LENGTH.unpack_from(data, offset)[0] if header_end <= len(data) else header_end
        if end > len(data):
            yield None
            return
        record = record_pb2.Record()
        record.ParseFromString(data[header_end:end])
        offset = end
        yield record


def rewind_records(path: Path, train_step: int, finished_epochs: int) -> int:
    """Rewrite a VisualDL records file without the points past a checkpoint; returns how many went."""
    kept, dropped = [], 0
    for record in _records(path.read_bytes()):
        if record is None:
            dropped += 1
            break
        values = [v for v in record.values
                  if v.id <= (finished_epochs if v.tag.startswith("Test/") else train_step)]
        dropped += len(record.values) - len(values)
        if values:
            del record.values[:]
            record.values.extend(values)
            kept.append(record.SerializeToString())
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(_LENGTH.pack(len(body)) + body for body in kept))
        tmp.replace(path)
    return dropped


def read_points(run_dir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar VisualDL shows for a run folder, in file order."""
    path = newest_records(run_dir)
    records = _records(path.read_bytes()) if path else []
    return [(value.tag, value.id) for record in records if record is not None
            for value in record.values if value.tag != "meta_data_tag"]


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)

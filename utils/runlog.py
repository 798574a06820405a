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
        existing = sorted(self.visualdl_dir.glob("vdlrecords.*.log"), key=lambda p: p.stat().st_mtime)
        dropped = 0
        if existing:
            dropped = rewind_records(existing[-1], train_step, finished_epochs)
        self.writer = LogWriter(logdir=str(self.visualdl_dir), file_name=existing[-1].name if existing else "")
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


def rewind_records(path: Path, train_step: int, finished_epochs: int) -> int:
    """Rewrite a VisualDL records file without the points past a checkpoint; returns how many went."""
    from visualdl.proto import record_pb2

    data, kept, dropped, offset = path.read_bytes(), [], 0, 0
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        body = data[offset + _LENGTH.size: offset + _LENGTH.size + length]
        if len(body) < length:  # torn by a kill mid-write
            dropped += 1
            break
        offset += _LENGTH.size + length
        record = record_pb2.Record()
        record.ParseFromString(body)
        values = [v for v in record.values
                  if v.id <= (finished_epochs if v.tag.startswith("Test/") else train_step)]
        dropped += len(record.values) - len(values)
        if len(values) == len(record.values):
            kept.append(body)
        elif values:
            del record.values[:]
            record.values.extend(values)
            kept.append(record.SerializeToString())
    if dropped == 0 and offset == len(data):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(_LENGTH.pack(len(body)) + body for body in kept))
    tmp.replace(path)
    return dropped


def read_points(run_dir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in a run folder's newest records file, in file order."""
    from visualdl.proto import record_pb2

    files = sorted(Path(run_dir).glob("vdlrecords.*.log"), key=lambda p: p.stat().st_mtime)
    data, offset, points = (files[-1].read_bytes() if files else b""), 0, []
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        record = record_pb2.Record()
        record.ParseFromString(data[offset + _LENGTH.size: offset + _LENGTH.size + length])
        points += [(value.tag, value.id) for value in record.values if value.tag != "meta_data_tag"]
        offset += _LENGTH.size + length
    return points


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)

"""Manifests: JSON lines {"audio_filepath", "duration", "text"} (the MASR/PPASR/NeMo keys)."""
from __future__ import annotations

import json
import os
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np


@dataclass(slots=True)  # no per-instance __dict__ (training sets are held as an UtteranceTable)
class Utterance:
    audio_filepath: str
    duration: float
    text: str


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names file and line."""


def resolve_audio_path(audio_filepath: str, data_dir: Optional[str]) -> str:
    """Relative paths resolve against data_dir when given, else the working directory."""
    if data_dir and not os.path.isabs(audio_filepath):
        return os.path.join(data_dir, audio_filepath)
    return audio_filepath


def _manifest_lines(path: str | Path) -> Iterator[tuple[int, str, float, str]]:
    """(line number, audio_filepath as written, duration, text) of each non-empty line."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {path} does not exist; run python create_data.py first") from None
    with handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                yield line_no, str(item["audio_filepath"]), float(item["duration"]), str(item["text"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ManifestError(f"{path}:{line_no}: bad manifest line ({err}); each line must be JSON "
                                    f"with audio_filepath, duration and text") from None


def read_manifest(path: str | Path, data_dir: Optional[str] = None,
                  min_duration: float = 0.0, max_duration: float = float("inf")) -> list[Utterance]:
    """Utterances of a manifest whose duration is within [min_duration, max_duration]."""
    return [Utterance(resolve_audio_path(audio, data_dir), duration, text)
            for _, audio, duration, text in _manifest_lines(path) if min_duration <= duration <= max_duration]


def _span(ends: array, index: int) -> tuple[int, int]:
    """(start, end) byte offsets of string `index` in a column of end offsets; negative indices
    count from the end, and one past either end is an IndexError."""
    index = range(len(ends))[index]
    return (ends[index - 1] if index > 0 else 0), ends[index]


class StringColumn:
    """Strings stored as one UTF-8 buffer and end offsets: about their encoded size in memory,
    where a Python str costs 49 bytes or more besides its characters."""

    def __init__(self):
        self._buffer, self._ends = bytearray(), array("q")

    def append(self, text: str) -> None:
        self._buffer += text.encode("utf-8")
        self._ends.append(len(self._buffer))

    def __getitem__(self, index: int) -> str:
        start, end = _span(self._ends, index)
        return self._buffer[start:end].decode("utf-8")

    def nbytes(self) -> int:
        return len(self._buffer) + self._ends.itemsize * len(self._ends)


class SpilledStringColumn:
    """Strings kept in an unnamed temporary file in `directory` (default TMPDIR), only their end
    offsets (8 bytes each) in memory: for create_data, which must hold every kept line's path and
    text until it writes the sorted manifests. Reads (os.pread, a microsecond or two) come from
    the page cache, which the kernel can write out and drop, unlike a process's own memory; a
    crash leaves no file behind (it has no name). On a tmpfs the strings would be in RAM again."""

    def __init__(self, directory: str | None = None):
        self.directory = directory or tempfile.gettempdir()
        self._file = tempfile.TemporaryFile(prefix="strings_", dir=self.directory)  # buffered binary writer
        self._ends, self._size, self._flushed = array("q"), 0, 0

    def append(self, text: str) -> None:
        data = text.encode("utf-8")
        self._file.write(data)
        self._size += len(data)
        self._ends.append(self._size)

    def __getitem__(self, index: int) -> str:
        start, end = _span(self._ends, index)
        if end > self._flushed:
            self._file.flush()
            self._flushed = self._size
        data = os.pread(self._file.fileno(), end - start, start)
        if len(data) != end - start:
            raise OSError(f"a string column's temporary file in {self.directory}: read {len(data)} of "
                          f"{end - start} bytes at {start}")
        return data.decode("utf-8")

    def __len__(self) -> int:
        return len(self._ends)

    def nbytes(self) -> int:
        """Memory held (the strings themselves are on disk)."""
        return self._ends.itemsize * len(self._ends)

    def close(self) -> None:
        self._file.close()


class UtteranceTable:
    """A manifest's utterances as columns (audio paths, durations, texts), for training sets of
    any size: 10.4 MB for a 13.3 MB 100k-line manifest, where a list of Utterance objects took
    about 26 MB. table[i] builds the Utterance; relative paths resolve against data_dir then."""

    def __init__(self, data_dir: Optional[str] = None):
        self.data_dir = data_dir
        self._paths, self._texts, self._durations = StringColumn(), StringColumn(), array("d")

    def append(self, audio_filepath: str, duration: float, text: str) -> None:
        self._paths.append(audio_filepath)
        self._durations.append(duration)
        self._texts.append(text)

    def __len__(self) -> int:
        return len(self._durations)

    def __getitem__(self, index: int) -> Utterance:
        if not -len(self) <= index < len(self):
            raise IndexError(f"utterance {index} of {len(self)}")
        index %= len(self)
        return Utterance(resolve_audio_path(self._paths[index], self.data_dir), self._durations[index],
                         self._texts[index])

    def __iter__(self) -> Iterator[Utterance]:
        return (self[i] for i in range(len(self)))

    @property
    def durations(self) -> np.ndarray:
        """[N] float64, a view (no copy)."""
        return np.frombuffer(self._durations, dtype=np.float64)

    def nbytes(self) -> int:
        return self._paths.nbytes() + self._texts.nbytes() + self._durations.itemsize * len(self)


def read_manifest_table(path: str | Path, data_dir: Optional[str] = None, min_duration: float = 0.0,
                        max_duration: float = float("inf")) -> UtteranceTable:
    """read_manifest's utterances, as an UtteranceTable."""
    table = UtteranceTable(data_dir)
    for _, audio, duration, text in _manifest_lines(path):
        if min_duration <= duration <= max_duration:
            table.append(audio, duration, text)
    return table


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> int:
    """Write JSON lines atomically (temporary file, then rename); returns the line count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for utt in utterances:
                record = {"audio_filepath": utt.audio_filepath, "duration": round(utt.duration, 4), "text": utt.text}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # left only by an error (a full disk)
    return count

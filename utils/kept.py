"""create_data's kept lines as columns, so that its memory grows less than the manifest's size.

A list of one object per line (with its path, text and raw line as Python strings) cost about
500 bytes a line: 70 MB more at 100k lines than at 1k, against a 12 MB manifest. Here a line
costs about 40 bytes of numbers; its path and text wait in unnamed temporary files beside the
manifests (utils/manifest.py's SpilledStringColumn) until the manifests are written. The raw
input line is not held: the few lines that fail after the header probe (conversion, decoding)
are looked up again in their list file when skipped.txt is written (`KeptTable.write_drops`).
"""
from __future__ import annotations

import os
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from utils.annotations import SkipLog, parse_lines
from utils.manifest import SpilledStringColumn


class KeptTable:
    """Rows of (source, line, audio path, normalized text, duration, rate, channels, test-file flag).

    Rows are never removed: `drop` marks one (with its reason, for skipped.txt) and `alive`
    lists the others. A row converted to 16 kHz mono reads from `converted_path(path)`.
    """

    def __init__(self, spill_dir: str | None = None):
        """spill_dir: where the paths and texts wait (default TMPDIR); created if missing."""
        if spill_dir is not None:
            os.makedirs(spill_dir, exist_ok=True)
        self.sources: list[str] = []
        self._source_ids: dict[str, int] = {}
        self._source = array("i")
        self._line_no = array("i")  # up to 2^31 lines per list
        self._paths, self._texts = SpilledStringColumn(spill_dir), SpilledStringColumn(spill_dir)
        self.durations = array("d")
        self.sample_rates = array("i")
        self.channels = array("h")
        self._is_test = array("b")
        self.converted = array("b")
        self.dropped = array("b")
        self.drop_reasons: list[tuple[int, str]] = []
        self.converted_path: Callable[[str], str] = lambda path: path

    def append(self, source: str, line_no: int, path: str, text: str, duration: float, sample_rate: int,
               channels: int, is_test_file: bool = False) -> None:
        source_id = self._source_ids.setdefault(source, len(self.sources))
        if source_id == len(self.sources):
            self.sources.append(source)
        self._source.append(source_id)
        self._line_no.append(line_no)
        self._paths.append(path)
        self._texts.append(text)
        self.durations.append(duration)
        self.sample_rates.append(sample_rate)
        self.channels.append(channels)
        self._is_test.append(is_test_file)
        self.converted.append(False)
        self.dropped.append(False)

    def __len__(self) -> int:
        return len(self.durations)

    def duration_array(self) -> np.ndarray:
        """[N] float64 seconds, a view of the column (no copy; the table cannot grow while it lives)."""
        return np.frombuffer(self.durations, dtype=np.float64)

    def rows(self) -> np.ndarray:
        """Every row index, int32 while they fit (half the memory of int64 for 100k-line lists)."""
        return np.arange(len(self), dtype=np.int32 if len(self) < 2 ** 31 else np.int64)

    def input_path(self, row: int) -> str:
        """The audio path as read from the list (before any conversion)."""
        return self._paths[row]

    def path(self, row: int) -> str:
        path = self._paths[row]
        return self.converted_path(path) if self.converted[row] else path

    def text(self, row: int) -> str:
        return self._texts[row]

    def where(self, row: int) -> str:
        """'list file:line' of a row."""
        return f"{self.sources[self._source[row]]}:{self._line_no[row]}"

    def is_test_file(self, row: int) -> bool:
        return bool(self._is_test[row])

    def drop(self, row: int, reason: str) -> None:
        self.dropped[row] = True
        self.drop_reasons.append((row, reason))

    def alive(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The rows (of `rows`, default all) not dropped, as indices."""
        dropped = np.frombuffer(self.dropped, dtype=np.int8).astype(bool)
        rows = self.rows() if rows is None else rows
        return rows[~dropped[rows]]

    def write_drops(self, skips: SkipLog, raw_of: Callable[[str, list[int]], dict[int, str]]) -> None:
        """The dropped rows into skipped.txt, their raw lines looked up once per source file."""
        by_source: dict[int, list[int]] = defaultdict(list)
        for row, _ in self.drop_reasons:
            by_source[self._source[row]].append(self._line_no[row])
        raws = {source_id: raw_of(self.sources[source_id], line_nos) for source_id, line_nos in by_source.items()}
        for row, reason in self.drop_reasons:
            source_id = self._source[row]
            raw = raws[source_id].get(self._line_no[row], self._paths[row])
            skips.add(self.sources[source_id], self._line_no[row], reason, raw)
        self.drop_reasons = []


def raw_lines(source: str, line_nos: Iterable[int]) -> dict[int, str]:
    """{line number: raw line} of an input list file; {} for a folder (noise rows use their path)."""
    wanted = set(line_nos)
    if not wanted or not os.path.isfile(source):
        return {}
    found = {}
    for line_no, raw in parse_lines(Path(source)):
        if line_no in wanted:
            found[line_no] = raw
    return found


def rows_in_order(rows: np.ndarray, keys: np.ndarray) -> Iterator[int]:
    """`rows` sorted by keys[rows], ties in row order."""
    for position in np.argsort(keys[rows], kind="stable"):
        yield int(rows[position])

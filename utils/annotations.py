"""Readers for the transcript lists create_data.py accepts, one line at a time.

- MASR annotation lists (`*.txt`): `path<TAB>text`; the line splits at the FIRST tab and
  any further tabs inside the text count as spaces.
- NeMo / PPASR manifests (`*.json`, `*.jsonl`): one JSON object per line with
  `audio_filepath` and `text` (`duration` is read again from the audio header).
- Mozilla DeepSpeech CSV (`*.csv`): `wav_filename,wav_filesize,transcript` with a header
  line (without one, the columns are taken in that order).

Every line becomes either a `Candidate` (text already normalized) or a `Skip` that says
why; nothing raises for one bad line, and `SkipLog` writes the skips to skipped.txt. A
file whose stem is `test` (`test.txt`) holds the test set.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

from utils.text import TextError, normalize_text

MASR_SUFFIXES = (".txt",)  # an explicitly named file with any other suffix is read as MASR too
JSON_SUFFIXES = (".json", ".jsonl")
CSV_SUFFIXES = (".csv",)
INPUT_SUFFIXES = MASR_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES  # what a folder is scanned for
TEST_FILE_STEM = "test"
CSV_PATH_COLUMN = "wav_filename"
CSV_TEXT_COLUMN = "transcript"
CSV_DEFAULT_COLUMNS = (0, 2)  # wav_filename, transcript when the header is missing
UTF8_BOM = "\ufeff"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SKIPPED_NAME = "skipped.txt"
SKIPPED_HEADER = "source\tline\treason\traw"
# skipped.txt's columns written with control characters (NUL from a UTF-16 list, ESC, ...) and line
# separators escaped, so the file stays one row a line, readable as text
_ESCAPED_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPED_CONTROLS.update({ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r",
                          0x2028: "\\u2028", 0x2029: "\\u2029"})


class InputError(ValueError):
    """The annotation path itself is unusable (missing, or a folder with no lists)."""


class LineError(ValueError):
    """One line that cannot be used; the message is the reason written to skipped.txt."""


@dataclass(slots=True)
class Candidate:
    source: str  # input file
    line_no: int
    audio_path: str  # as written in the input
    text: str  # normalized
    raw: str  # the line as read, for skipped.txt
    is_test_file: bool


@dataclass(slots=True)
class Skip:
    source: str
    line_no: int
    reason: str
    raw: str


Record = Union[Candidate, Skip]


class SkipLog:
    """skipped.txt as TSV (source, line, reason, raw line with tabs written \\t, NUL \\x00 and so on).

    Written under a temporary name; it replaces the last run's list when the run finishes (`commit`, or
    leaving the `with` block without an error) or ends in one of `complete_on` (a verdict such as "no
    usable training utterance", which the list explains). Any other error, or Ctrl-C, leaves the last
    run's list as it was: a partial list would no longer describe the outputs beside it."""

    def __init__(self, path: Path, complete_on: tuple[type[BaseException], ...] = ()):
        self.path = path
        self.count = 0
        self._complete_on = complete_on
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._handle = open(self._tmp, "w", encoding="utf-8")
        self._handle.write(SKIPPED_HEADER + "\n")

    def add(self, source: str, line_no: int, reason: str, raw: str) -> None:
        reason = " ".join(reason.split()).translate(_ESCAPED_CONTROLS)
        raw = raw.translate(_ESCAPED_CONTROLS)
        self._handle.write(f"{source}\t{line_no}\t{reason}\t{raw}\n")
        self.count += 1

    def commit(self) -> None:
        """The list takes its name, replacing the last run's (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self._handle.close()
            self._tmp.replace(self.path)

    def discard(self) -> None:
        """The temporary list is removed; the last run's stays (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self._handle.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "SkipLog":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None or issubclass(exc_type, self._complete_on):
            self.commit()
        else:
            self.discard()


def find_inputs(annotation_path: str) -> list[Path]:
    """Input files from a file, a folder (its *.txt, *.json, *.jsonl, *.csv) or a comma-separated list."""
    files: list[Path] = []
    parts = [annotation_path] if Path(annotation_path).exists() else annotation_path.split(",")
    for part in (p.strip() for p in parts):
        if not part:
            continue
        path = Path(part)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise InputError(f"annotation folder {path} holds no {', '.join(INPUT_SUFFIXES)} files; "
                                 f"put MASR lists (path<TAB>text) there or pass --annotation_path=FILE")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"annotation path {path} does not exist; pass --annotation_path=FOLDER_OR_FILE "
                             f"(MASR lists, JSON-lines manifests or DeepSpeech CSV)")
    if not files:
        raise InputError("annotation_path is empty; pass --annotation_path=FOLDER_OR_FILE")
    return files


def read_inputs(files: list[Path], to_simplified: bool = False) -> Iterator[Record]:
    """Every line of every input file, as a Candidate or a Skip, in file and line order."""
    for path in files:
        parse = _parser_for(path)
        is_test = path.stem.lower() == TEST_FILE_STEM
        for line_no, line, raw in parse(path):
            if isinstance(line, LineError):
                yield Skip(str(path), line_no, str(line), raw)
                continue
            audio_path, text = line
            try:
                normalized = normalize_text(text, to_simplified)
            except TextError as err:
                yield Skip(str(path), line_no, f"text: {err}", raw)
                continue
            yield Candidate(str(path), line_no, audio_path, normalized, raw, is_test)


ParsedLine = tuple[int, Union[tuple[str, str], LineError], str]


def parse_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, raw line) of an input list, numbered as read_inputs numbers them."""
    for line_no, _, raw in _parser_for(path)(path):
        yield line_no, raw


def _parser_for(path: Path) -> Callable[[Path], Iterator[ParsedLine]]:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return _read_json_lines
    if suffix in CSV_SUFFIXES:
        return _read_csv
    return _read_masr


def decoded_lines(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line_no, text or None when not UTF-8, raw text for reports); blank lines are left out."""
    for line_no, data in enumerate(_file_lines(path), 1):
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError:
            yield line_no, None, data.decode("utf-8", errors="backslashreplace")
            continue
        if line_no == 1:
            line = line.removeprefix(UTF8_BOM)
        if line.strip():
            yield line_no, line, line


def _file_lines(path: Path) -> Iterator[bytes]:
    """The file's lines without their ends; a UTF-16 file with its BOM (Windows Notepad's "Unicode")
    as UTF-8."""
    with open(path, "rb") as handle:
        if handle.read(2) in UTF16_BOMS:
            handle.seek(0)
            try:
                data = handle.read().decode("utf-16").encode("utf-8")
            except UnicodeDecodeError:
                yield b"\xff\xfe not valid UTF-16 text"  # not UTF-8 either: reported as such, with its line
                return
            yield from _split_lines(io.BytesIO(data))
            return
        handle.seek(0)
        yield from _split_lines(handle)


LINE_END_SAMPLE_BYTES = 1 << 16  # how much of a file is read to tell CR-ended lines from LF-ended ones


def _split_lines(handle: BinaryIO) -> Iterator[bytes]:
    """Lines end at LF or CRLF; a lone CR inside a line stays in it (a stray one must not cut a transcript
    short and shift every later line number; normalize_text makes it a space). A file whose first 64 KB
    hold more lone CRs than LFs (old Mac files, with perhaps an LF appended at the end) has its lines end
    at CR as well."""
    sample = handle.read(LINE_END_SAMPLE_BYTES)
    handle.seek(0)
    if sample.count(b"\r") - sample.count(b"\r\n") > sample.count(b"\n"):
        yield from handle.read().splitlines()  # bytes.splitlines: at LF, CRLF and CR only (str's at more)
        return
    for data in handle:
        data = data.removesuffix(b"\n")
        yield data.removesuffix(b"\r")


def unreadable_reason(line: str | None, raw: str) -> str | None:
    """Why a decoded line (None: not UTF-8; raw: as read) cannot be read as text, or None when it can."""
    if "\x00" in raw:  # every other byte of ASCII text in UTF-16, and in no text file otherwise
        return "NUL bytes: UTF-16 without a BOM (or not a text file); re-save the file as UTF-8"
    if line is None:
        return "not UTF-8 text; re-save the file as UTF-8"
    return None


def _unreadable(line: str | None, raw: str) -> LineError | None:
    reason = unreadable_reason(line, raw)
    return None if reason is None else LineError(reason)


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line_no, text) of decoded_lines for a file that is read whole or not at all (an LM's text):
    the first line that is not text stops it, naming file:line and the iconv command that converts it."""
    for line_no, line, raw in decoded_lines(path):
        reason = unreadable_reason(line, raw)
        if reason is not None:
            source = "UTF-16LE" if "\x00" in raw else "GB18030"
            raise ValueError(f"{path}:{line_no}: {reason} (e.g. iconv -f {source} -t UTF-8 {path} > "
                             f"{path.stem}.utf8{path.suffix})")
        yield line_no, line


def _read_masr(path: Path) -> Iterator[ParsedLine]:
    for line_no, line, raw in decoded_lines(path):
        if (error := _unreadable(line, raw)) is not None:
            yield line_no, error, raw
            continue
        audio_path, tab, text = line.partition("\t")
        if not tab:
            yield line_no, LineError("no tab; MASR lines are path<TAB>text"), raw
        elif not audio_path.strip():
            yield line_no, LineError("empty audio path"), raw
        else:
            yield line_no, (audio_path.strip(), text.replace("\t", " ")), raw


def _read_json_lines(path: Path) -> Iterator[ParsedLine]:
    for line_no, line, raw in decoded_lines(path):
        if (error := _unreadable(line, raw)) is not None:
            yield line_no, error, raw
            continue
        yield line_no, _parse_json(line), raw


def _parse_json(line: str) -> tuple[str, str] | LineError:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        return LineError(f"not valid JSON ({err.msg}); expected one object per line")
    if not isinstance(item, dict):
        return LineError("not a JSON object; expected {\"audio_filepath\": ..., \"text\": ...}")
    for key in ("audio_filepath", "text"):
        if key not in item or item[key] is None:
            return LineError(f"missing key '{key}'")
        if not isinstance(item[key], str):  # a list or a number would be stringified into a transcript
            return LineError(f"'{key}' is a JSON {type(item[key]).__name__}, not a string")
    if not item["audio_filepath"].strip():
        return LineError("empty audio path")
    return item["audio_filepath"].strip(), item["text"]


def _read_csv(path: Path) -> Iterator[ParsedLine]:
    columns: tuple[int, int] | None = None
    for line_no, line, raw in decoded_lines(path):
        if (error := _unreadable(line, raw)) is not None:
            yield line_no, error, raw
            continue
        try:
            row = next(csv.reader([line.replace("\r", " ")]))  # a stray CR is no line end here (_split_lines)
        except csv.Error as err:
            yield line_no, LineError(f"not valid CSV ({err})"), raw
            continue
        if columns is None:
            columns = _csv_columns(row)
            if columns is not None:
                continue  # the header line
            columns = CSV_DEFAULT_COLUMNS
        if len(row) <= max(columns):
            yield line_no, LineError(f"{len(row)} CSV fields; expected wav_filename,wav_filesize,transcript"), raw
        elif not row[columns[0]].strip():
            yield line_no, LineError("empty audio path"), raw
        else:
            yield line_no, (row[columns[0]].strip(), row[columns[1]]), raw


def _csv_columns(header: list[str]) -> tuple[int, int] | None:
    """(path column, text column) when `header` is a DeepSpeech header line, else None."""
    names = [name.strip().lower() for name in header]
    if CSV_PATH_COLUMN in names and CSV_TEXT_COLUMN in names:
        return names.index(CSV_PATH_COLUMN), names.index(CSV_TEXT_COLUMN)
    return None

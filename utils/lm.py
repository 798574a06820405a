"""N-gram language models for beam search: Kneser-Ney ARPA models built with kaldingram.

Text comes from manifests (JSON lines, the "text" field), MASR annotation lists
(`path<TAB>text`) or plain text (one sentence per line); the format of each file is
detected from its first non-empty line. Every sentence goes through
utils.text.normalize_text, so the LM spells words the way the acoustic vocabulary does;
sentences it rejects (digits, other scripts) are skipped and counted.

Units: "word" (English: tokens are the space-separated words) or "char" (Chinese: every
character is a token, spaces dropped); "auto" picks char when most characters are CJK.
Default orders: a word 3-gram (a transcript corpus is small; higher orders only memorise
it) and a character 5-gram (about two to three Chinese words of context, the order of
the public zh_giga character LM).

kaldingram writes no `<unk>` unigram, and KenLM then gives an unknown word log10 -100,
which wipes out any sentence that holds one (perplexity, rescoring, other decoders); we add
`<unk>` at DEFAULT_UNK_LOG10_PROB, about the probability of the rarest word of a corpus of
some 100k words. (paddlespeech_ctcdecoders' Scorer does not use it: it gives every n-gram
holding an out-of-vocabulary token its own fixed score, -1000.)
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tqdm import tqdm

from utils.annotations import text_lines
from utils.text import UNK, TextError, check_to_simplified, is_cjk, normalize_text

UNITS = ("word", "char", "auto")
DEFAULT_ORDERS = {"word": 3, "char": 5}
MIN_ORDER, MAX_ORDER = 2, 6
DEFAULT_UNK_LOG10_PROB = -5.0
CJK_MAJORITY = 0.5  # share of CJK characters above which "auto" picks char units
MAX_DISCOUNT = 0.9  # Kneser-Ney D = n1 / (n1 + 2 n2) is 1 when no n-gram occurs twice (small
#                     corpora, high orders): every n-gram of that order then gets probability 0
#                     (log10 -99) and KenLM uses it instead of backing off. Real corpora give 0.5-0.8.
ARPA_FLOAT_FORMAT = "%.7f"
BUILD_BINARY = "build_binary"  # KenLM's ARPA -> binary converter
BINARY_SUFFIX = ".klm"
BINARY_DATA_STRUCTURE = "trie"  # smaller than probing; what the public PaddlePaddle LMs use


@dataclass
class LmBuildResult:
    """What build_lm produced."""
    arpa_path: Path
    binary_path: Optional[Path]
    unit: str
    order: int
    num_sentences: int
    num_excluded: int
    num_skipped: int
    ngram_counts: list[int]
    seconds: float
    no_binary_reason: str = ""  # why binary_path is None

    def summary(self) -> str:
        counts = " ".join(f"{n + 1}-grams={c}" for n, c in enumerate(self.ngram_counts))
        binary = f", binary {self.binary_path}" if self.binary_path else f" ({self.no_binary_reason})"
        return (f"built {self.unit} {self.order}-gram LM {self.arpa_path}{binary}: {self.num_sentences} "
                f"sentences ({self.num_excluded} excluded, {self.num_skipped} skipped), {counts}, "
                f"{self.seconds:.1f} s")


# ----------------------------------------------------------------------------- reading text
def _detect_format(first_line: str) -> str:
    """'manifest' (JSON lines), 'annotation' (path<TAB>text) or 'plain', from the first non-empty line."""
    if first_line.lstrip().startswith("{"):
        return "manifest"
    return "annotation" if "\t" in first_line else "plain"


def _line_text(line: str, fmt: str, path: Path, line_no: int) -> str:
    """The sentence held by one line of a file in format fmt."""
    if fmt == "plain":
        return line
    if fmt == "annotation":
        if "\t" not in line:
            raise ValueError(f"{path}:{line_no}: annotation line without a TAB; expected path<TAB>text")
        return line.split("\t", 1)[1]
    try:
        return str(json.loads(line)["text"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}:{line_no}: bad manifest line ({err}); each line must be JSON "
                         f"with a \"text\" field") from None


def read_sentences(path: str | Path) -> list[str]:
    """The raw sentences of a manifest, annotation list or plain text file (empty lines skipped).

    Lines end in LF or CRLF (at a lone CR too in a file of more lone CRs than LFs: old Mac files);
    UTF-8 (with or without BOM) and UTF-16 with a BOM are read, anything else is refused naming the
    first line that is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    fmt = None
    sentences = []
    for line_no, line in text_lines(path):
        fmt = fmt or _detect_format(line)
        sentences.append(_line_text(line, fmt, path, line_no))
    return sentences


def cjk_share(texts: Iterable[str]) -> float:
    """Share of CJK characters among the non-space characters of texts."""
    total = cjk = 0
    for text in texts:
        chars = "".join(text.split())
        total += len(chars)
        cjk += sum(1 for c in chars if is_cjk(c))
    return cjk / total if total else 0.0


def resolve_unit(unit: str, texts: Sequence[str]) -> str:
    """'word' or 'char'; 'auto' is char when more than CJK_MAJORITY of characters are CJK."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if unit != "auto":
        return unit
    return "char" if cjk_share(texts) > CJK_MAJORITY else "word"


def tokenize(text: str, unit: str) -> str:
    """Space-separated LM tokens: the words, or every non-space character."""
    return " ".join(text.split()) if unit == "word" else " ".join("".join(text.split()))


def normalized_or_none(text: str, to_simplified: bool = False) -> Optional[str]:
    """normalize_text(text), or None when the text cannot be modelled."""
    try:
        return normalize_text(text, to_simplified)
    except TextError:
        return None


def prepare_lines(texts: Sequence[str], unit: str, exclude: set[str],
                  to_simplified: bool = False) -> tuple[list[str], int, int]:
    """Tokenized training lines, minus excluded ones. exclude holds tokenize()d keys.

    Returns (lines, number excluded, number skipped because normalization rejected them).
    """
    lines: list[str] = []
    excluded = skipped = 0
    for text in tqdm(texts, desc="preparing text", unit="sent"):
        norm = normalized_or_none(text, to_simplified)
        if norm is None:
            skipped += 1
            continue
        line = tokenize(norm, unit)
        if line in exclude:
            excluded += 1
        else:
            lines.append(line)
    return lines, excluded, skipped


def exclusion_keys(paths: Sequence[str | Path], unit: str, to_simplified: bool = False) -> set[str]:
    """Tokenized normalized sentences of the files to exclude (e.g. the test manifest)."""
    keys = set()
    for path in paths:
        for text in read_sentences(path):
            norm = normalized_or_none(text, to_simplified)
            if norm is not None:
                keys.add(tokenize(norm, unit))
    return keys


# ----------------------------------------------------------------------------- training
def count_ngrams(lines: Sequence[str], order: int):
    """kaldingram NgramCounts with Kneser-Ney probabilities and back-off weights computed."""
    from kaldingram.train import NgramCounts

    counts = NgramCounts(order)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small acyclic objects: cyclic GC only costs time here
    try:
        for line in tqdm(lines, desc="counting n-grams", unit="sent"):
            counts.add_raw_counts_from_line(line)
    finally:
        if gc_was_enabled:
            gc.enable()
    counts.cal_discounting_constants()
    counts.d = [min(d, MAX_DISCOUNT) for d in counts.d]
    counts.cal_f()
    counts.cal_bow()
    return counts


def _copy_adding_unk(src: Path, dst: Path, unk_log10_prob: Optional[float]) -> list[int]:
    """Copy an ARPA file, adding a `<unk>` unigram (when given); returns n-gram counts per order."""
    counts: list[int] = []
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for line in fin:
            if line.startswith("ngram ") and "=" in line:
                order, number = line[len("ngram "):].strip().split("=")
                count = int(number) + (1 if order == "1" and unk_log10_prob is not None else 0)
                counts.append(count)
                line = f"ngram {order}={count}\n"
            fout.write(line)
            if line.strip() == "\\1-grams:" and unk_log10_prob is not None:
                fout.write(f"{ARPA_FLOAT_FORMAT % unk_log10_prob}\t{UNK}\n")
    return counts


def write_arpa(counts, path: Path, unk_log10_prob: float) -> list[int]:
    """Write the model as ARPA (atomically) with a `<unk>` unigram; returns n-gram counts per order."""
    has_unk = UNK in counts.counts[0][()].word_to_count
    raw = path.with_name(path.name + ".raw.tmp")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(raw, "w", encoding="utf-8") as handle:
            counts.print_as_arpa(fout=handle)
        ngram_counts = _copy_adding_unk(raw, tmp, None if has_unk else unk_log10_prob)
        os.replace(tmp, path)
    finally:
        for leftover in (raw, tmp):
            if leftover.exists():
                leftover.unlink()
    return ngram_counts


def _remove_stale_binary(binary: Path) -> str:
    """Delete a binary left by an earlier build of the same name: it holds the old model, not the new ARPA."""
    if binary.exists():
        binary.unlink()
        return f"; removed {binary}, the binary of an earlier build"
    return ""


def build_binary(arpa_path: Path, make_binary: bool = True) -> tuple[Optional[Path], str]:
    """(KenLM binary next to the ARPA file, or None and why not). A binary there from an earlier build
    is replaced, or deleted when no new one is made, so a .klm never disagrees with its .arpa."""
    binary = arpa_path.with_suffix(BINARY_SUFFIX)
    exe = shutil.which(BUILD_BINARY)
    if not make_binary or exe is None:
        reason = "no binary asked for" if not make_binary else f"no {BUILD_BINARY} on PATH: no binary written"
        return None, reason + _remove_stale_binary(binary)
    tmp = binary.with_name(binary.name + ".tmp")
    proc = subprocess.run([exe, BINARY_DATA_STRUCTURE, str(arpa_path), str(tmp)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        removed = _remove_stale_binary(binary)
        raise RuntimeError(f"{exe} failed on {arpa_path} (exit {proc.returncode}); the ARPA model is "
                           f"usable as it is{removed}. {BUILD_BINARY} said:\n{proc.stderr[-2000:]}")
    os.replace(tmp, binary)
    return binary, ""


def build_lm(text_paths: Sequence[str | Path], output_path: str | Path, order: Optional[int] = None,
             unit: str = "auto", exclude_paths: Sequence[str | Path] = (),
             unk_log10_prob: float = DEFAULT_UNK_LOG10_PROB, make_binary: bool = True,
             to_simplified: bool = False) -> LmBuildResult:
    """Train a Kneser-Ney n-gram LM on the sentences of text_paths and write it as ARPA.

    order None picks DEFAULT_ORDERS[unit]. Sentences found in exclude_paths (after the same
    normalization) are left out, so test sentences never leak into the LM. to_simplified converts
    traditional Chinese to simplified, as create_data's to_simplified does for the transcripts.
    """
    start = time.perf_counter()
    if to_simplified:
        check_to_simplified()  # a TextError (a ValueError) saying what to install, before any work
    texts = [s for path in text_paths for s in read_sentences(path)]
    sample = [t for t in (normalized_or_none(x, to_simplified) for x in texts[:10000]) if t]
    unit = resolve_unit(unit, sample)
    if unit == "char" and cjk_share(sample) <= CJK_MAJORITY and 2 * sum(" " in t for t in sample) > len(sample):
        raise ValueError(f"--unit char on text of space-separated words ({', '.join(map(str, text_paths))}): "
                         f"beam search scores each space as a word a character LM does not know, and drops "
                         f"every space. Use --unit word (or auto)")
    order = DEFAULT_ORDERS[unit] if order is None else order
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise ValueError(f"order must be between {MIN_ORDER} and {MAX_ORDER}, got {order}")
    lines, excluded, skipped = prepare_lines(texts, unit, exclusion_keys(exclude_paths, unit, to_simplified),
                                             to_simplified)
    if not lines:
        raise ValueError(f"no sentences left to train on from {', '.join(map(str, text_paths))} "
                         f"({excluded} excluded, {skipped} skipped by normalization)")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    ngram_counts = write_arpa(count_ngrams(lines, order), output_path, unk_log10_prob)
    binary, no_binary_reason = build_binary(output_path, make_binary)
    return LmBuildResult(output_path, binary, unit, order, len(lines), excluded, skipped,
                         ngram_counts, time.perf_counter() - start, no_binary_reason)

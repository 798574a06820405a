"""Character and word error rates (Levenshtein distance from rapidfuzz, a C implementation).

CER is computed on the text with all whitespace removed (the PPASR convention: spaces are
not characters to recognise, and Chinese transcripts differ in how they space words);
WER on whitespace-split words. Neither folds case nor strips punctuation: compare
normalized text (utils.text.normalize_text).

An empty reference has length 0: its rate is the number of edits (0 for an empty
hypothesis, else the number of inserted units), so it never divides by zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rapidfuzz.distance import Levenshtein

METRICS = ("cer", "wer")


@dataclass(frozen=True)
class UtteranceErrors:
    """Edit count and reference length of one utterance under one metric."""
    edits: int
    ref_len: int

    @property
    def rate(self) -> float:
        return self.edits / max(self.ref_len, 1)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")


def char_errors(ref: str, hyp: str) -> UtteranceErrors:
    """Character edits between ref and hyp with whitespace removed."""
    ref_chars = "".join(ref.split())
    hyp_chars = "".join(hyp.split())
    return UtteranceErrors(Levenshtein.distance(ref_chars, hyp_chars), len(ref_chars))


def word_errors(ref: str, hyp: str) -> UtteranceErrors:
    """Word edits between whitespace-split ref and hyp."""
    ref_words = ref.split()
    return UtteranceErrors(Levenshtein.distance(ref_words, hyp.split()), len(ref_words))


def utterance_errors(ref: str, hyp: str, metric: str) -> UtteranceErrors:
    """char_errors for metric 'cer', word_errors for 'wer'."""
    _check_metric(metric)
    return char_errors(ref, hyp) if metric == "cer" else word_errors(ref, hyp)


def cer(ref: str, hyp: str) -> float:
    """Character error rate of one utterance (whitespace ignored)."""
    return char_errors(ref, hyp).rate


def wer(ref: str, hyp: str) -> float:
    """Word error rate of one utterance."""
    return word_errors(ref, hyp).rate


@dataclass
class ErrorCounter:
    """Accumulates one metric over a corpus.

    corpus_rate = total edits / total reference length (what papers and eval.py report);
    mean_rate = mean of per-utterance rates (PPASR's habit; short utterances weigh more).
    """
    metric: str = "cer"
    total_edits: int = 0
    total_ref_len: int = 0
    rate_sum: float = 0.0
    num_utterances: int = 0
    per_utterance: list[UtteranceErrors] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_metric(self.metric)

    def update(self, ref: str, hyp: str) -> UtteranceErrors:
        """Add one utterance; returns its edits, reference length and rate."""
        errors = utterance_errors(ref, hyp, self.metric)
        self.total_edits += errors.edits
        self.total_ref_len += errors.ref_len
        self.rate_sum += errors.rate
        self.num_utterances += 1
        self.per_utterance.append(errors)
        return errors

    def update_batch(self, refs: list[str], hyps: list[str]) -> list[UtteranceErrors]:
        """Add a batch of (reference, hypothesis) pairs."""
        if len(refs) != len(hyps):
            raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
        return [self.update(ref, hyp) for ref, hyp in zip(refs, hyps)]

    @property
    def corpus_rate(self) -> float:
        return self.total_edits / max(self.total_ref_len, 1)

    @property
    def mean_rate(self) -> float:
        return self.rate_sum / max(self.num_utterances, 1)

    def summary(self) -> str:
        """e.g. 'cer=0.123400 (edits 617 / 5000, mean per utterance 0.130000, 100 utterances)'."""
        return (f"{self.metric}={self.corpus_rate:.6f} (edits {self.total_edits} / {self.total_ref_len}, "
                f"mean per utterance {self.mean_rate:.6f}, {self.num_utterances} utterances)")


def corpus_error_rate(refs: list[str], hyps: list[str], metric: str = "cer") -> float:
    """Total edits / total reference length over paired lists."""
    counter = ErrorCounter(metric)
    counter.update_batch(refs, hyps)
    return counter.corpus_rate

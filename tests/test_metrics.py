"""CER/WER per utterance and over a corpus, checked against pinned values and jiwer."""
from __future__ import annotations

from types import SimpleNamespace

import jiwer
import numpy as np
import pytest

from utils.evaluate import evaluate
from utils.manifest import Utterance
from utils.metrics import ErrorCounter, cer, char_errors, corpus_error_rate, wer, word_errors

PAIRS = [  # (reference, hypothesis)
    ("the cat sat on the mat", "the cat sad on mat"),
    ("a dog ran", "a dog ran"),
    ("hello world", "hallo word"),
    ("今天天气很好", "今天天汽很好啊"),
    ("speech recognition", "speech wreck a nice ion"),
    ("one", ""),
]


def no_space(text: str) -> str:
    return "".join(text.split())


def test_pinned_rates():
    assert cer("abc", "abd") == pytest.approx(1 / 3)
    assert cer("a b c", "abc") == 0.0  # spaces are not characters to recognise
    assert cer("今天天气很好", "今天天汽很好") == pytest.approx(1 / 6)
    assert wer("the cat sat", "the cat sad") == pytest.approx(1 / 3)
    assert wer("the cat sat", "the  cat   sat ") == 0.0
    assert char_errors("kitten", "sitting").edits == 3
    assert word_errors("a b c d", "a x c").edits == 2


def test_per_utterance_rates_equal_jiwer():
    for ref, hyp in PAIRS:
        assert cer(ref, hyp) == pytest.approx(jiwer.cer(no_space(ref), no_space(hyp)))
        assert wer(ref, hyp) == pytest.approx(jiwer.wer(ref, hyp))


def test_corpus_rates_equal_jiwer():
    refs, hyps = [r for r, _ in PAIRS], [h for _, h in PAIRS]
    expected_cer = jiwer.cer([no_space(r) for r in refs], [no_space(h) for h in hyps])
    assert corpus_error_rate(refs, hyps, "cer") == pytest.approx(expected_cer)
    assert corpus_error_rate(refs, hyps, "wer") == pytest.approx(jiwer.wer(refs, hyps))


def test_counter_keeps_corpus_and_mean_rates_apart():
    counter = ErrorCounter("cer")
    first = counter.update("a", "b")  # 1 edit / 1 char
    counter.update("abcd", "abcd")  # 0 edits / 4 chars
    assert (first.edits, first.ref_len, first.rate) == (1, 1, 1.0)
    assert counter.corpus_rate == pytest.approx(1 / 5)
    assert counter.mean_rate == pytest.approx(0.5)
    assert [e.edits for e in counter.per_utterance] == [1, 0]
    assert counter.summary().startswith("cer=0.200000 (edits 1 / 5, mean per utterance 0.500000")


def test_empty_reference_does_not_divide_by_zero():
    assert cer("", "") == 0.0
    assert wer("", "two words") == 2.0
    assert ErrorCounter("wer").corpus_rate == 0.0


def test_bad_metric_and_mismatched_batch_are_errors():
    with pytest.raises(ValueError, match="unknown metric 'ser'"):
        ErrorCounter("ser")
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        ErrorCounter("cer").update_batch(["a", "b"], ["a"])



class _OneBatchLoader(list):
    """What evaluate() reads of a loader: its batches and dataset.utterances."""

    def __init__(self, utterances):
        super().__init__([(None, None, None, None, np.arange(len(utterances)))])
        self.dataset = SimpleNamespace(utterances=utterances)


def test_evaluate_scores_a_hand_written_reference_as_create_data_writes_it():
    """'Hello, World!' in a manifest not made by create_data is scored as 'hello world'."""
    utterances = [Utterance("a.wav", 1.0, "Hello, World!"), Utterance("b.wav", 1.0, "Cafe\u0301")]
    result = evaluate(lambda *batch: (None, None, 0.0), _OneBatchLoader(utterances), "wer",
                      lambda log_probs, out_lens: ["hello world", "cafe"])
    assert result.references == ["hello world", "cafe"] and result.error_rate == 0.0

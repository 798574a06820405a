"""CTC decoders (greedy, timestamps, beam search with a KenLM scorer) and alpha/beta tuning."""
from __future__ import annotations

import gzip
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from utils.decoders import (ARPA_END_SEARCH_BYTES, beam_search_decode, decode, greedy_decode,
                            group_token_times, load_scorer)
from utils.lm import DEFAULT_UNK_LOG10_PROB, build_lm, count_ngrams, write_arpa

VOCAB = ["<blank>", "<unk>", "<space>"] + list("abcdefghijklmnopqrstuvwxyz'")
ID = {tok: i for i, tok in enumerate(VOCAB)}
PEAK = 0.9
FLOOR = 1e-3
LM_SENTENCES = ["the cat sat on the mat", "the cat sat", "a dog sat on the rug",
                "the dog ran to the cat", "a cat ran"]
CHINESE_SENTENCES = ["今天天气很好", "我们去公园玩", "今天我们去上学"]
CHINESE_VOCAB = ["<blank>", "<unk>"] + sorted(set("".join(CHINESE_SENTENCES)))  # 13 characters


def frames(spec: list[dict[str, float]]) -> np.ndarray:
    """Probabilities [T, V]: each frame puts the given mass on tokens, FLOOR elsewhere, normalized."""
    rows = []
    for item in spec:
        row = np.full(len(VOCAB), FLOOR)
        for tok, prob in item.items():
            row[ID[tok]] = prob
        rows.append(row / row.sum())
    return np.array(rows)


def spell(text: str) -> list[dict[str, float]]:
    """Two frames per character: the character, then a blank."""
    spec = []
    for char in text:
        spec += [{"<space>" if char == " " else char: PEAK}, {"<blank>": PEAK}]
    return spec


def from_ids(ids: list[int]) -> np.ndarray:
    """Log-probabilities [T, V] whose argmax is ids."""
    return np.log(frames([{VOCAB[i]: PEAK} for i in ids]))


def cat_sad_probs() -> np.ndarray:
    """'the cat sa' then a frame where d (0.5) beats t (0.4): greedy reads 'the cat sad'."""
    return frames(spell("the cat sa") + [{"d": 0.5, "t": 0.4}, {"<blank>": PEAK}])


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lm")
    (folder / "corpus.txt").write_text("\n".join(LM_SENTENCES) + "\n", encoding="utf-8")
    return str(build_lm([folder / "corpus.txt"], folder / "cats.arpa", order=3, unit="word").arpa_path)


@pytest.fixture(scope="module")
def chinese_char_lm(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("zh_lm")
    (folder / "corpus.txt").write_text("\n".join(CHINESE_SENTENCES) + "\n", encoding="utf-8")
    return str(build_lm([folder / "corpus.txt"], folder / "zh.arpa", order=3, unit="char").arpa_path)


# ----------------------------------------------------------------------------- greedy
def test_greedy_collapses_repeats_and_drops_blanks():
    a, b, c, sp, blank = ID["a"], ID["b"], ID["c"], ID["<space>"], ID["<blank>"]
    ids = [a, a, blank, a, b, b, sp, sp, c, blank]  # a a | a b b _ _ c
    log_probs = from_ids(ids)[None]
    assert greedy_decode(log_probs, np.array([10]), VOCAB) == ["aab c"]


def test_greedy_batch_with_different_lengths_ignores_padding():
    h, i, blank = ID["h"], ID["i"], ID["<blank>"]
    first = from_ids([h, h, blank, i, i, blank])
    second = from_ids([i, blank, h, ID["z"], ID["z"], ID["z"]])  # only 3 valid frames
    log_probs = np.stack([first, second])  # [2, 6, V]
    assert greedy_decode(log_probs, np.array([6, 3]), VOCAB) == ["hi", "ih"]


def test_greedy_strips_and_collapses_spaces_and_drops_unk():
    sp, blank, unk = ID["<space>"], ID["<blank>"], ID["<unk>"]
    ids = [sp, ID["o"], ID["k"], sp, blank, sp, unk, sp, ID["n"], ID["o"], sp]
    assert greedy_decode(from_ids(ids)[None], np.array([len(ids)]), VOCAB) == ["ok no"]


def test_greedy_matches_the_reference_decoder_on_random_posteriors():
    ctcdecoders = pytest.importorskip("paddlespeech_ctcdecoders")
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(4, 50, len(VOCAB))) * 3  # [B, T, V]
    logits[:, :, 0] += 2.0  # blanks frequent, as in a trained model
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    out_lens = np.array([50, 41, 17, 1])
    ours = greedy_decode(np.log(probs), out_lens, VOCAB)
    for b, text in enumerate(ours):
        ref = ctcdecoders.ctc_greedy_decoding(probs[b, : out_lens[b]].tolist(), VOCAB, 0)
        assert text == " ".join(ref.replace("<space>", " ").replace("<unk>", "").split())


def test_greedy_rejects_a_wrong_vocabulary_size():
    with pytest.raises(ValueError, match=r"\[B, T, V=30\]"):
        greedy_decode(np.zeros((1, 5, 7)), np.array([5]), VOCAB)


# ----------------------------------------------------------------------------- timestamps
def test_greedy_times_span_the_frames_of_each_token():
    """The greedy text's times (infer --timestamps, utils/transcribe.text_times) span its argmax runs."""
    from utils.text import Vocabulary
    from utils.transcribe import text_times

    c, a, t, sp, blank = ID["c"], ID["a"], ID["t"], ID["<space>"], ID["<blank>"]
    ids = [blank, c, c, a, blank, t, sp, ID["o"], ID["n"], ID["n"], blank]
    text = greedy_decode(from_ids(ids)[None], np.array([len(ids)]), VOCAB)[0]
    times = text_times(from_ids(ids), text, Vocabulary(VOCAB), frame_shift_s=0.02)
    assert [tok for tok, _, _ in times] == ["c", "a", "t", " ", "o", "n"]
    assert times[0] == ("c", pytest.approx(0.02), pytest.approx(0.06))
    assert times[-1] == ("n", pytest.approx(0.16), pytest.approx(0.20))


def test_group_token_times_merges_words_or_keeps_characters():
    tokens = [("c", 0.0, 0.1), ("a", 0.1, 0.2), ("t", 0.2, 0.3), (" ", 0.3, 0.4), ("o", 0.5, 0.6),
              ("n", 0.6, 0.8)]
    assert group_token_times(tokens) == [("cat", 0.0, 0.3), ("on", 0.5, 0.8)]
    chinese = [("今", 0.0, 0.2), ("天", 0.2, 0.4)]
    assert group_token_times(chinese) == chinese
    assert group_token_times(tokens, unit="char") == [t for t in tokens if t[0] != " "]


# ----------------------------------------------------------------------------- beam search
def test_beam_search_without_lm_agrees_with_greedy():
    probs = cat_sad_probs()
    assert greedy_decode(np.log(probs)[None], np.array([len(probs)]), VOCAB) == ["the cat sad"]
    assert beam_search_decode([probs], VOCAB, beam_size=20, num_processes=1) == ["the cat sad"]


def test_beam_search_with_word_lm_picks_the_lm_consistent_sentence(word_lm):
    scorer = load_scorer(word_lm, alpha=1.0, beta=1.0, vocabulary=VOCAB)
    probs = cat_sad_probs()
    out = beam_search_decode([probs, frames(spell("a dog ran"))], VOCAB, beam_size=20,
                             num_processes=2, scorer=scorer)
    assert out == ["the cat sat", "a dog ran"]


def test_decode_dispatches_by_name(word_lm):
    log_probs = np.log(np.stack([cat_sad_probs(), cat_sad_probs()]))  # [2, T, V]
    out_lens = np.array([log_probs.shape[1], 14])  # second: 'the cat' only
    assert decode("ctc_greedy", log_probs, out_lens, VOCAB) == ["the cat sad", "the cat"]
    scorer = load_scorer(word_lm, 1.0, 1.0, VOCAB)
    assert decode("ctc_beam_search", log_probs, out_lens, VOCAB, beam_size=20, num_processes=1,
                  scorer=scorer) == ["the cat sat", "the cat"]


def test_unknown_decoder_name_is_an_error():
    with pytest.raises(ValueError, match="unknown decoder 'ctc_beam'.*ctc_greedy, ctc_beam_search"):
        decode("ctc_beam", np.zeros((1, 2, len(VOCAB))), np.array([2]), VOCAB)


def test_beam_search_rejects_log_probabilities():
    with pytest.raises(ValueError, match="np.exp"):
        beam_search_decode([np.log(cat_sad_probs())], VOCAB, beam_size=5)
    with pytest.raises(ValueError, match="log-probabilities"):
        decode("ctc_beam_search", cat_sad_probs()[None], np.array([5]), VOCAB)


def test_missing_lm_file_names_the_path_and_the_builder(tmp_path):
    missing = tmp_path / "nope.arpa"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*python tools/build_lm.py"):
        load_scorer(str(missing), 1.0, 1.0, VOCAB)


def test_a_folder_given_as_the_lm_names_the_files_in_it(word_lm, tmp_path):
    with pytest.raises(ValueError, match=r"cats\.arpa\)$"):
        load_scorer(os.path.dirname(word_lm), 1.0, 1.0, VOCAB)
    with pytest.raises(ValueError, match=rf"{tmp_path} is a folder; pass a file in it \(it holds none\): build"):
        load_scorer(str(tmp_path), 1.0, 1.0, VOCAB)


def test_malformed_lm_file_is_refused_before_kenlm_sees_it(tmp_path):
    bad = tmp_path / "page.klm"
    bad.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(ValueError, match="neither an ARPA file"):
        load_scorer(str(bad), 1.0, 1.0, VOCAB)


def test_a_damaged_kenlm_binary_is_refused_before_the_decoder_aborts(tmp_path):
    """The decoder's KenLM throws FormatLoadException uncaught (SIGABRT) on these; the kenlm module
    checks the file first."""
    damaged = tmp_path / "partial.klm"
    damaged.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0" + bytes(200))
    with pytest.raises(ValueError, match=r"partial\.klm is a KenLM binary that does not load \(.*\): a "
                                         r"partial download or one built by another KenLM version"):
        load_scorer(str(damaged), 1.0, 1.0, VOCAB)


def test_truncated_arpa_file_is_refused_before_kenlm_aborts(word_lm, tmp_path):
    text = open(word_lm, "rb").read()
    cut = tmp_path / "cut.arpa"
    cut.write_bytes(text[: len(text) // 2])  # header present, \end\ missing: KenLM would SIGABRT
    with pytest.raises(ValueError, match=r"cut\.arpa is an ARPA file cut off before its \\end\\ line"):
        load_scorer(str(cut), 1.0, 1.0, VOCAB)
    padded = tmp_path / "padded.arpa"  # blank lines after \end\ are fine; only the tail is read
    padded.write_bytes(text + b"\n" * (ARPA_END_SEARCH_BYTES - 100))
    assert load_scorer(str(padded), 1.0, 1.0, VOCAB).get_max_order() == 3


def test_gzipped_arpa_loads_and_decodes_like_the_plain_file(word_lm, tmp_path):
    packed = tmp_path / "cats.arpa.gz"
    packed.write_bytes(gzip.compress(open(word_lm, "rb").read()))
    scorer = load_scorer(str(packed), 1.0, 1.0, VOCAB)
    assert beam_search_decode([cat_sad_probs()], VOCAB, beam_size=20, num_processes=1,
                              scorer=scorer) == ["the cat sat"]


def test_bad_gzip_files_are_refused(word_lm, tmp_path):
    page = tmp_path / "page.arpa.gz"
    page.write_bytes(gzip.compress(b"<html>404 Not Found</html>\n"))
    with pytest.raises(ValueError, match="page.arpa.gz is gzip-compressed but holds no ARPA file"):
        load_scorer(str(page), 1.0, 1.0, VOCAB)
    stub = tmp_path / "stub.arpa.gz"
    stub.write_bytes(gzip.compress(open(word_lm, "rb").read())[:40])  # cut inside the first block
    with pytest.raises(ValueError, match="stub.arpa.gz is gzip-compressed but does not decompress"):
        load_scorer(str(stub), 1.0, 1.0, VOCAB)


@pytest.mark.parametrize("path", [None, ""])
def test_no_lm_path_is_an_error_for_load_scorer(path):
    with pytest.raises(ValueError, match="no language model given: build one"):
        load_scorer(path, 1.0, 1.0, VOCAB)


def test_chinese_character_lm_for_an_english_model_is_refused(chinese_char_lm):
    assert load_scorer(chinese_char_lm, 1.0, 1.0, CHINESE_VOCAB).is_character_based()  # its own model
    with pytest.raises(ValueError, match=r"zh\.arpa is a character LM that knows 0 of the model's 27 "
                                         r"tokens \(unknown: a b c d e f g h i j \.\.\.\): it is for another "
                                         r"language\. Use an LM built from text in the model's language"):
        load_scorer(chinese_char_lm, 1.0, 1.0, VOCAB)


def test_character_lm_for_a_model_of_spaced_words_is_refused(tmp_path):
    """The decoder scores a space as an empty word the LM does not know: 'the cat sat' came out
    'theocathsat'. A Chinese model with a few English words (and <space>) keeps its character LM."""
    lines = ["t h e c a t s a t", "t h e c a t s a d", "a c a t s a t o n t h e m a t"]  # as --unit char writes
    char_lm = tmp_path / "en_char.arpa"
    write_arpa(count_ngrams(lines, 3), char_lm, DEFAULT_UNK_LOG10_PROB)  # build_lm refuses --unit char here
    char_lm = str(char_lm)
    with pytest.raises(ValueError, match=r"en_char\.arpa is a character LM, but the model separates words with "
                                         r"spaces: .*--unit word"):
        load_scorer(char_lm, 1.0, 1.0, VOCAB)
    mixed_vocab = CHINESE_VOCAB + ["<space>", "o", "k"]
    (tmp_path / "zh.txt").write_text("".join(CHINESE_SENTENCES) + "\nok\n", encoding="utf-8")
    zh_lm = str(build_lm([tmp_path / "zh.txt"], tmp_path / "zh.arpa", order=3, unit="char").arpa_path)
    assert load_scorer(zh_lm, 1.0, 1.0, mixed_vocab).is_character_based()


def test_english_word_lm_for_a_chinese_model_is_refused(word_lm):
    with pytest.raises(ValueError, match=r"cats\.arpa is a word LM none of whose words can be spelled with "
                                         r"the model's tokens \(上 今 们 .*another language or letter case"):
        load_scorer(word_lm, 1.0, 1.0, CHINESE_VOCAB)


UPPER_CASE_ARPA = ("\\data\\\nngram 1=4\nngram 2=1\n\n\\1-grams:\n-1.0\t<s>\t0\n-0.5\t</s>\n-0.5\tTHE\t0\n"
                   "-0.5\tCAT\n\n\\2-grams:\n-0.3\tTHE CAT\n\n\\end\\\n")


def test_upper_case_word_lm_for_a_lower_case_model_is_refused(tmp_path):
    arpa = tmp_path / "upper.arpa"
    arpa.write_text(UPPER_CASE_ARPA, encoding="utf-8")
    assert load_scorer(str(arpa), 1.0, 1.0, VOCAB + list("THECA")).get_dict_size() == 2  # a valid LM
    with pytest.raises(ValueError, match="upper.arpa is a word LM none of whose words can be spelled"):
        load_scorer(str(arpa), 1.0, 1.0, VOCAB)


def test_unigram_arpa_is_refused_before_kenlm_aborts(tmp_path):
    arpa = tmp_path / "uni.arpa"
    arpa.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\n-0.5\t</s>\n-0.5\tthe\n\n\\end\\\n")
    with pytest.raises(ValueError, match="uni.arpa is an ARPA file of order 1; KenLM needs at least bigrams"):
        load_scorer(str(arpa), 1.0, 1.0, VOCAB)
    packed = tmp_path / "uni.arpa.gz"
    packed.write_bytes(gzip.compress(arpa.read_bytes()))
    with pytest.raises(ValueError, match="uni.arpa.gz is an ARPA file of order 1"):
        load_scorer(str(packed), 1.0, 1.0, VOCAB)


@pytest.mark.parametrize("params,message", [
    (dict(beam_size=0), "beam_size must be >= 1, got 0; fix --beam_size (config key decode.beam_size)"),
    (dict(beam_size=-1), "beam_size must be >= 1, got -1"),
    (dict(cutoff_top_n=-1), "cutoff_top_n must be >= 1, got -1; fix --cutoff_top_n"),
    (dict(num_processes=0), "num_proc_bsearch must be >= 1, got 0; fix --num_proc_bsearch"),
    (dict(cutoff_prob=0.0), r"cutoff_prob must be in (0, 1] (1: no cutoff), got 0.0"),
])
def test_beam_parameters_the_decoder_crashes_on_are_refused(params, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        beam_search_decode([cat_sad_probs()], VOCAB, **{"beam_size": 5, "num_processes": 1, **params})


def beam_cfg(**changes) -> SimpleNamespace:
    values = dict(lang_model_path=None, alpha=1.0, beta=1.0, beam_size=20, cutoff_prob=1.0, cutoff_top_n=40,
                  num_proc_bsearch=1)
    return SimpleNamespace(**{**values, **changes})


@pytest.mark.parametrize("lm_path", [None, ""])
def test_make_decode_fn_runs_beam_search_without_lm_when_no_path_is_given(lm_path):
    from utils.evaluate import make_decode_fn

    decode_fn = make_decode_fn("ctc_beam_search", beam_cfg(lang_model_path=lm_path), VOCAB)
    log_probs = np.log(cat_sad_probs())[None]
    assert decode_fn(log_probs, np.array([log_probs.shape[1]])) == ["the cat sad"]


def test_make_decode_fn_checks_beam_parameters_before_loading_the_lm(tmp_path):
    from utils.evaluate import make_decode_fn

    with pytest.raises(ValueError, match="beam_size must be >= 1, got 0"):
        make_decode_fn("ctc_beam_search", beam_cfg(beam_size=0, lang_model_path=str(tmp_path / "no.arpa")), VOCAB)
    assert make_decode_fn("ctc_greedy", beam_cfg(beam_size=0), VOCAB)  # greedy has no beam


def test_missing_decoder_package_says_how_to_install(monkeypatch, word_lm):
    monkeypatch.setitem(sys.modules, "paddlespeech_ctcdecoders", None)  # import now fails
    with pytest.raises(ImportError, match="pip install paddlespeech-ctcdecoders"):
        load_scorer(word_lm, 1.0, 1.0, VOCAB)
    with pytest.raises(ImportError, match="Python 3.7-3.10"):
        beam_search_decode([cat_sad_probs()], VOCAB, beam_size=5)


# ----------------------------------------------------------------------------- tuning
def ran_or_sat_probs() -> np.ndarray:
    """'the cat ' then r/s (0.55/0.35), a, n/t (0.55/0.35): acoustics say 'ran', the LM 'sat'."""
    return frames(spell("the cat ") + [{"r": 0.55, "s": 0.35}, {"<blank>": PEAK}, {"a": PEAK},
                                       {"<blank>": PEAK}, {"n": 0.55, "t": 0.35}, {"<blank>": PEAK}])


def test_grid_search_resets_the_scorer_and_draws_the_heat_map(word_lm, tmp_path):
    from utils.tuning import grid_search_alpha_beta, save_heatmap

    probs_list = [ran_or_sat_probs(), frames(spell("a cat ran"))]
    alphas, betas = [0.0, 0.5, 2.0], [0.0, 2.0]
    best_alpha, best_beta, best_error, grid = grid_search_alpha_beta(
        probs_list, ["the cat sat", "a cat ran"], VOCAB, word_lm, alphas, betas, beam_size=20,
        num_processes=1, metric="wer")
    # alpha <= 0.5: 'the cat ran' (1 of 6 words wrong); alpha 2: the LM wins, 'the cat sat'
    np.testing.assert_allclose(grid, [[1 / 6, 1 / 6], [1 / 6, 1 / 6], [0.0, 0.0]])
    assert (best_alpha, best_beta, best_error) == (2.0, 0.0, 0.0)
    png = tmp_path / "grid.png"
    save_heatmap(grid, alphas, betas, str(png), metric="wer")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

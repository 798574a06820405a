"""CTC decoding: greedy (numpy), greedy with timestamps, and beam search with a KenLM scorer.

Vocabulary: a list of tokens where index = id; id 0 is `<blank>`, id 1 is `<unk>`, a space
is the token `<space>` (see utils/text.py). Output text: `<space>` becomes " ", `<blank>` and
`<unk>` are dropped (an unknown token has no spelling; a metric then counts it as a
deletion, the same as utils.text.tokens_to_text does), the text is stripped and runs of
spaces collapse to one.

Beam search uses paddlespeech_ctcdecoders (Linux x86_64, Python <= 3.10). It is imported
only when a beam search or a scorer is asked for; greedy decoding needs numpy alone.
With a word-level LM the decoder can only emit words the LM knows (the scorer builds a
spelling dictionary from the LM's unigrams); with a character-level LM (Chinese) it can
emit any token and scores every character.
"""
from __future__ import annotations

import gzip
import os
import re
import sys
from typing import Any, Optional, Sequence

import numpy as np

from utils.text import BLANK, SPACE, UNK, is_cjk

DECODER_NAMES = ("ctc_greedy", "ctc_beam_search")
DEFAULT_BEAM_SIZE = 100
DEFAULT_CUTOFF_PROB = 1.0
DEFAULT_CUTOFF_TOP_N = 40
DEFAULT_NUM_PROCESSES = 2
LOG_PROB_TOLERANCE = 1e-4  # log-probabilities are <= 0; above this they are probabilities
KENLM_BINARY_MAGIC = b"mmap lm "  # start of every KenLM binary (probing and trie)
GZIP_MAGIC = b"\x1f\x8b"  # KenLM reads gzipped ARPA files (not gzipped binaries)
ARPA_HEADER = "\\data\\"
ARPA_HEADER_SEARCH_BYTES = 4096
ARPA_ORDER_LINE = re.compile(rb"^ngram (\d+)=", re.MULTILINE)  # the header's "ngram 2=38"
ARPA_END = "\\end\\"  # last line of a complete ARPA file; KenLM aborts the process without it
ARPA_END_SEARCH_BYTES = 4096  # the tail read for it: the line and any blank lines after it
KENLM_OOV_SCORE = -1000.0  # what Scorer.get_log_cond_prob returns for a token the LM lacks
MIN_KNOWN_TOKEN_SHARE = 0.1  # a character LM must know this share of the model's tokens

TokenTime = tuple[str, float, float]  # (text, start_s, end_s)


# ----------------------------------------------------------------------------- greedy
def _display_pieces(vocabulary: Sequence[str]) -> np.ndarray:
    """Token id -> text piece: `<space>` -> " ", `<blank>`/`<unk>` -> "", others as is. [V] object."""
    pieces = [" " if tok == SPACE else "" if tok in (BLANK, UNK) else tok for tok in vocabulary]
    return np.array(pieces, dtype=object)


def _clean_text(text: str) -> str:
    """Strip and collapse runs of spaces to one."""
    return " ".join(text.split())


def _greedy_keep_mask(ids: np.ndarray, out_lens: np.ndarray, blank_id: int) -> np.ndarray:
    """Frames that start a new non-blank token inside the valid length. ids [B, T] -> [B, T] bool."""
    prev = np.concatenate([np.full_like(ids[:, :1], -1), ids[:, :-1]], axis=1)
    valid = np.arange(ids.shape[1])[None, :] < out_lens[:, None]
    return valid & (ids != prev) & (ids != blank_id)


def greedy_decode(log_probs: np.ndarray, out_lens: np.ndarray, vocabulary: Sequence[str],
                  blank_id: int = 0) -> list[str]:
    """Best-path CTC decoding of a batch: argmax per frame, collapse repeats, drop blanks.

    log_probs [B, T, V] (log-probabilities or probabilities: only the argmax is used),
    out_lens [B] valid frames per utterance. Returns B strings.
    """
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 3 or log_probs.shape[2] != len(vocabulary):
        raise ValueError(f"log_probs must be [B, T, V={len(vocabulary)}], got {log_probs.shape}")
    out_lens = np.asarray(out_lens).reshape(-1)
    ids = log_probs.argmax(axis=2)  # [B, T]
    keep = _greedy_keep_mask(ids, out_lens, blank_id)  # [B, T]
    pieces = _display_pieces(vocabulary)
    return [_clean_text("".join(pieces[row[mask]])) for row, mask in zip(ids, keep)]


def _words_from_tokens(token_times: Sequence[TokenTime]) -> list[TokenTime]:
    """Merge characters between spaces into words: (word, first start, last end)."""
    words: list[TokenTime] = []
    current: list[TokenTime] = []
    for item in list(token_times) + [(" ", 0.0, 0.0)]:
        if item[0] == " ":
            if current:
                words.append(("".join(t for t, _, _ in current), current[0][1], current[-1][2]))
            current = []
        else:
            current.append(item)
    return words


def group_token_times(token_times: Sequence[TokenTime], unit: str = "auto") -> list[TokenTime]:
    """Word times (English, space-separated) or character times (Chinese) from token times.

    unit: "word", "char" or "auto" (char when most non-space tokens are CJK characters).
    """
    if unit not in ("word", "char", "auto"):
        raise ValueError(f"unit must be word, char or auto, got {unit!r}")
    chars = [t for t in token_times if t[0] != " "]
    if unit == "auto":
        cjk = sum(1 for text, _, _ in chars if all(is_cjk(c) for c in text))
        unit = "char" if chars and 2 * cjk >= len(chars) else "word"
    return chars if unit == "char" else _words_from_tokens(token_times)


# ----------------------------------------------------------------------------- beam search
def _import_ctcdecoders() -> Any:
    """The paddlespeech_ctcdecoders module, or an ImportError that says how to install it."""
    try:
        import paddlespeech_ctcdecoders
    except ImportError as err:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise ImportError(
            f"ctc_beam_search needs paddlespeech_ctcdecoders ({err}). Install it with "
            f"`pip install paddlespeech-ctcdecoders`; it has wheels for Linux x86_64 and "
            f"Python 3.7-3.10 only (this is Python {version}). Or use --decoder ctc_greedy."
        ) from None
    return paddlespeech_ctcdecoders


def decoder_vocabulary(vocabulary: Sequence[str]) -> list[str]:
    """The vocabulary as the C++ decoder needs it: the space token must be `<space>`."""
    return [SPACE if tok == " " else tok for tok in vocabulary]


def _lm_how_to() -> str:
    return ("build one from your transcripts with `python tools/build_lm.py` (writes lm/<name>.arpa) "
            "or download a public one (see lm/README.md), then pass it with --lang_model_path")


def _check_gzip_arpa(lang_model_path: str) -> None:
    """A gzipped LM must decompress to an ARPA header.

    A .gz cut off mid-file is not caught: finding its end means decompressing all of it
    (gigabytes for the public LMs), so KenLM may still abort on one.
    """
    try:
        with gzip.open(lang_model_path, "rb") as handle:
            head = handle.read(ARPA_HEADER_SEARCH_BYTES)
    except (OSError, EOFError) as err:
        raise ValueError(f"language model {lang_model_path} is gzip-compressed but does not decompress "
                         f"({err}); is it a partial download? {_lm_how_to()}") from None
    if ARPA_HEADER.encode() not in head:
        raise ValueError(f"language model {lang_model_path} is gzip-compressed but holds no ARPA file (no "
                         f"{ARPA_HEADER} header); KenLM reads gzipped ARPA only: gunzip a binary first")
    _check_arpa_order(lang_model_path, head)


def _check_arpa_order(lang_model_path: str, head: bytes) -> None:
    """KenLM aborts the process on a unigram-only ARPA file ("assumes at least a bigram model")."""
    orders = [int(order) for order in ARPA_ORDER_LINE.findall(head)]
    if max(orders, default=0) < 2:
        raise ValueError(f"language model {lang_model_path} is an ARPA file of order "
                         f"{max(orders, default=0)}; KenLM needs at least bigrams: build it with "
                         f"`python tools/build_lm.py --order 3` (or another order >= 2)")


def _check_kenlm_binary(lang_model_path: str) -> None:
    """A KenLM binary cut short or damaged: the kenlm module checks its header and its size
    against the counts there (a lazy memory map, so nothing of a GB-sized file is read) and
    raises a Python error where the decoder's KenLM would abort the process."""
    try:
        import kenlm
    except ImportError:  # kenlm-ex is in requirements.txt; without it the file goes unchecked
        return
    config = kenlm.Config()
    config.load_method = kenlm.LoadMethod.LAZY
    try:
        kenlm.Model(lang_model_path, config)
    except (OSError, RuntimeError) as err:
        reason = str(err).split(" threw ", 1)[-1]
        raise ValueError(f"language model {lang_model_path} is a KenLM binary that does not load ({reason}): "
                         f"a partial download or one built by another KenLM version. Download it again "
                         f"(check its MD5, lm/README.md) or build it again: {_lm_how_to()}") from None


def _check_lm_file(lang_model_path: str) -> None:
    """Fail with a clear message before KenLM aborts the process on a missing, bad or truncated file."""
    if not lang_model_path:
        raise ValueError(f"no language model given: {_lm_how_to()}")
    if os.path.isdir(lang_model_path):
        found = sorted(name for name in os.listdir(lang_model_path) if name.endswith((".arpa", ".arpa.gz", ".klm")))
        raise ValueError(f"language model {lang_model_path} is a folder; pass a file in it"
                         + (f" ({', '.join(found[:5])})" if found else f" (it holds none): {_lm_how_to()}"))
    if not os.path.isfile(lang_model_path):
        raise FileNotFoundError(f"language model {lang_model_path} does not exist: {_lm_how_to()}")
    with open(lang_model_path, "rb") as handle:
        head = handle.read(ARPA_HEADER_SEARCH_BYTES)
        if head.startswith(KENLM_BINARY_MAGIC):
            _check_kenlm_binary(lang_model_path)
            return
        if head.startswith(GZIP_MAGIC):
            _check_gzip_arpa(lang_model_path)
            return
        if ARPA_HEADER.encode() not in head:
            raise ValueError(f"language model {lang_model_path} is neither an ARPA file (no {ARPA_HEADER} "
                             f"header) nor a KenLM binary; is it a partial download? {_lm_how_to()}")
        _check_arpa_order(lang_model_path, head)
        handle.seek(max(0, os.path.getsize(lang_model_path) - ARPA_END_SEARCH_BYTES))
        tail = handle.read()  # only the tail: ARPA files of public LMs are gigabytes
    if ARPA_END.encode() not in tail:
        raise ValueError(f"language model {lang_model_path} is an ARPA file cut off before its {ARPA_END} "
                         f"line: a partial download or an interrupted build. Download or build it again: "
                         f"{_lm_how_to()}")


def _check_lm_knows_tokens(scorer: Any, lang_model_path: str, vocabulary: Sequence[str]) -> None:
    """Refuse an LM that shares (almost) nothing with the model's tokens: beam search then returns "".

    That is an LM of another language (English model, Chinese LM or the reverse) or of another
    letter case. A character LM must know MIN_KNOWN_TOKEN_SHARE of the model's tokens; a word LM
    must hold a word spelled with them (the scorer's spelling dictionary is not empty). A character
    LM is also refused for a model of space-separated words (mostly not CJK tokens): the decoder
    scores each space as an empty word the LM does not know, and the best beam loses its spaces.
    A Chinese model with a few English words keeps its character LM.
    """
    fix = ("Use an LM built from text in the model's language and spelling (python tools/build_lm.py), "
           "or decode without one (--lang_model_path '') or with --decoder ctc_greedy")
    tokens = [tok for tok in vocabulary if tok not in (BLANK, UNK, SPACE)]
    if scorer.is_character_based():
        unknown = [tok for tok in tokens if scorer.get_log_cond_prob([tok]) <= KENLM_OOV_SCORE]
        if len(tokens) - len(unknown) < MIN_KNOWN_TOKEN_SHARE * len(tokens):
            raise ValueError(f"language model {lang_model_path} is a character LM that knows "
                             f"{len(tokens) - len(unknown)} of the model's {len(tokens)} tokens (unknown: "
                             f"{' '.join(unknown[:10])} ...): it is for another language. {fix}")
        cjk_tokens = sum(1 for tok in tokens if all(is_cjk(c) for c in tok))
        if SPACE in vocabulary and 2 * cjk_tokens < len(tokens):
            # the decoder scores a space as the empty word, which KenLM does not know (-1000 * alpha)
            raise ValueError(f"language model {lang_model_path} is a character LM, but the model separates "
                             f"words with spaces: beam search with it drops every space. Build a word LM from "
                             f"the same text (python tools/build_lm.py --unit word), or decode with --decoder "
                             f"ctc_greedy")
    elif scorer.get_dict_size() == 0:
        raise ValueError(f"language model {lang_model_path} is a word LM none of whose words can be "
                         f"spelled with the model's tokens ({' '.join(tokens[:10])} ...): it is for "
                         f"another language or letter case. {fix}")


def load_scorer(lang_model_path: str, alpha: float, beta: float, vocabulary: Sequence[str]) -> Any:
    """A paddlespeech_ctcdecoders.Scorer over a KenLM model (ARPA, gzipped ARPA or binary).

    alpha weighs the LM log-probability, beta is the bonus per word (per character for a
    character-level LM). Retune without reloading: scorer.reset_params(alpha, beta).
    Raises FileNotFoundError/ValueError for a missing, malformed or truncated file or an LM
    that shares (almost) no tokens with the vocabulary, and ImportError when the decoder
    package is missing; nothing falls back to greedy decoding.
    """
    decoders = _import_ctcdecoders()
    _check_lm_file(lang_model_path)
    vocab = decoder_vocabulary(vocabulary)
    scorer = decoders.Scorer(float(alpha), float(beta), lang_model_path, vocab)
    _check_lm_knows_tokens(scorer, lang_model_path, vocab)
    return scorer


def check_beam_params(beam_size: int, cutoff_prob: float, cutoff_top_n: int, num_processes: int) -> None:
    """Refuse values the C++ decoder crashes on (beam_size 0: segfault) or decodes to "" with."""
    checks = [("beam_size", beam_size, beam_size >= 1, ">= 1"),
              ("cutoff_prob", cutoff_prob, 0 < cutoff_prob <= 1, "in (0, 1] (1: no cutoff)"),
              ("cutoff_top_n", cutoff_top_n, cutoff_top_n >= 1, ">= 1"),
              ("num_proc_bsearch", num_processes, num_processes >= 1, ">= 1")]
    for name, value, ok, allowed in checks:
        if not ok:
            raise ValueError(f"beam search parameter {name} must be {allowed}, got {value}; "
                             f"fix --{name} (config key decode.{name})")


def _check_probs(probs: np.ndarray, vocab_size: int, index: int) -> None:
    """probs [T, V] must be probabilities over the vocabulary."""
    if probs.ndim != 2 or probs.shape[1] != vocab_size:
        raise ValueError(f"probs_list[{index}] must be [T, V={vocab_size}], got {probs.shape}")
    if probs.size and probs.min() < 0:
        raise ValueError(f"probs_list[{index}] has negative values: beam search needs probabilities, "
                         f"pass np.exp(log_probs)")


def beam_search_decode(probs_list: Sequence[np.ndarray], vocabulary: Sequence[str],
                       beam_size: int = DEFAULT_BEAM_SIZE, cutoff_prob: float = DEFAULT_CUTOFF_PROB,
                       cutoff_top_n: int = DEFAULT_CUTOFF_TOP_N,
                       num_processes: int = DEFAULT_NUM_PROCESSES,
                       scorer: Optional[Any] = None, blank_id: int = 0) -> list[str]:
    """CTC prefix beam search over a batch, with an optional KenLM scorer (load_scorer).

    probs_list: one [T_i, V] array of probabilities (softmax, not log) per utterance, only
    the valid frames. Returns the best hypothesis per utterance.
    """
    decoders = _import_ctcdecoders()
    check_beam_params(beam_size, cutoff_prob, cutoff_top_n, num_processes)
    vocab = decoder_vocabulary(vocabulary)
    batch = []
    for index, probs in enumerate(probs_list):
        probs = np.asarray(probs, dtype=np.float64)
        _check_probs(probs, len(vocab), index)
        batch.append(probs.tolist())
    if not batch:
        return []
    results = decoders.ctc_beam_search_decoding_batch(
        batch, vocab, int(beam_size), int(num_processes), float(cutoff_prob), int(cutoff_top_n),
        scorer, int(blank_id))
    return [_beam_text(beams[0][1]) if beams else "" for beams in results]


def _beam_text(text: str) -> str:
    """Decoder output -> text: `<space>` -> " ", `<unk>`/`<blank>` dropped, spaces collapsed."""
    text = text.replace(SPACE, " ").replace(UNK, "").replace(BLANK, "")
    return _clean_text(text)


# ----------------------------------------------------------------------------- dispatcher
def decode(decoder: str, log_probs: np.ndarray, out_lens: np.ndarray, vocabulary: Sequence[str],
           beam_size: int = DEFAULT_BEAM_SIZE, cutoff_prob: float = DEFAULT_CUTOFF_PROB,
           cutoff_top_n: int = DEFAULT_CUTOFF_TOP_N, num_processes: int = DEFAULT_NUM_PROCESSES,
           scorer: Optional[Any] = None, blank_id: int = 0) -> list[str]:
    """Decode a batch with the decoder named `ctc_greedy` or `ctc_beam_search`.

    log_probs [B, T, V] log-softmax outputs, out_lens [B]. The beam parameters and the
    scorer (load_scorer; None = beam search without LM) apply to ctc_beam_search only.
    """
    if decoder == "ctc_greedy":
        return greedy_decode(log_probs, out_lens, vocabulary, blank_id)
    if decoder != "ctc_beam_search":
        raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODER_NAMES)}")
    log_probs = np.asarray(log_probs)
    if log_probs.size and log_probs.max() > LOG_PROB_TOLERANCE:
        raise ValueError("decode() expects log-probabilities (<= 0), got values above 0; "
                         "pass log_softmax outputs")
    out_lens = np.asarray(out_lens).reshape(-1)
    probs_list = [np.exp(log_probs[b, : int(out_lens[b])]) for b in range(log_probs.shape[0])]
    return beam_search_decode(probs_list, vocabulary, beam_size, cutoff_prob, cutoff_top_n,
                              num_processes, scorer, blank_id)

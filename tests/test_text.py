"""Transcript normalization pairs and the vocabulary's pinned order and ids."""
from __future__ import annotations

import numpy as np
import pytest

from utils.text import (BLANK_ID, UNK_ID, TextError, Vocabulary, normalize_text, reference_text,
                        text_to_tokens)

NORMALIZED = [
    ("ＨＥＬＬＯ，Ｗｏｒｌｄ！", "hello world"),      # full-width letters and punctuation
    ("Hello, World!", "hello world"),                 # punctuation becomes a space
    ("你 好 世界", "你好世界"),                        # no spaces between CJK characters
    ("你好，世界。", "你好世界"),
    ("你好 world 再见", "你好 world 再见"),            # a space stays between CJK and Latin
    ("don’t", "don't"),                               # typographic apostrophe
    ("It's", "it's"),
    ("Café naïve", "cafe naive"),                     # accents folded
    ("  a \t  b  ", "a b"),                           # whitespace runs collapse
    ("“quoted” text", "quoted text"),
    ("ﬁne", "fine"),                                  # ligature (NFKC)
    ("co\u00adoperate", "cooperate"),                 # soft hyphen: invisible, no word break
    ("hel\u200blo wor\u200dld", "hello world"),       # zero-width space and joiner
    ("\u200eİstanbul", "istanbul"),                   # left-to-right mark; 'İ'.lower() leaves U+0307
    ("'Hello,' she said", "hello she said"),          # an apostrophe not between two letters is a quote mark
    ("‘single’ and `back`", "single and back"),
    ("o'clock, it’s", "o'clock it's"),
    ("'cause goin' rock 'n' roll", "cause goin rock n roll"),  # clipped words lose it (the demo corpus's rule)
    ("don''t", "don t"),
    ("你'好 a'你", "你好 a 你"),
    ("café's", "cafe's"),                             # between letters once accents are folded
]


@pytest.mark.parametrize("raw,expected", NORMALIZED)
def test_normalize_text_pairs(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("raw,message", [
    ("I have 3 apples", "spell numbers out as words"),
    ("第3章", "spell numbers out as words"),
    ("", "empty transcript"),
    ("  !?。 ", "empty transcript"),
    ("'", "empty transcript"),                        # apostrophes alone
    ("‘’ '' `", "empty transcript"),
    ("привет", "unsupported character"),
])
def test_normalize_text_errors(raw, message):
    with pytest.raises(TextError, match=message):
        normalize_text(raw)


CORPUS = ["ab ba", "abc", "ca b", "bab", "c"]


def test_vocabulary_order_and_ids_are_pinned():
    vocab = Vocabulary.build(CORPUS)
    # counts: b 6, a 5, c 3, <space> 2
    assert vocab.tokens == ["<blank>", "<unk>", "b", "a", "c", "<space>"]
    assert (vocab.token_to_id["<blank>"], vocab.token_to_id["<unk>"]) == (BLANK_ID, UNK_ID) == (0, 1)
    assert vocab.encode("ab c") == [3, 2, 5, 4]
    assert vocab.encode("az") == [3, UNK_ID]
    assert vocab.decode([3, 2, 5, 4, 0, 1]) == "ab c"
    assert vocab.unknown_chars("a zx y") == {"z", "x", "y"}


@pytest.mark.parametrize("tokens, texts", [
    (Vocabulary.build(CORPUS).tokens, ["ab c", "az", "", "  ", "b\u00e9 <unk>"]),
    (Vocabulary.build(["你好你 ok"]).tokens, ["你好 ok", "好你们", "\U0001f600 "]),
    (Vocabulary.build(["abc"]).tokens, ["a b"]),                # no <space>: a space is <unk>
    (["<blank>", "<unk>", "a", " ", "<space>"], ["a a"]),       # a literal " " token: spaces stay <space>
])
def test_encode_array_equals_encode(tokens, texts):
    vocab = Vocabulary(tokens)
    for text in texts:
        ids = vocab.encode_array(text)
        assert ids.dtype == np.int32 and ids.tolist() == vocab.encode(text), text


def test_vocabulary_ties_break_by_token_and_threshold_drops_rare():
    assert Vocabulary.build(["zy", "yx"]).tokens == ["<blank>", "<unk>", "y", "x", "z"]
    assert Vocabulary.build(CORPUS, count_threshold=3).tokens == ["<blank>", "<unk>", "b", "a", "c"]  # <space>: 2
    assert Vocabulary.build(CORPUS, count_threshold=7).tokens == ["<blank>", "<unk>"]


def test_chinese_is_per_character_and_english_uses_space_token():
    assert text_to_tokens("你好 ok") == ["你", "好", "<space>", "o", "k"]
    assert Vocabulary.build(["你好你"]).tokens == ["<blank>", "<unk>", "你", "好"]


def test_vocabulary_file_round_trip(tmp_path):
    vocab = Vocabulary.build(CORPUS)
    vocab.save(tmp_path / "vocabulary.txt")
    assert (tmp_path / "vocabulary.txt").read_text(encoding="utf-8") == "<blank>\n<unk>\nb\na\nc\n<space>\n"
    assert Vocabulary.load(tmp_path / "vocabulary.txt").tokens == vocab.tokens
    with pytest.raises(FileNotFoundError, match="run python create_data.py"):
        Vocabulary.load(tmp_path / "missing.txt")


def test_reference_text_is_normalized_where_it_can_be_and_kept_where_not():
    """eval scores hand-written manifests as create_data's: 'Hello, World!' is 'hello world'; a digit stays
    (no output can match it, so it counts as an error) and so does an empty reference."""
    assert reference_text("Hello, World!") == "hello world"
    assert reference_text("cafe\u0301") == reference_text("café") == "cafe"  # NFD and NFC alike
    assert reference_text("I have  3 apples") == "i have 3 apples"
    assert reference_text("  ") == ""
    assert reference_text("hello world") == "hello world"
    # beside a digit, punctuation and width are still normalized: only the digit counts as an error
    assert reference_text("I have 3 cats, and a dog.") == "i have 3 cats and a dog"
    assert reference_text("我有3只猫。") == "我有3只猫"
    assert reference_text("Ｈｅｌｌｏ，  ４ ‘you’") == "hello 4 you"

"""The n-gram LM builder: ARPA structure, <unk>, KenLM loading, exclusion, char units, CLI."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from utils.lm import build_lm, read_sentences, resolve_unit, tokenize

REPO = Path(__file__).resolve().parents[1]
ENGLISH = ["The cat sat on the mat.", "the cat sat on the rug", "a dog sat on the mat",
           "the dog ran to the park", "a cat ran to the dog", "the cat likes the dog",
           "Room 101 is closed"]  # digits: normalize_text rejects it, so it is skipped
CHINESE = ["今天天气很好", "我们去公园玩", "今天我们去上学", "天气很好我们去玩"]
CHINESE_VOCAB = ["<blank>", "<unk>"] + sorted(set("".join(CHINESE)))
ENGLISH_VOCAB = ["<blank>", "<unk>", "<space>"] + list("abcdefghijklmnopqrstuvwxyz'")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def arpa_sections(path: Path) -> tuple[dict[int, int], dict[int, list[list[str]]]]:
    """Header counts {order: n} and entries {order: [[logprob, ngram, (bow)], ...]}."""
    header: dict[int, int] = {}
    entries: dict[int, list[list[str]]] = {}
    order = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("ngram "):
            n, count = line[len("ngram "):].split("=")
            header[int(n)] = int(count)
        elif line.endswith("-grams:"):
            order = int(line[1:line.index("-")])
            entries[order] = []
        elif order and line.strip() and not line.startswith("\\"):
            entries[order].append(line.split("\t"))
    return header, entries


@pytest.fixture()
def english_lm(tmp_path):
    return build_lm([write_lines(tmp_path / "en.txt", ENGLISH)], tmp_path / "en.arpa")


def test_word_lm_has_unk_and_a_consistent_header(english_lm):
    assert (english_lm.unit, english_lm.order) == ("word", 3)
    assert (english_lm.num_sentences, english_lm.num_skipped) == (6, 1)
    header, entries = arpa_sections(english_lm.arpa_path)
    assert header == {n: len(entries[n]) for n in (1, 2, 3)} and english_lm.ngram_counts == [header[n] for n in (1, 2, 3)]
    unigrams = {e[1]: float(e[0]) for e in entries[1]}
    assert unigrams["<unk>"] == -5.0
    assert "the" in unigrams and "The" not in unigrams and "mat." not in unigrams  # normalized
    # no n-gram other than <s> may get probability 0 (log10 -99): KenLM would not back off
    assert [e[1] for n in entries for e in entries[n] if float(e[0]) <= -99] == ["<s>"]


def test_word_lm_loads_in_kenlm_and_prefers_in_domain_order(english_lm):
    from utils.decoders import load_scorer

    scorer = load_scorer(str(english_lm.arpa_path), 1.0, 1.0, ENGLISH_VOCAB)
    assert not scorer.is_character_based() and scorer.get_max_order() == 3
    in_domain = scorer.get_sent_log_prob("the cat sat on the mat".split())
    shuffled = scorer.get_sent_log_prob("mat the on sat cat the".split())
    assert in_domain > shuffled + 5.0  # natural-log units


def test_kenlm_scores_unknown_words_with_the_added_unk(english_lm):
    kenlm = pytest.importorskip("kenlm")  # the kenlm-ex wheel
    model = kenlm.Model(str(english_lm.arpa_path))
    scores = list(model.full_scores("the zebra sat"))  # (log10 prob, n-gram length, oov)
    assert scores[1][2] is True  # zebra is out of vocabulary ...
    assert -6.0 < scores[1][0] < -5.0  # ... and costs <unk> (-5) plus a back-off, not -100
    assert model.score("the cat sat on the mat") > model.score("mat the on sat cat the") + 2.0


def test_exclude_removes_test_sentences(tmp_path):
    corpus = write_lines(tmp_path / "en.txt", ENGLISH)
    test_manifest = write_lines(tmp_path / "manifest.test", [json.dumps(
        {"audio_filepath": "a.wav", "duration": 1.0, "text": "the dog ran to the park"})])
    result = build_lm([corpus], tmp_path / "ex.arpa", exclude_paths=[test_manifest])
    assert (result.num_sentences, result.num_excluded) == (5, 1)
    _, entries = arpa_sections(result.arpa_path)
    bigrams = {e[1] for e in entries[2]}
    assert "to the" in bigrams and "ran to" in bigrams  # from 'a cat ran to the dog'
    assert "to the park" not in {e[1] for e in entries[3]} and "park" not in {e[1] for e in entries[1]}


def test_chinese_text_gives_a_character_lm(tmp_path):
    result = build_lm([write_lines(tmp_path / "zh.txt", CHINESE)], tmp_path / "zh.arpa")
    assert (result.unit, result.order) == ("char", 5)
    _, entries = arpa_sections(result.arpa_path)
    assert all(len(e[1]) == 1 for e in entries[1] if e[1] not in ("<s>", "</s>", "<unk>"))
    assert "今 天 天" in {e[1] for e in entries[3]}
    from utils.decoders import load_scorer

    scorer = load_scorer(str(result.arpa_path), 1.0, 1.0, CHINESE_VOCAB)
    assert scorer.is_character_based()
    assert scorer.get_sent_log_prob(list("今天天气很好")) > scorer.get_sent_log_prob(list("好很气天天今"))


def test_units_tokens_and_file_formats(tmp_path):
    assert resolve_unit("auto", ["今天好 hi"]) == "char" and resolve_unit("auto", ["hello 今"]) == "word"
    assert tokenize("今天 好", "char") == "今 天 好" and tokenize(" a  b ", "word") == "a b"
    annotation = write_lines(tmp_path / "train.txt", ["dataset/audio/a.wav\tthe cat", "b.wav\ta dog"])
    assert read_sentences(annotation) == ["the cat", "a dog"]
    manifest = write_lines(tmp_path / "m.jsonl", ['{"text": "x y"}', "not json"])
    with pytest.raises(ValueError, match=r"m.jsonl:2: bad manifest line"):
        read_sentences(manifest)
    with pytest.raises(ValueError, match="unit must be one of"):
        resolve_unit("bpe", [])
    with pytest.raises(ValueError, match=r"--unit char on text of space-separated words .*train\.txt.*drops "
                                         r"every space\. Use --unit word"):
        build_lm([annotation], tmp_path / "en_char.arpa", unit="char")


def test_binary_is_written_when_build_binary_is_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "build_binary"  # records its arguments, copies the ARPA as the "binary"
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\ncp "$2" "$3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = build_lm([write_lines(tmp_path / "en.txt", ENGLISH)], tmp_path / "en.arpa")
    assert result.binary_path == tmp_path / "en.klm" and result.binary_path.is_file()
    assert (bin_dir / "args").read_text().split()[:2] == ["trie", str(tmp_path / "en.arpa")]
    assert "binary" in result.summary() and str(result.binary_path) in result.summary()


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "build_lm.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_defaults_train_on_the_train_manifest_minus_the_test_manifest(tmp_path):
    (tmp_path / "dataset").mkdir()
    lines = [json.dumps({"audio_filepath": f"{i}.wav", "duration": 1.0, "text": t}) for i, t in enumerate(ENGLISH)]
    write_lines(tmp_path / "dataset" / "manifest.train", lines)
    write_lines(tmp_path / "dataset" / "manifest.test", lines[:2])
    proc = run_cli(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "exclude: ['dataset/manifest.test']" in proc.stdout
    assert "4 sentences (2 excluded, 1 skipped)" in proc.stdout.strip().splitlines()[-1]
    assert (tmp_path / "lm" / "train.arpa").is_file()


def test_cli_builds_from_text_and_ends_with_a_summary(tmp_path):
    corpus = write_lines(tmp_path / "en.txt", ENGLISH)
    exclude = write_lines(tmp_path / "test.txt", ["a dog sat on the mat"])
    proc = run_cli("--text", str(corpus), "--exclude", str(exclude), "--lm_dir", str(tmp_path),
                   "--name", "demo", "--no_binary")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"built word 3-gram LM {tmp_path / 'demo.arpa'}")
    assert "5 sentences (1 excluded, 1 skipped)" in last and (tmp_path / "demo.arpa").is_file()


def test_cli_without_a_manifest_says_what_to_do(tmp_path):
    proc = run_cli("--manifest_path", str(tmp_path / "manifest.train"), "--lm_dir", str(tmp_path))
    assert proc.returncode != 0
    assert "run python create_data.py first, or give the corpus with --text" in proc.stderr


@pytest.mark.parametrize("order", [0, 1, 7, -1])
def test_an_order_out_of_range_is_refused_zero_included(tmp_path, order):
    """--order 0 built the default order silently (0 read as 'not given')."""
    with pytest.raises(ValueError, match=rf"order must be between 2 and \d+, got {order}"):
        build_lm([write_lines(tmp_path / "en.txt", ENGLISH)], tmp_path / "en.arpa", order=order)


def test_text_in_utf16_or_with_old_line_ends_is_read_and_other_encodings_are_named(tmp_path):
    """build_lm read UTF-8 with LF only: Notepad's UTF-16 aborted with a bare UnicodeDecodeError."""
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("今天天气很好\r\n我们去公园玩\r\n".encode("utf-16"))
    assert read_sentences(utf16) == ["今天天气很好", "我们去公园玩"]
    old_mac = tmp_path / "cr.txt"
    old_mac.write_bytes(b"the cat\rthe dog\r")
    assert read_sentences(old_mac) == ["the cat", "the dog"]
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("the cat\n".encode() + "今天天气很好\n".encode("gbk"))
    with pytest.raises(ValueError, match=r"gbk.txt:2: not UTF-8 text; re-save the file as UTF-8"):
        build_lm([gbk], tmp_path / "gbk.arpa")
    no_bom = tmp_path / "utf16le.txt"  # read as UTF-8 it is letters with NULs between: a garbage LM
    no_bom.write_bytes("the cat\nthe dog\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"utf16le.txt:1: NUL bytes: UTF-16 without a BOM .*iconv -f UTF-16LE"):
        read_sentences(no_bom)


def test_a_binary_of_an_earlier_build_never_outlives_its_arpa(tmp_path, monkeypatch):
    """A rebuild without build_binary left the old .klm beside the new .arpa, and decoders prefer it."""
    stale = tmp_path / "en.klm"
    stale.write_text("old model")
    result = build_lm([write_lines(tmp_path / "en.txt", ENGLISH)], tmp_path / "en.arpa", make_binary=False)
    assert result.binary_path is None and not stale.exists()
    assert f"(no binary asked for; removed {stale}, the binary of an earlier build)" in result.summary()

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    failing = bin_dir / "build_binary"
    failing.write_text("#!/bin/sh\necho 'out of memory' >&2\nexit 3\n")
    failing.chmod(failing.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    stale.write_text("old model")
    with pytest.raises(RuntimeError, match=r"exit 3\); the ARPA model is usable as it is; removed .*en.klm"):
        build_lm([tmp_path / "en.txt"], tmp_path / "en.arpa")
    assert not stale.exists() and (tmp_path / "en.arpa").is_file()


def test_to_simplified_converts_traditional_text_or_says_what_to_install(tmp_path, monkeypatch):
    import utils.text

    corpus = write_lines(tmp_path / "zh.txt", ["今天天氣很好", "我們去公園玩"])
    result = build_lm([corpus], tmp_path / "zh.arpa", to_simplified=True)
    _, entries = arpa_sections(result.arpa_path)
    unigrams = {entry[1] for entry in entries[1]}
    assert {"气", "们", "园"} <= unigrams and not {"氣", "們", "園"} & unigrams

    monkeypatch.setattr(utils.text, "_OPENCC", None)
    monkeypatch.setitem(sys.modules, "opencc", None)  # import opencc now raises ImportError
    with pytest.raises(ValueError, match="to_simplified needs OpenCC: pip install opencc-python-reimplemented"):
        build_lm([corpus], tmp_path / "zh.arpa", to_simplified=True)


def test_cli_default_exclude_is_the_test_manifest_beside_the_manifest_given(tmp_path):
    """The default --exclude was dataset/manifest.test whatever --manifest_path said."""
    (tmp_path / "data").mkdir()
    lines = [json.dumps({"audio_filepath": f"{i}.wav", "duration": 1.0, "text": t}) for i, t in enumerate(ENGLISH)]
    write_lines(tmp_path / "data" / "manifest.train", lines)
    write_lines(tmp_path / "data" / "manifest.test", lines[:3])
    proc = run_cli("--manifest_path", "data/manifest.train", "--no_binary", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "exclude: ['data/manifest.test']" in proc.stdout
    assert "3 sentences (3 excluded, 1 skipped)" in proc.stdout.strip().splitlines()[-1]

"""The embedded demo corpus generator: tiny corpora built into pytest's tmp_path."""
import collections
import os
import re
import shutil
import subprocess
import sys

import pytest

from tools import demo_text, make_demo_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EN_RE = re.compile(r"^[a-z']+( [a-z']+)*$")
ZH_RE = re.compile(r'^[\u3400-\u4dbf\u4e00-\u9fff]+$')


def _missing(lang):
    tools = [t for t in make_demo_corpus.TOOLS[lang] if shutil.which(t) is None]
    return tools + list(demo_text.missing_sources(lang))


def _needs(lang):
    missing = _missing(lang)
    return pytest.mark.skipif(bool(missing), reason='demo corpus (%s) needs %s: apt-get install %s'
                              % (lang, ', '.join(missing), make_demo_corpus.PACKAGES[lang]))


def build(out_dir, lang='en', seed=3, extra=()):
    args = ['--lang', lang, '--num_train', '6', '--num_test', '3', '--seed', str(seed),
            '--out_dir', str(out_dir), '--num_workers', '2'] + list(extra)
    return make_demo_corpus.main(args)


def read_annotation(out_dir, split):
    with open(os.path.join(out_dir, 'annotation', split + '.txt'), encoding='utf-8') as f:
        return [line.rstrip('\n').split('\t') for line in f]


def read_voices(out_dir, lang='en'):
    path = os.path.join(out_dir, 'audio', 'demo_' + lang, 'voices.tsv')
    with open(path, encoding='utf-8') as f:
        rows = [line.rstrip('\n').split('\t') for line in f][1:]
    return {split: {r[2] for r in rows if r[1] == split} for split in ('train', 'test')}


@pytest.fixture(scope='module')
def en_corpus(tmp_path_factory):
    if _missing('en'):
        pytest.skip('needs espeak-ng, flite, sox, wordnet-base, fortunes')
    out = tmp_path_factory.mktemp('demo_en')
    meta = build(out)
    return out, meta


# ---------------------------------------------------------------- text cleaning


def test_numbers_are_spelled_out():
    assert demo_text.number_words(342) == 'three hundred forty two'
    assert demo_text.number_words(1000000) == 'one million'
    assert demo_text.clean_en('In 1492 he had 2,000 ships; the 21st was Mr. Smith\u2019s.') == \
        "in fourteen ninety two he had two thousand ships the twenty first was mister smith's"
    assert demo_text.clean_en('The 1960s, when she was in her 20s') == \
        'the nineteen sixties when she was in her twenties'


def test_unreadable_sentences_are_dropped():
    for text in ('Call NASA now', 'it weighs 3.5 kg', 'see http://x.org', 'hmm said he',
                 'vitamin b is good', 'henry viii was king', 'e.g. this one'):
        assert demo_text.clean_en(text) is None, text
    assert demo_text.clean_en('one two', min_words=3) is None
    assert demo_text.clean_zh('使用 shell 查找') is None
    assert demo_text.clean_zh('兰叶春葳蕤，桂华秋皎洁。') == '兰叶春葳蕤桂华秋皎洁'


def test_help_runs_as_a_script():
    res = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'make_demo_corpus.py'),
                          '--help'], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and '--num_train' in res.stdout and '--overwrite' in res.stdout


def test_missing_tool_names_the_apt_line(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, 'which', lambda name: None if name == 'flite' else '/bin/x')
    with pytest.raises(SystemExit, match='apt-get install -y espeak-ng flite sox'):
        build(tmp_path)


def test_lists_it_did_not_write_are_kept(tmp_path):
    user_list = tmp_path / 'annotation' / 'train.txt'
    user_list.parent.mkdir()
    user_list.write_text('/data/mine/0001.wav\tmy own words\n', encoding='utf-8')
    with pytest.raises(SystemExit, match=r'train\.txt names audio outside .*--overwrite'):
        build(tmp_path)
    assert user_list.read_text(encoding='utf-8') == '/data/mine/0001.wav\tmy own words\n'
    # a list naming only the tool's own wavs (a run killed before corpus.json) is its own
    paths = make_demo_corpus.output_paths(str(tmp_path), 'en')
    user_list.write_text(make_demo_corpus.wav_path(paths['audio_dir'], 'train', 0) + '\tx\n',
                         encoding='utf-8')
    assert make_demo_corpus.foreign_lists(paths) == []


# ---------------------------------------------------------------- English corpus


def test_wavs_are_16k_mono_pcm16(en_corpus):
    sf = pytest.importorskip('soundfile')
    out, meta = en_corpus
    rows = read_annotation(out, 'train') + read_annotation(out, 'test')
    assert len(rows) == 9 and meta['counts'] == {'train': 6, 'test': 3}
    for path, _ in rows:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, 'PCM_16'), path
        assert info.duration > 0.3, path


def test_text_is_clean_and_splits_are_disjoint(en_corpus):
    out, _ = en_corpus
    train = [t for _, t in read_annotation(out, 'train')]
    test = [t for _, t in read_annotation(out, 'test')]
    assert all(EN_RE.match(t) for t in train + test), train + test
    assert not set(train) & set(test)
    assert all(4 <= len(t.split()) <= 12 for t in train + test)


def test_test_set_has_held_out_and_training_voices(en_corpus):
    out, meta = en_corpus
    voices = read_voices(out)
    held = ('flite:awb', '+m3', '+f4')
    assert voices['test'] - voices['train']
    assert 'flite:awb' in voices['test']  # the first test utterance
    assert not any(v.endswith(held) for v in voices['train'])
    assert any(not v.endswith(held) for v in voices['test'])  # training speakers too
    assert meta['voices']['heldout_speakers'][0] == 'flite:awb'


def test_lm_text_excludes_test_sentences(en_corpus):
    out, _ = en_corpus
    with open(os.path.join(out, 'lm_text_en.txt'), encoding='utf-8') as f:
        lm = f.read().splitlines()
    assert len(lm) > 10000 and len(set(lm)) == len(lm)
    assert all(EN_RE.match(s) for s in lm[:2000])
    lm = set(lm)
    assert all(t in lm for _, t in read_annotation(out, 'train'))
    assert not any(t in lm for _, t in read_annotation(out, 'test'))


def test_same_seed_same_corpus_and_rerun_is_skipped(en_corpus, tmp_path):
    out, _ = en_corpus
    assert build(out)['skipped']  # same parameters: nothing is regenerated
    assert build(tmp_path / 'again')['skipped'] is False
    for split in ('train', 'test'):
        first, second = read_annotation(out, split), read_annotation(tmp_path / 'again', split)
        assert [t for _, t in first] == [t for _, t in second]
        assert [os.path.relpath(p, out) for p, _ in first] == \
            [os.path.relpath(p, tmp_path / 'again') for p, _ in second]
        with open(first[0][0], 'rb') as a, open(second[0][0], 'rb') as b:
            assert a.read() == b.read()  # audio is reproducible too
    other = build(tmp_path / 'other', seed=4)
    assert other['skipped'] is False
    assert read_annotation(tmp_path / 'other', 'test')[0][1] != read_annotation(out, 'test')[0][1]


def test_overwrite_rebuilds(tmp_path):
    if _missing('en'):
        pytest.skip('needs espeak-ng, flite, sox, wordnet-base, fortunes')
    assert build(tmp_path)['skipped'] is False
    assert build(tmp_path, extra=['--overwrite'])['skipped'] is False
    os.remove(read_annotation(tmp_path, 'train')[0][0])  # a lost wav forces a rebuild
    assert build(tmp_path)['skipped'] is False
    assert build(tmp_path)['skipped'] is True


# ---------------------------------------------------------------- Mandarin corpus


@_needs('zh')
def test_zh_corpus_is_cjk_only(tmp_path):
    meta = build(tmp_path, lang='zh')
    rows = read_annotation(tmp_path, 'train') + read_annotation(tmp_path, 'test')
    assert len(rows) == 9 and all(ZH_RE.match(t) for _, t in rows)
    assert all(os.path.isfile(p) for p, _ in rows)
    voices = read_voices(tmp_path, 'zh')
    assert all(v.startswith('espeak-ng:cmn-latn-pinyin+') for v in voices['train'] | voices['test'])
    assert 'espeak-ng:cmn-latn-pinyin+f4' in voices['test'] - voices['train']
    with open(os.path.join(tmp_path, 'lm_text_zh.txt'), encoding='utf-8') as f:
        lm = f.read().splitlines()
    assert len(lm) > 10000 and all(ZH_RE.match(s) for s in lm)
    assert not set(t for _, t in read_annotation(tmp_path, 'test')) & set(lm)
    assert meta['params']['lang'] == 'zh'


@_needs('zh')
def test_zh_spoken_sentences_use_only_the_common_characters():
    spoken, lm = demo_text.load_sentences('zh', 4, 14)
    counts = collections.Counter(char for s in lm for char in s)
    common = {char for char, _ in counts.most_common(demo_text.ZH_SPOKEN_CHARS)}
    assert len(spoken) > 5000 and len(lm) > len(spoken)
    assert set().union(*map(set, spoken)) <= common

"""create_data: every input format, every bad-input class, resampling, statistics, the CLI."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import ROOT, prep_config, read_skipped, write_bytes_lines, write_noise, write_text, write_tone
from utils.audio import load_audio
from utils import data_prep
from utils.audio import AudioError
from utils.data_prep import DataPrepError, create_data, mirror_path
from utils.features import compute_features, load_mean_std
from utils.manifest import read_manifest
from utils.text import Vocabulary

PINNED_TOKENS = ["<blank>", "<unk>", "b", "a", "c", "<space>"]  # from the 4 training lines of CLEAN_CORPUS


def manifest(tmp_path: Path, split: str) -> list[dict]:
    path = tmp_path / "out" / f"manifest.{split}"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_masr_list_makes_sorted_manifests_vocabulary_and_normalizer(clean_corpus):
    cfg = prep_config(clean_corpus, clean_corpus / "annotation")
    summary = create_data(cfg)
    train, test = manifest(clean_corpus, "train"), manifest(clean_corpus, "test")
    # test_every=500: the first kept line is the test set, the rest train, sorted by duration
    assert [t["text"] for t in test] == ["ab ba"]
    assert [t["text"] for t in train] == ["bab", "abc", "c", "ca b"]
    assert [t["duration"] for t in train] == [0.3, 0.4, 0.5, 0.8]
    assert train[0]["audio_filepath"] == str(clean_corpus / "audio" / "d.wav")
    assert Vocabulary.load(cfg.data.dataset_vocab).tokens == PINNED_TOKENS
    normalizer = load_mean_std(cfg.data.mean_std_path)
    assert normalizer["feature_method"] == "linear" and normalizer["mean"].shape == (161,)
    assert (summary.train, summary.test, summary.skipped, summary.vocab_size) == (4, 1, 0, 6)
    assert summary.train_hours == pytest.approx(2.0 / 3600)
    line = summary.line()
    assert "kept 4 train" in line and "1 test" in line and "0 lines skipped" in line and "\n" not in line
    assert read_skipped(clean_corpus / "out" / "skipped.txt") == []


def test_count_threshold_drops_rare_tokens(clean_corpus):
    cfg = prep_config(clean_corpus, clean_corpus / "annotation", **{"prep.count_threshold": 2})
    create_data(cfg)
    assert Vocabulary.load(cfg.data.dataset_vocab).tokens == PINNED_TOKENS[:5]


def test_test_txt_is_the_test_set_and_unknown_characters_are_counted(clean_corpus):
    write_text(clean_corpus / "annotation" / "test.txt", [f"{clean_corpus / 'audio' / 'a.wav'}\tabd"])
    summary = create_data(prep_config(clean_corpus, clean_corpus / "annotation"))
    assert [t["text"] for t in manifest(clean_corpus, "test")] == ["abd"]
    assert len(manifest(clean_corpus, "train")) == 4  # a.wav's training line left out: its audio is a test line's
    [skip] = read_skipped(clean_corpus / "out" / "skipped.txt")
    assert skip[2] == (f"the same audio as test line {clean_corpus / 'annotation' / 'test.txt'}:1; kept out of "
                       f"training so that the test set stays unseen")
    assert (summary.oov_test, summary.oov_chars) == (1, "d")
    assert "1 test utterances with characters not in the vocabulary (d)" in summary.line()


def test_every_nth_line_capped_at_max_test(clean_corpus):
    cfg = prep_config(clean_corpus, clean_corpus / "annotation", **{"prep.test_every": 2, "prep.max_test": 2})
    create_data(cfg)
    assert sorted(t["text"] for t in manifest(clean_corpus, "test")) == ["ab ba", "ca b"]  # lines 0 and 2
    assert len(manifest(clean_corpus, "train")) == 3


def test_json_lines_csv_and_several_inputs(tmp_path):
    paths = [write_tone(tmp_path / "audio" / f"{i}.wav", 0.5 + 0.1 * i) for i in range(4)]
    json_lines = [json.dumps({"audio_filepath": str(paths[0]), "duration": 99.0, "text": "Hello, World"}),
                  json.dumps({"audio_filepath": str(paths[1]), "text": "café"})]
    write_text(tmp_path / "in" / "nemo.jsonl", json_lines)
    write_text(tmp_path / "in" / "ds.csv", ["wav_filename,wav_filesize,transcript",
                                            f"{paths[2]},123,\"it's, quoted\"", f"{paths[3]},5,plain"])
    cfg = prep_config(tmp_path, f"{tmp_path / 'in' / 'nemo.jsonl'},{tmp_path / 'in' / 'ds.csv'}",
                      **{"prep.test_every": 0})
    summary = create_data(cfg)
    train = manifest(tmp_path, "train")
    assert [t["text"] for t in train] == ["hello world", "cafe", "it's quoted", "plain"]
    assert train[0]["duration"] == 0.5  # from the audio header, not the JSON's 99.0
    assert (summary.train, summary.test) == (4, 0)


def test_csv_without_header_reads_default_columns(tmp_path):
    path = write_tone(tmp_path / "audio" / "x.wav", 0.5)
    write_text(tmp_path / "in.csv", [f"{path},10,no header here"])
    create_data(prep_config(tmp_path, tmp_path / "in.csv", **{"prep.test_every": 0}))
    assert [t["text"] for t in manifest(tmp_path, "train")] == ["no header here"]


def test_relative_paths_and_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tone(tmp_path / "corpus" / "wav" / "x.wav", 0.5)
    write_text(tmp_path / "list.txt", ["corpus/wav/x.wav\tx"])
    create_data(prep_config(tmp_path, "list.txt", **{"prep.test_every": 0}))
    assert manifest(tmp_path, "train")[0]["audio_filepath"] == "corpus/wav/x.wav"  # as given
    write_text(tmp_path / "list.txt", ["wav/x.wav\tx"])
    create_data(prep_config(tmp_path, "list.txt", **{"prep.test_every": 0, "data.data_dir": "corpus"}))
    written = manifest(tmp_path, "train")[0]["audio_filepath"]
    assert written == str(tmp_path / "corpus" / "wav" / "x.wav")  # absolute: reads with or without data_dir
    for data_dir in (None, "corpus"):
        assert os.path.isfile(read_manifest(tmp_path / "out" / "manifest.train", data_dir)[0].audio_filepath)


def bad_input_list(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """A MASR list with one line per bad-input class; returns it and {line number: reason part}."""
    good = write_tone(tmp_path / "audio" / "good.wav", 0.5)
    empty = tmp_path / "audio" / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "audio" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF this is not audio at all" * 10)
    zero = tmp_path / "audio" / "zero.wav"
    soundfile.write(str(zero), np.zeros(0, dtype=np.float32), 16000)
    short, long = write_tone(tmp_path / "audio" / "short.wav", 0.05), write_tone(tmp_path / "audio" / "long.wav", 3)
    lines = [f"{good}\tgood one".encode(),                                     # 1 kept
             f"{tmp_path / 'audio' / 'missing.wav'}\tmissing".encode(),         # 2
             f"{empty}\tempty file".encode(), f"{corrupt}\tcorrupt".encode(),    # 3, 4
             f"{zero}\tzero".encode(), f"{good}\t".encode(), f"{good}\t !? ".encode(),  # 5, 6, 7
             f"{good}\t".encode() + "caf\xe9".encode("latin-1"),               # 8 not UTF-8
             f"{good}\tI have 3 apples".encode(), f"{good}\tnumber ٣".encode(),  # 9, 10
             f"{short}\tshort".encode(), f"{long}\tlong".encode(),             # 11, 12
             f"{good} no tab here".encode(),                                   # 13
             f'{good}\tsay "hi"\tthere'.encode(), b"", f"{good}\tlast".encode()]  # 14 kept, blank, 16 kept
    reasons = {2: "audio: file not found", 3: "audio: empty file", 4: "audio: not readable audio",
               5: "audio: zero duration", 6: "text: empty transcript", 7: "text: empty transcript",
               8: "not UTF-8", 9: "spell numbers out as words", 10: "unsupported character",
               11: "duration 0.05 s outside [0.1, 2.0]", 12: "duration 3.00 s outside", 13: "no tab"}
    return write_bytes_lines(tmp_path / "annotation" / "train.txt", lines), reasons


def test_every_bad_input_class_is_skipped_with_its_reason(tmp_path):
    listing, reasons = bad_input_list(tmp_path)
    cfg = prep_config(tmp_path, listing, **{"prep.test_every": 0, "data.max_duration": 2.0})
    summary = create_data(cfg)
    rows = sorted(read_skipped(tmp_path / "out" / "skipped.txt"), key=lambda row: int(row[1]))  # pass order
    assert [int(row[1]) for row in rows] == sorted(reasons)
    for source, line_no, reason, raw in rows:
        assert source == str(listing)
        assert reasons[int(line_no)] in reason, (line_no, reason)
    assert rows[6][3] == f"{tmp_path / 'audio' / 'good.wav'}\\tcaf\\xe9"  # raw line, tab and bad byte escaped
    assert [t["text"] for t in manifest(tmp_path, "train")] == ["good one", "say hi there", "last"]
    assert summary.skipped == len(reasons) == 12
    assert f"12 lines skipped (see {tmp_path / 'out' / 'skipped.txt'})" in summary.line()


def test_audio_failing_after_its_header_read_is_skipped_with_its_raw_line(tmp_path, monkeypatch):
    """A file whose header reads but whose samples do not (truncated): dropped at the statistics
    pass, and skipped.txt still gets its list line, looked up again in the list file."""
    tones = [write_tone(tmp_path / "audio" / f"{name}.wav", 0.5) for name in ("a", "b", "c")]
    listing = write_text(tmp_path / "annotation" / "train.txt",
                         [f"{tone}\tword {name}" for tone, name in zip(tones, "abc")])
    real_load = data_prep.load_audio

    def load_audio(path, rate):
        if path.endswith("b.wav"):
            raise AudioError(f"{path}: truncated data")
        return real_load(path, rate)
    monkeypatch.setattr(data_prep, "load_audio", load_audio)
    summary = create_data(prep_config(tmp_path, listing, **{"prep.test_every": 0}))
    assert read_skipped(tmp_path / "out" / "skipped.txt") == [
        [str(listing), "2", "audio: truncated data", f"{tones[1]}\\tword b"]]
    assert [t["text"] for t in manifest(tmp_path, "train")] == ["word a", "word c"]
    assert summary.skipped == 1 and summary.train == 2


def test_bad_json_and_csv_lines_are_skipped(tmp_path):
    good = write_tone(tmp_path / "good.wav", 0.5)
    write_text(tmp_path / "in.jsonl", [json.dumps({"audio_filepath": str(good), "text": "ok"}), "{not json",
                                       json.dumps({"audio_filepath": str(good)}), "[1, 2]"])
    write_text(tmp_path / "in.csv", ["wav_filename,wav_filesize,transcript", f"{good},1"])
    create_data(prep_config(tmp_path, f"{tmp_path / 'in.jsonl'},{tmp_path / 'in.csv'}", **{"prep.test_every": 0}))
    reasons = [(Path(r[0]).name, r[1], r[2]) for r in read_skipped(tmp_path / "out" / "skipped.txt")]
    assert [r[:2] for r in reasons] == [("in.jsonl", "2"), ("in.jsonl", "3"), ("in.jsonl", "4"), ("in.csv", "2")]
    assert "not valid JSON" in reasons[0][2] and "missing key 'text'" in reasons[1][2]
    assert "not a JSON object" in reasons[2][2] and "2 CSV fields" in reasons[3][2]


def test_nothing_usable_is_a_clear_error(tmp_path):
    write_text(tmp_path / "list.txt", [f"{tmp_path / 'missing.wav'}\ttext", "no tab"])
    with pytest.raises(DataPrepError, match=r"no usable training utterance.*skipped\.txt"):
        create_data(prep_config(tmp_path, tmp_path / "list.txt"))
    assert len(read_skipped(tmp_path / "out" / "skipped.txt")) == 2


def test_lists_without_a_line_say_so_rather_than_point_to_an_empty_skipped_list(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blank.txt").write_text("\n  \n\t\n", encoding="utf-8")
    (tmp_path / "in" / "header.csv").write_text("wav_filename,wav_filesize,transcript\n", encoding="utf-8")
    with pytest.raises(DataPrepError) as raised:
        create_data(prep_config(tmp_path, tmp_path / "in"))
    assert str(raised.value) == (f"the annotation lists hold no lines (they are empty, blank or a CSV header only): "
                                 f"{tmp_path / 'in' / 'blank.txt'}, {tmp_path / 'in' / 'header.csv'}; write one "
                                 f"utterance a line (MASR: path<TAB>text) and rerun")


def test_a_utf16_list_without_a_bom_is_named_as_such_and_skipped_txt_holds_no_nul(tmp_path):
    tone = write_tone(tmp_path / "a.wav", 0.5)
    (tmp_path / "u16.txt").write_bytes(f"{tone}\tone\n{tone}\t你好\n".encode("utf-16-le"))  # no BOM
    with pytest.raises(DataPrepError, match="no usable training utterance"):
        create_data(prep_config(tmp_path, tmp_path / "u16.txt"))
    skipped = tmp_path / "out" / "skipped.txt"
    assert b"\x00" not in skipped.read_bytes()
    reason = "NUL bytes: UTF-16 without a BOM (or not a text file); re-save the file as UTF-8"
    rows = read_skipped(skipped)
    assert [row[1:3] for row in rows] == [["1", reason], ["2", reason], ["3", reason]]  # 3: the last LF's NUL
    assert rows[0][3] == "".join(("\\t" if char == "\t" else char) + "\\x00" for char in f"{tone}\tone")


def test_skipped_txt_escapes_control_characters_in_its_raw_column(tmp_path):
    from utils.annotations import SkipLog

    with SkipLog(tmp_path / "skipped.txt") as skips:
        skips.add("in.txt", 7, "a\nreason", "a\x00b\tc\rd\x1be\x7ff\x85g\u2028h\\x00")
    assert (tmp_path / "skipped.txt").read_text(encoding="utf-8").splitlines() == [
        "source\tline\treason\traw", "in.txt\t7\ta reason\ta\\x00b\\tc\\rd\\x1be\\x7ff\\x85g\\u2028h\\x00"]


@pytest.mark.parametrize("annotation", ["missing_folder", "empty_folder"])
def test_missing_or_empty_annotation_path_is_a_clear_error(tmp_path, annotation):
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(DataPrepError, match="annotation"):
        create_data(prep_config(tmp_path, tmp_path / annotation))


def test_stereo_8k_is_resampled_into_a_new_file_and_the_original_is_untouched(tmp_path):
    good = write_tone(tmp_path / "audio" / "good.wav", 0.5)
    stereo = write_tone(tmp_path / "audio" / "stereo8k.wav", 1.0, sample_rate=8000, channels=2)
    flac = write_tone(tmp_path / "audio" / "cd.flac", 0.7, sample_rate=44100)
    before = hashlib.sha256(stereo.read_bytes()).hexdigest()
    write_text(tmp_path / "list.txt", [f"{good}\tgood", f"{stereo}\tstereo", f"{flac}\tflac"])
    cfg = prep_config(tmp_path, tmp_path / "list.txt", **{"prep.test_every": 0})
    summary = create_data(cfg)
    assert hashlib.sha256(stereo.read_bytes()).hexdigest() == before
    by_text = {t["text"]: t for t in manifest(tmp_path, "train")}
    converted = Path(by_text["stereo"]["audio_filepath"])
    assert converted == mirror_path(str(stereo), cfg.prep.resampled_dir)
    assert converted.is_relative_to(tmp_path / "resampled") and converted.name == "stereo8k.wav"
    info = soundfile.info(str(converted))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000)
    assert by_text["stereo"]["duration"] == 1.0
    assert Path(by_text["flac"]["audio_filepath"]).name == "cd.flac.wav"
    assert by_text["good"]["audio_filepath"] == str(good)
    assert summary.resampled == 2
    mtime = converted.stat().st_mtime_ns
    create_data(cfg)  # a second run reuses the fresh copy
    assert converted.stat().st_mtime_ns == mtime


def test_a_replaced_source_is_converted_again_though_its_time_is_older_than_the_copy(tmp_path):
    """tar, unzip, cp -p and rsync -a give a replaced file its old modification time: the copy is reused only
    when its time equals the source's (stamped at conversion) and its length agrees with the source header's."""
    source = write_tone(tmp_path / "audio" / "r8k.wav", 1.0, sample_rate=8000, freq=300.0)
    cfg = prep_config(tmp_path, write_text(tmp_path / "list.txt", [f"{source}\tword"]), **{"prep.test_every": 0})
    create_data(cfg)
    copy = mirror_path(str(source), cfg.prep.resampled_dir)
    assert copy.stat().st_mtime_ns == source.stat().st_mtime_ns
    an_hour_earlier = source.stat().st_mtime_ns - 3600 * 10**9
    write_tone(source, 1.0, sample_rate=8000, freq=1000.0)  # new audio, same length
    os.utime(source, ns=(an_hour_earlier, an_hour_earlier))
    create_data(cfg)
    np.testing.assert_allclose(load_audio(copy), load_audio(source), atol=1 / 32768)  # the new audio, in 16 bits
    assert copy.stat().st_mtime_ns == an_hour_earlier
    write_tone(source, 0.75, sample_rate=8000)  # shorter, and given the copy's very time
    os.utime(source, ns=(an_hour_earlier, an_hour_earlier))
    create_data(cfg)
    assert soundfile.info(str(copy)).frames == 12000 and manifest(tmp_path, "train")[0]["duration"] == 0.75


def test_resampled_count_holds_only_the_files_converted_by_this_run(tmp_path, monkeypatch):
    """A conversion that fails is no resampled file, and a reused copy is reported as one."""
    tones = [write_tone(tmp_path / "audio" / f"{name}.wav", 0.5, sample_rate=8000) for name in ("ok", "bad")]
    listing = write_text(tmp_path / "list.txt", [f"{tone}\tword" for tone in tones])
    real_load = data_prep.load_audio

    def load_audio(path, rate):
        if path.endswith("bad.wav"):
            raise AudioError(f"{path}: truncated data")
        return real_load(path, rate)
    monkeypatch.setattr(data_prep, "load_audio", load_audio)
    cfg = prep_config(tmp_path, listing, **{"prep.test_every": 0})
    first = create_data(cfg)
    assert (first.resampled, first.reused_copies, first.skipped) == (1, 0, 1)
    assert "1 lines skipped (see " in first.line() and ", 1 files resampled; wrote " in first.line()
    second = create_data(cfg)
    assert (second.resampled, second.reused_copies) == (0, 1)
    assert ", 0 files resampled, 1 earlier resampled copies reused; wrote " in second.line()


def test_mirror_path_stays_inside_resampled_dir():
    assert mirror_path("data/a/b.wav", "rs") == Path("rs/data/a/b.wav")
    assert mirror_path("./data/b.mp3", "rs") == Path("rs/data/b.mp3.wav")
    assert mirror_path("/abs/c.wav", "rs") == Path("rs/abs/c.wav")
    assert mirror_path("../up.wav", "rs") == Path("rs") / Path(os.path.abspath("../up.wav")).relative_to("/")


def test_noise_dir_becomes_the_noise_manifest(clean_corpus):
    write_noise(clean_corpus / "noise" / "n1.wav", 2.0)
    write_noise(clean_corpus / "noise" / "sub" / "n2.wav", 1.0, sample_rate=8000)
    (clean_corpus / "noise" / "readme.txt").write_text("not audio")
    cfg = prep_config(clean_corpus, clean_corpus / "annotation", **{"prep.noise_dir": str(clean_corpus / "noise")})
    summary = create_data(cfg)
    noise = manifest(clean_corpus, "noise")
    assert [(Path(n["audio_filepath"]).name, n["duration"], n["text"]) for n in noise] == [
        ("n1.wav", 2.0, ""), ("n2.wav", 1.0, "")]
    assert Path(noise[1]["audio_filepath"]).is_relative_to(clean_corpus / "resampled")
    assert summary.noise == 2 and f"{cfg.prep.manifest_prefix}.noise" in summary.written


def test_a_run_without_noise_clips_removes_an_earlier_noise_manifest(clean_corpus):
    """Training mixes in <prefix>.noise whenever it exists: an earlier run's must not outlive a run with none."""
    write_noise(clean_corpus / "noise" / "n1.wav", 1.0)
    cfg = prep_config(clean_corpus, clean_corpus / "annotation", **{"prep.noise_dir": str(clean_corpus / "noise")})
    create_data(cfg)
    noise_manifest = Path(f"{cfg.prep.manifest_prefix}.noise")
    assert noise_manifest.is_file()
    (clean_corpus / "noise" / "n1.wav").unlink()
    summary = create_data(cfg)
    assert not noise_manifest.exists() and summary.noise == 0 and summary.removed == [str(noise_manifest)]
    assert summary.line().endswith(f"; removed {noise_manifest} (no noise clips this run)")
    assert str(noise_manifest) not in summary.written
    again = create_data(cfg)
    assert again.removed == [] and "removed" not in again.line()


def expected_stats(paths: list[str], method: str) -> tuple[np.ndarray, np.ndarray]:
    feats = np.concatenate([compute_features(load_audio(p), method).astype(np.float64) for p in paths])
    return feats.mean(axis=0), feats.std(axis=0)


@pytest.mark.parametrize("method,dim", [("linear", 161), ("fbank", 80)])
def test_mean_std_equals_numpy_over_the_training_set(clean_corpus, method, dim):
    cfg = prep_config(clean_corpus, clean_corpus / "annotation",
                      **{"features.feature_method": method, "data.num_workers": 2})
    create_data(cfg)
    normalizer = load_mean_std(cfg.data.mean_std_path)
    mean, std = expected_stats([t["audio_filepath"] for t in manifest(clean_corpus, "train")], method)
    assert normalizer["feature_method"] == method and normalizer["mean"].shape == (dim,)
    np.testing.assert_allclose(normalizer["mean"], mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(normalizer["std"], std, rtol=1e-4, atol=1e-4)


def test_statistics_sample_is_seeded_and_bounded(clean_corpus):
    cfg = prep_config(clean_corpus, clean_corpus / "annotation", **{"prep.num_samples": 2})
    create_data(cfg)
    first = load_mean_std(cfg.data.mean_std_path)["mean"]
    cfg.data.num_workers = 2
    create_data(cfg)
    np.testing.assert_array_equal(load_mean_std(cfg.data.mean_std_path)["mean"], first)
    all_mean = expected_stats([t["audio_filepath"] for t in manifest(clean_corpus, "train")], "linear")[0]
    assert not np.allclose(first, all_mean, atol=1e-3)  # two of four utterances differ from all four


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "create_data.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_accepts_the_masr_names(clean_corpus):
    out = clean_corpus / "out"
    result = run_script(f"--annotation_path={clean_corpus / 'annotation'}", f"--manifest_prefix={out / 'm'}",
                        "--count_threshold=2", "--num_workers=2", "--num_samples=3", "--min_duration=0.35",
                        "--max_duration=10", "--feature_method=fbank", f"--dataset_vocab={out / 'v.txt'}",
                        f"--mean_std_path={out / 'ms.npz'}", cwd=clean_corpus)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("create_data: kept 3 train") and "1 lines skipped" in last  # d.wav is 0.3 s
    assert "count_threshold: 2" in result.stdout  # the effective config is printed first
    assert load_mean_std(out / "ms.npz")["feature_method"] == "fbank"
    assert (out / "m.train").is_file() and (out / "skipped.txt").is_file()


def test_cli_help_and_errors(tmp_path):
    help_text = run_script("--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "--prep.annotation_path" in help_text.stdout
    unknown = run_script("--no_such_key=1", cwd=tmp_path)
    assert unknown.returncode != 0 and "unknown config key 'no_such_key'" in unknown.stderr
    (tmp_path / "exp.yml").write_text("prep:\n  count_threshold: 4\n", encoding="utf-8")
    printed = run_script("--configs", str(tmp_path / "exp.yml"), "--num_workers=3", "--print_config", cwd=tmp_path)
    assert printed.returncode == 0 and "count_threshold: 4" in printed.stdout and "num_workers: 3" in printed.stdout
    assert not (tmp_path / "dataset").exists()  # --print_config only prints
    missing = run_script(f"--annotation_path={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_spilled_string_column_reads_back_what_it_holds_on_disk(tmp_path):
    from utils.manifest import SpilledStringColumn

    column = SpilledStringColumn(str(tmp_path))
    strings = ["a/b.wav", "", "今天 天气", "tab\there", "x" * 5000]
    for number, text in enumerate(strings):
        column.append(text)
        assert column[number] == text  # read while the writer's buffer holds it
    assert [column[i] for i in range(len(column))] == strings
    assert column[-1] == strings[-1]
    assert column.nbytes() == 8 * len(strings)  # offsets only; the strings are on disk
    assert os.listdir(tmp_path) == []  # an unnamed file: a crash leaves nothing behind
    column.close()


def test_full_disk_is_a_clear_error(clean_corpus):
    out = clean_corpus / "out"
    code = ("import errno, os, sys; import create_data; from utils import manifest\n"
            "def full(self, text): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "manifest.SpilledStringColumn.append = full\n"
            f"sys.argv = ['create_data.py', '--annotation_path={clean_corpus / 'annotation'}', "
            f"'--manifest_prefix={out / 'm'}', '--num_workers=1']\n"
            "create_data.main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "No space left on device" in result.stderr and "free space" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "m.train").exists()


def corrupt_flac(path: Path) -> Path:
    """A FLAC file whose header reads fine and whose frames do not decode (the decoder loses sync)."""
    write_tone(path, 2.0, freq=500.0)
    data = bytearray(path.read_bytes())
    noise = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8)
    data[len(data) // 3:len(data) // 3 + len(noise)] = noise.tobytes()
    path.write_bytes(bytes(data))
    soundfile.info(str(path))  # the header still reads
    with pytest.raises(AudioError):
        load_audio(path)
    return path


def test_test_audio_that_does_not_decode_is_skipped(clean_corpus):
    """A test line whose header reads over frames that do not decode (the statistics never read test
    lines): left out, so no evaluation meets it; its training twin is left out as a test line's audio."""
    bad = corrupt_flac(clean_corpus / "audio" / "bad.flac")
    with open(clean_corpus / "annotation" / "train.txt", "a", encoding="utf-8") as handle:
        handle.write(f"{bad}\tbad one\n")
    write_text(clean_corpus / "annotation" / "test.txt", [f"{bad}\tbad test", f"{clean_corpus / 'audio' / 'x.wav'}\tx"])
    write_tone(clean_corpus / "audio" / "x.wav", 0.5)
    create_data(prep_config(clean_corpus, clean_corpus / "annotation"))
    skipped = sorted((Path(row[0]).name, row[1], row[2].split(" (")[0]) for row in
                     read_skipped(clean_corpus / "out" / "skipped.txt"))
    assert skipped == [("test.txt", "1", "audio: not readable audio"),
                       ("train.txt", "6", "the same audio as test line " + str(clean_corpus / "annotation" / "test.txt")
                        + ":1; kept out of training so that the test set stays unseen")]
    assert [t["text"] for t in manifest(clean_corpus, "test")] == ["x"]
    assert len(manifest(clean_corpus, "train")) == 5


@pytest.mark.parametrize("num_samples", [1, -1])
def test_training_audio_that_does_not_decode_is_skipped_inside_or_outside_the_statistics_sample(
        clean_corpus, num_samples):
    bad = corrupt_flac(clean_corpus / "audio" / "bad.flac")
    with open(clean_corpus / "annotation" / "train.txt", "a", encoding="utf-8") as handle:
        handle.write(f"{bad}\tbad one\n")
    create_data(prep_config(clean_corpus, clean_corpus / "annotation", **{"prep.num_samples": num_samples,
                                                                           "prep.test_every": 0}))
    [skip] = read_skipped(clean_corpus / "out" / "skipped.txt")
    assert skip[1] == "6" and skip[2].startswith("audio: not readable audio")
    assert len(manifest(clean_corpus, "train")) == 5


def test_cr_and_utf16_lists_read_line_by_line(tmp_path):
    """Old Mac files (lone CR) and Windows Notepad's "Unicode" (UTF-16 with its BOM) give one line
    each, numbered as an editor numbers them; a stray CR never reaches skipped.txt raw."""
    tones = [write_tone(tmp_path / "audio" / f"{name}.wav", 0.5) for name in "abc"]
    lines = [f"{tones[0]}\tone", f"{tones[1]}\ttwo", "no tab here", f"{tones[2]}\tthree"]
    (tmp_path / "cr.txt").write_bytes("\r".join(lines).encode("utf-8") + b"\r")
    (tmp_path / "cr_lf.txt").write_bytes("\r".join(lines).encode("utf-8") + b"\n")  # an LF appended to one
    (tmp_path / "u16.txt").write_bytes("\r\n".join(lines).encode("utf-16"))  # with its BOM
    for name in ("cr.txt", "cr_lf.txt", "u16.txt"):
        create_data(prep_config(tmp_path, tmp_path / name, **{"prep.test_every": 0}))
        assert sorted(t["text"] for t in manifest(tmp_path, "train")) == ["one", "three", "two"], name
        assert [row[1:] for row in read_skipped(tmp_path / "out" / "skipped.txt")] == [
            ["3", "no tab; MASR lines are path<TAB>text", "no tab here"]], name


def test_a_stray_cr_inside_a_line_of_an_lf_file_is_a_space_not_a_line_end(tmp_path):
    """Only a file of more lone CRs than LFs has its lines end at CR: elsewhere a CR cut the transcript short
    and shifted every later line number. CRLF files read as before."""
    tones = [write_tone(tmp_path / "audio" / f"{name}.wav", 0.5) for name in "abc"]
    lines = [f"{tones[0]}\tone\rtwo", "no tab here", f"{tones[1]}\tthree", f"{tones[2]}\tfour"]
    (tmp_path / "lf.txt").write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    (tmp_path / "crlf.txt").write_bytes("".join(line + "\r\n" for line in lines).encode("utf-8"))
    (tmp_path / "in.csv").write_bytes(f"{tones[0]},1,one\rtwo\n{tones[1]},1,\"three\rfour\"\n".encode("utf-8"))
    for name in ("lf.txt", "crlf.txt"):
        create_data(prep_config(tmp_path, tmp_path / name, **{"prep.test_every": 0}))
        assert sorted(t["text"] for t in manifest(tmp_path, "train")) == ["four", "one two", "three"], name
        assert [row[1:] for row in read_skipped(tmp_path / "out" / "skipped.txt")] == [
            ["2", "no tab; MASR lines are path<TAB>text", "no tab here"]], name
    create_data(prep_config(tmp_path, tmp_path / "in.csv", **{"prep.test_every": 0}))
    assert sorted(t["text"] for t in manifest(tmp_path, "train")) == ["one two", "three four"]


def test_json_values_that_are_not_strings_are_skipped(tmp_path):
    good = write_tone(tmp_path / "good.wav", 0.5)
    write_text(tmp_path / "in.jsonl", [json.dumps({"audio_filepath": str(good), "text": "ok"}),
                                       json.dumps({"audio_filepath": str(good), "text": ["a", "b"]}),
                                       json.dumps({"audio_filepath": 7, "text": "seven"})])
    create_data(prep_config(tmp_path, tmp_path / "in.jsonl", **{"prep.test_every": 0}))
    assert [row[1:3] for row in read_skipped(tmp_path / "out" / "skipped.txt")] == [
        ["2", "'text' is a JSON list, not a string"], ["3", "'audio_filepath' is a JSON int, not a string"]]


def test_audio_shorter_than_one_window_is_skipped(tmp_path):
    tones = [write_tone(tmp_path / "short.wav", 0.01), write_tone(tmp_path / "long.wav", 0.5)]
    write_text(tmp_path / "in.txt", [f"{tone}\tword" for tone in tones])
    create_data(prep_config(tmp_path, tmp_path / "in.txt", **{"prep.test_every": 0, "data.min_duration": 0.0}))
    assert [row[1:3] for row in read_skipped(tmp_path / "out" / "skipped.txt")] == [
        ["1", "duration 0.010 s: shorter than one feature window (raise --min_duration)"]]


def test_a_failed_write_leaves_the_last_outputs_whole(clean_corpus, monkeypatch):
    """The disk full while the outputs are written: the last run's manifests, vocabulary and mean/std
    all stay as they were (not new manifests beside an old vocabulary), and no temporary file is left."""
    create_data(prep_config(clean_corpus, clean_corpus / "annotation"))
    out = clean_corpus / "out"
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with open(clean_corpus / "annotation" / "train.txt", "a", encoding="utf-8") as handle:
        handle.write(f"{write_tone(clean_corpus / 'audio' / 'z.wav', 0.5)}\tzebra\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(data_prep, "save_mean_std", full)
    with pytest.raises(OSError, match="No space left"):
        create_data(prep_config(clean_corpus, clean_corpus / "annotation"))
    after = {path.name: path.read_bytes() for path in out.iterdir()}
    assert after.keys() - {"skipped.txt"} == before.keys() - {"skipped.txt"}
    assert all(after[name] == before[name] for name in before if name != "skipped.txt")


def test_an_interrupted_or_failed_run_keeps_the_last_skipped_list_and_a_verdict_writes_its_own(
        clean_corpus, monkeypatch):
    """skipped.txt describes the outputs beside it: Ctrl-C or a crash leaves the last run's list (and no
    .tmp); a run that ends in 'no usable training utterance' writes the list that explains it."""
    listing = clean_corpus / "annotation" / "train.txt"
    with open(listing, "a", encoding="utf-8") as handle:
        handle.write("no tab one\n")
    cfg = prep_config(clean_corpus, clean_corpus / "annotation")
    create_data(cfg)
    skipped = clean_corpus / "out" / "skipped.txt"
    before = skipped.read_bytes()
    with open(listing, "a", encoding="utf-8") as handle:
        handle.write("no tab two\n")

    def fail_with(error):
        def fail(*args):
            raise error
        return fail
    for error in (KeyboardInterrupt(), OSError(errno.EIO, "I/O error")):
        with monkeypatch.context() as patch:
            patch.setattr(data_prep, "_feature_stats", fail_with(error))
            with pytest.raises(type(error)):
                create_data(cfg)
        assert skipped.read_bytes() == before and not (clean_corpus / "out" / "skipped.txt.tmp").exists()
    write_text(listing, ["no tab at all"])
    with pytest.raises(DataPrepError, match="no usable training utterance"):
        create_data(cfg)
    assert [row[1:3] for row in read_skipped(skipped)] == [["1", "no tab; MASR lines are path<TAB>text"]]


def test_ctrl_c_while_the_outputs_take_their_names_is_ignored(clean_corpus, monkeypatch):
    """Interrupted halfway through the renames, new manifests would sit beside an old vocabulary."""
    import signal

    real_replace = os.replace
    renamed = []

    def replace_and_interrupt(source, target):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the first output takes its name
        real_replace(source, target)
        renamed.append(Path(target).name)
    monkeypatch.setattr(data_prep.os, "replace", replace_and_interrupt)
    # Ctrl-C as at a terminal: pytest run in the background of a shell inherits SIGINT ignored
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        create_data(prep_config(clean_corpus, clean_corpus / "annotation"))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    except KeyboardInterrupt:  # caught: left to pytest, it would stop the whole session
        pytest.fail(f"Ctrl-C stopped the renames after {renamed}")
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert renamed == ["manifest.train", "manifest.test", "vocabulary.txt", "mean_std.npz"]


def test_cli_ctrl_c_says_the_outputs_are_unchanged(clean_corpus):
    out = clean_corpus / "out"
    code = ("import sys; import create_data; from utils import data_prep\n"
            "def interrupt(*args): raise KeyboardInterrupt\n"
            "data_prep._feature_stats = interrupt\n"
            f"sys.argv = ['create_data.py', '--annotation_path={clean_corpus / 'annotation'}', "
            f"'--manifest_prefix={out / 'm'}', '--noise_dir={clean_corpus / 'no_noise'}', '--num_workers=2']\n"
            "create_data.main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines()[-1] == ("create_data.py: interrupted; the outputs (manifests, vocabulary, "
                                              "mean/std, skipped.txt) are unchanged, as the last run left them")
    assert "Traceback" not in result.stderr and sorted(os.listdir(out)) == []


def test_an_output_path_that_cannot_be_written_stops_before_the_work(tmp_path):
    listing = write_text(tmp_path / "in.txt", [f"{write_tone(tmp_path / 'a.wav', 0.5)}\tword"])
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    cases = {"data.dataset_vocab": (str(tmp_path / "a_file" / "vocabulary.txt"), "cannot make the folder"),
             "data.mean_std_path": (str(tmp_path / "a_folder"), "is a folder; pass --mean_std_path"),
             "prep.resampled_dir": (str(tmp_path / "a_file"), "is a file; pass --resampled_dir")}
    for key, (value, message) in cases.items():
        with pytest.raises(DataPrepError, match=message):
            create_data(prep_config(tmp_path, listing, **{key: value}))
        assert not (tmp_path / "out" / "manifest.train").exists()


def test_to_simplified_converts_transcripts_or_stops_before_the_work(tmp_path, monkeypatch):
    """Without OpenCC every line was skipped one by one, ending in 'no usable training utterance'."""
    import sys

    import utils.text

    listing = write_text(tmp_path / "in.txt", [f"{write_tone(tmp_path / 'a.wav', 0.5)}\t今天天氣很好"])
    create_data(prep_config(tmp_path, listing, **{"prep.to_simplified": True, "prep.test_every": 0}))
    assert [json.loads(line)["text"] for line in (tmp_path / "out" / "manifest.train").read_text().splitlines()] \
        == ["今天天气很好"]

    monkeypatch.setattr(utils.text, "_OPENCC", None)
    monkeypatch.setitem(sys.modules, "opencc", None)
    with pytest.raises(DataPrepError, match="needs OpenCC: pip install opencc-python-reimplemented"):
        create_data(prep_config(tmp_path, listing, **{"prep.to_simplified": True}))

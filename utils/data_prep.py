"""create_data.py's work: transcript lists in; manifests, vocabulary and mean/std out.

Passes, each with a progress bar: read the lists (text normalized in this process) while
worker processes read the audio headers, convert audio at another rate or with several
channels into 16 kHz mono files under `prep.resampled_dir`, then feature statistics on a
seeded sample of training utterances. Audio is never held beyond one file per worker, and kept
lines are held as columns of numbers with their paths and texts in temporary files beside the
manifests (utils/kept.py), so memory grows by less than the manifest's size. A bad line never
stops the run: it goes to `skipped.txt` next to the manifests with its reason; the run fails
only when no training utterance is left.

Manifest paths: as written in the input, relative to the working directory. With
`data.data_dir`, relative inputs resolve against it and are written absolute, so the
manifest reads the same with or without data_dir.
"""
from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import soundfile

from utils import feature_kernels
from utils.annotations import (SKIPPED_NAME, TEST_FILE_STEM, InputError, Skip, SkipLog,
                               find_inputs, read_inputs)
from utils.audio import AudioError, audio_info, load_audio, save_wav
from utils.config import Config, PrepConfig
from utils.features import FEATURE_METHODS, FeatureStats, compute_features, feature_dim, num_frames, save_mean_std
from utils.kept import KeptTable, raw_lines, rows_in_order
from utils.manifest import Utterance, resolve_audio_path, write_manifest
from utils.text import TextError, Vocabulary, check_to_simplified
from utils.worker_pool import Workers, pmap, worker_pool

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au")
STATS_CHUNK = 8  # utterances per statistics task
PROBE_CHUNK = 64  # header probes per task when the lines stream in (their count unknown)
SECONDS_PER_HOUR = 3600.0
MAX_LISTED_CHARS = 10
MAX_LISTED_FILES = 3
MAX_COPY_LENGTH_DIFF = 2  # samples at the target rate a converted copy may differ from its source's header length


class DataPrepError(ValueError):
    """create_data cannot produce usable output; the message says what to do."""


class NothingToTrainOnError(DataPrepError):
    """The inputs left nothing to train on; skipped.txt, written all the same, says why each line was left out."""


@dataclass
class PrepSummary:
    train: int = 0
    test: int = 0
    noise: int = 0
    train_hours: float = 0.0
    test_hours: float = 0.0
    vocab_size: int = 0
    skipped: int = 0
    skipped_path: str = ""
    resampled: int = 0  # files converted by this run
    reused_copies: int = 0  # converted copies from an earlier run, still matching their sources
    oov_test: int = 0
    oov_chars: str = ""
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # outputs of an earlier run that this run has none of

    def line(self) -> str:
        oov = (f", {self.oov_test} test utterances with characters not in the vocabulary ({self.oov_chars})"
               if self.oov_test else "")
        reused = f", {self.reused_copies} earlier resampled copies reused" if self.reused_copies else ""
        return (f"create_data: kept {self.train} train ({self.train_hours:.2f} h) / {self.test} test "
                f"({self.test_hours:.2f} h) utterances, {self.noise} noise clips, vocabulary {self.vocab_size} "
                f"tokens, {self.skipped} lines skipped (see {self.skipped_path}), {self.resampled} files "
                f"resampled{reused}{oov}; wrote {', '.join(self.written)}"
                + (f"; removed {', '.join(self.removed)} (no noise clips this run)" if self.removed else ""))


def create_data(cfg: Config) -> PrepSummary:
    """Write <prefix>.train/.test(/.noise), the vocabulary and mean/std; returns the counts."""
    _check_config(cfg)
    try:
        files = find_inputs(cfg.prep.annotation_path)
    except InputError as err:
        raise DataPrepError(str(err)) from None
    summary = PrepSummary(skipped_path=str(Path(cfg.prep.manifest_prefix).parent / SKIPPED_NAME))
    with SkipLog(Path(summary.skipped_path), complete_on=(NothingToTrainOnError,)) as skips:
        kept, train, test, noise, mean, std = _read_convert_and_measure(files, cfg, skips, summary)
        vocab = Vocabulary.build((kept.text(row) for row in train), cfg.prep.count_threshold)
        oov = [chars for chars in (vocab.unknown_chars(kept.text(row)) for row in test) if chars]
        summary.oov_test = len(oov)
        summary.oov_chars = "".join(sorted(set().union(*oov)))[:MAX_LISTED_CHARS]
        summary.written, summary.removed = _write_outputs(cfg, kept, train, test, noise, vocab, mean, std,
                                                          skips)
    summary.train, summary.test, summary.vocab_size = len(train), len(test), len(vocab)
    summary.noise = len(noise.alive())
    durations = kept.duration_array()
    summary.train_hours = float(durations[train].sum()) / SECONDS_PER_HOUR
    summary.test_hours = float(durations[test].sum()) / SECONDS_PER_HOUR
    return summary


def _read_convert_and_measure(files: list[Path], cfg: Config, skips: SkipLog, summary: PrepSummary) -> tuple:
    """The worker pool's part: (kept, train rows, test rows, noise, mean, std); every line left out
    goes to `skips`, and summary gets the resampled and skipped counts."""
    with worker_pool(cfg.data.num_workers) as workers:
        kept = _read_and_probe(files, cfg, skips, workers)
        if not len(kept) and not skips.count:  # not one line read: skipped.txt would explain nothing
            raise NothingToTrainOnError(_no_lines_message(files))
        train, test = _split(kept, cfg.prep, any(f.stem.lower() == TEST_FILE_STEM for f in files))
        _drop_test_audio_from_train(kept, train, test)
        noise = _probe_noise(cfg, skips, workers)
        summary.resampled, summary.reused_copies = _convert_all([kept, noise], cfg, workers)
        for table in (kept, noise):
            table.write_drops(skips, raw_lines)
        train = _require_train(kept, train, summary.skipped_path)
        try:
            mean, std, decoded = _feature_stats(kept, train, cfg, workers)
            _decode_check(kept, np.setdiff1d(kept.alive(np.concatenate([train, test])), decoded), cfg, workers)
            _decode_check(noise, noise.alive(), cfg, workers)
        finally:  # skipped.txt names every failure, also when no frames were left
            for table in (kept, noise):
                table.write_drops(skips, raw_lines)
        train, test = _require_train(kept, train, summary.skipped_path), kept.alive(test)
        summary.skipped = skips.count
    return kept, train, test, noise, mean, std


def _check_config(cfg: Config) -> None:
    if cfg.features.feature_method not in FEATURE_METHODS:
        raise DataPrepError(f"features.feature_method '{cfg.features.feature_method}' is unknown; "
                            f"use one of {FEATURE_METHODS}")
    if not 0 <= cfg.data.min_duration <= cfg.data.max_duration:
        raise DataPrepError(f"need 0 <= min_duration ({cfg.data.min_duration}) <= max_duration "
                            f"({cfg.data.max_duration}); fix --min_duration/--max_duration")
    if cfg.prep.num_samples == 0 or cfg.prep.num_samples < -1:
        raise DataPrepError(f"num_samples is {cfg.prep.num_samples}; use -1 (all) or a positive count")
    if cfg.prep.test_every < 0 or cfg.prep.max_test < 0:
        raise DataPrepError("prep.test_every and prep.max_test must be >= 0 (0 turns the split off)")
    if cfg.prep.to_simplified:
        try:
            check_to_simplified()
        except TextError as err:
            raise DataPrepError(str(err)) from None
    _check_outputs(cfg)


def _check_outputs(cfg: Config) -> None:
    """Every output's folder made now, and no output a folder: such a fault would otherwise surface
    only after all the work, when the outputs are written."""
    files = {"prep.manifest_prefix": f"{cfg.prep.manifest_prefix}.train", "data.dataset_vocab": cfg.data.dataset_vocab,
             "data.mean_std_path": cfg.data.mean_std_path}
    if Path(cfg.prep.resampled_dir).is_file():
        raise DataPrepError(f"prep.resampled_dir {cfg.prep.resampled_dir} is a file; pass --resampled_dir=a folder")
    for key, folder in ((key, str(Path(path).parent)) for key, path in files.items()):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataPrepError(f"cannot make the folder {folder} for {key} ({err.strerror}); "
                                f"pass --{key.split('.')[-1]}=a path in a writable folder") from None
    for key, path in files.items():
        if Path(path).is_dir():
            raise DataPrepError(f"{path} ({key}) is a folder; pass --{key.split('.')[-1]}=a file path")


def _require_train(kept: KeptTable, train: np.ndarray, skipped_path: str) -> np.ndarray:
    """The training rows still alive; an error when none is."""
    train = kept.alive(train)
    if not len(train):
        raise NothingToTrainOnError(f"no usable training utterance is left; every line was skipped or went to the "
                                    f"test set. See {skipped_path} for the reason of each skipped line")
    return train


def _no_lines_message(files: list[Path]) -> str:
    names = ", ".join(str(path) for path in files[:MAX_LISTED_FILES])
    more = f" and {len(files) - MAX_LISTED_FILES} more" if len(files) > MAX_LISTED_FILES else ""
    return (f"the annotation lists hold no lines (they are empty, blank or a CSV header only): {names}{more}; "
            f"write one utterance a line (MASR: path<TAB>text) and rerun")


def _audio_reason(err: AudioError, path: str) -> str:
    """'audio: file not found' from 'some/path.wav: file not found'."""
    message = str(err)
    for prefix in (f"{path}: ", f"{Path(path)}: "):
        message = message.removeprefix(prefix)
    return f"audio: {message}"


def _probe_one(path: str) -> tuple[int, int, float] | str:
    """(sample_rate, channels, duration) from the header, or the reason it cannot be used."""
    try:
        return audio_info(path)
    except AudioError as err:
        return _audio_reason(err, path)


def _read_and_probe(files: list[Path], cfg: Config, skips: SkipLog, workers: Workers) -> KeptTable:
    """Read the lists and probe each line's audio header, streaming: the lines in flight to the
    workers wait in a queue, in order, and each lands in the table or in skipped.txt."""
    pending: collections.deque = collections.deque()  # Skip and (Candidate, path) records, in line order

    def paths() -> Iterator[str]:  # with a pool it runs in the pool's task thread: it only queues, never writes
        for record in read_inputs(files, cfg.prep.to_simplified):
            if isinstance(record, Skip):
                pending.append(record)
                continue
            path = resolve_audio_path(record.audio_path, cfg.data.data_dir)
            pending.append((record, path))
            yield path

    kept = KeptTable(_spill_dir(cfg))
    limits = cfg.data.min_duration, cfg.data.max_duration
    for info in pmap(workers, _probe_one, paths(), "audio headers", chunksize=PROBE_CHUNK):
        while isinstance(pending[0], Skip):
            record = pending.popleft()
            skips.add(record.source, record.line_no, record.reason, record.raw)
        cand, path = pending.popleft()
        if isinstance(info, str):
            skips.add(cand.source, cand.line_no, info, cand.raw)
            continue
        rate, channels, duration = info
        if not limits[0] <= duration <= limits[1]:
            skips.add(cand.source, cand.line_no, f"duration {duration:.2f} s outside [{limits[0]}, {limits[1]}] "
                      f"(min_duration/max_duration)", cand.raw)
            continue
        if num_frames(int(duration * cfg.features.sample_rate), cfg.features.feature_method,
                      cfg.features.sample_rate) == 0:
            skips.add(cand.source, cand.line_no, f"duration {duration:.3f} s: shorter than one feature window "
                      f"(raise --min_duration)", cand.raw)
            continue
        kept.append(cand.source, cand.line_no, path, cand.text, duration, rate, channels, cand.is_test_file)
    for record in pending:  # skips after the last candidate
        skips.add(record.source, record.line_no, record.reason, record.raw)
    return kept


def _spill_dir(cfg: Config) -> str:
    """Where kept lines' paths and texts wait until the manifests are written: beside them, on the
    disk that will hold them (TMPDIR is often a RAM-backed tmpfs)."""
    return str(Path(cfg.prep.manifest_prefix).resolve().parent)


def _split(kept: KeptTable, prep: PrepConfig, has_test_file: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of train and test: a test.txt input is the test set; else every test_every-th kept
    line, at most max_test of them."""
    rows = kept.rows()
    if has_test_file:
        to_test = np.array([kept.is_test_file(row) for row in rows], dtype=bool)
    else:
        to_test = np.zeros(len(kept), dtype=bool)
        if prep.test_every > 0:
            to_test[rows[::prep.test_every][:prep.max_test]] = True
    return rows[~to_test], rows[to_test]


def _drop_test_audio_from_train(kept: KeptTable, train: np.ndarray, test: np.ndarray) -> None:
    """Training lines whose audio file is also a test line's are dropped (to skipped.txt): the same
    recording on both sides would score the model on what it trained on. Holds the test set's paths."""
    test_lines = {os.path.abspath(kept.input_path(int(row))): int(row) for row in test}
    for row in train:
        twin = test_lines.get(os.path.abspath(kept.input_path(int(row))))
        if twin is not None:
            kept.drop(int(row), f"the same audio as test line {kept.where(twin)}; kept out of training so that "
                                f"the test set stays unseen")


def _probe_noise(cfg: Config, skips: SkipLog, workers: Workers) -> KeptTable:
    """Every audio file under prep.noise_dir (text ''), except converted copies under resampled_dir."""
    noise_dir = Path(cfg.prep.noise_dir)
    noise = KeptTable(_spill_dir(cfg))
    if not noise_dir.is_dir():
        return noise
    resampled = Path(cfg.prep.resampled_dir).resolve()
    paths = sorted(str(p) for p in noise_dir.rglob("*")
                   if p.suffix.lower() in AUDIO_SUFFIXES and resampled not in p.resolve().parents)
    for path, info in zip(paths, pmap(workers, _probe_one, paths, "noise headers", unit="file")):
        if isinstance(info, str):
            skips.add(str(noise_dir), 0, info, path)
        else:
            noise.append(str(noise_dir), 0, path, "", info[2], info[0], info[1])
    return noise


def mirror_path(source: str, resampled_dir: str) -> Path:
    """Where the 16 kHz mono copy of `source` goes: its path mirrored under resampled_dir, ending .wav."""
    relative = os.path.normpath(source)
    if os.path.isabs(relative) or relative.split(os.sep)[0] == os.pardir:
        absolute = Path(os.path.abspath(source))
        relative = str(absolute.relative_to(absolute.anchor))
    name = relative if relative.lower().endswith(".wav") else relative + ".wav"
    return Path(resampled_dir) / name


def _reusable_copy_duration(src: str, dst: str, rate: int, source_duration: float) -> Optional[float]:
    """Duration of an earlier conversion of src, or None when it must be converted again.

    A copy is reused only when its modification time equals the source's (each conversion stamps its
    copy with the source's time, to the nanosecond), it is mono at `rate`, and its length agrees with
    the source header's within MAX_COPY_LENGTH_DIFF samples. "Newer than the source" is not enough:
    tar, unzip, cp -p and rsync -a give a replaced source its old, earlier time."""
    try:
        if os.stat(dst).st_mtime_ns != os.stat(src).st_mtime_ns:
            return None
        info = soundfile.info(dst)
    except (OSError, RuntimeError):  # no copy yet, or an unreadable one: convert again
        return None
    usable = (info.samplerate == rate and info.channels == 1 and info.frames > 0
              and abs(info.frames - source_duration * rate) <= MAX_COPY_LENGTH_DIFF)
    return info.frames / rate if usable else None


def _convert_one(job: tuple[str, str, int, float]) -> tuple[float, bool] | str:
    """Convert src into a new mono wav at `rate` stamped with src's modification time (reusing an earlier
    copy of this very source); (duration, whether it was converted now rather than reused) or the reason."""
    src, dst, rate, source_duration = job
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return f"audio: converting would overwrite the original {src}; set prep.resampled_dir elsewhere"
    duration = _reusable_copy_duration(src, dst, rate, source_duration)
    if duration is not None:
        return duration, False
    try:
        source_stat = os.stat(src)  # taken before reading: a source replaced meanwhile no longer matches
    except OSError as err:
        return f"audio: cannot read the file ({err.strerror})"
    try:
        samples = load_audio(src, rate)  # [N] mono at rate
    except AudioError as err:
        return _audio_reason(err, src)
    try:
        save_wav(dst, samples, rate)
        os.utime(dst, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))
    except (OSError, RuntimeError) as err:
        raise DataPrepError(f"cannot write {dst} ({err}); make prep.resampled_dir writable and give it space") \
            from None
    return len(samples) / rate, True


def _convert_all(tables: list[KeptTable], cfg: Config, workers: Workers) -> tuple[int, int]:
    """Convert each distinct file at another rate or with several channels once; failures are
    dropped from the tables. Returns (files converted now, earlier copies reused)."""
    rate, resampled_dir = cfg.features.sample_rate, cfg.prep.resampled_dir
    sources: dict[str, float] = {}  # distinct files to convert -> header duration, in first-seen order
    for table in tables:
        for row in range(len(table)):
            if table.sample_rates[row] != rate or table.channels[row] != 1:
                sources.setdefault(table.input_path(row), table.durations[row])
    if not sources:
        return 0, 0
    tasks = ((src, str(mirror_path(src, resampled_dir)), rate, duration) for src, duration in sources.items())
    results = dict(zip(sources, pmap(workers, _convert_one, tasks, "resample", unit="file", chunksize=1,
                                      total=len(sources))))
    for table in tables:
        table.converted_path = lambda path: str(mirror_path(path, resampled_dir))
        for row in range(len(table)):
            result = results.get(table.input_path(row))
            if isinstance(result, str):
                table.drop(row, result)
            elif result is not None:
                table.converted[row], table.durations[row] = True, result[0]
                table.sample_rates[row], table.channels[row] = rate, 1
    outcomes = [result[1] for result in results.values() if not isinstance(result, str)]
    return sum(outcomes), len(outcomes) - sum(outcomes)


def _stats_chunk(job: tuple[list[tuple[int, str]], str, int, int]) -> tuple[FeatureStats, list[tuple[int, str]]]:
    """Feature sums over a few files (no Paddle); failures come back as (index, reason)."""
    items, method, rate, n_mels = job
    stats = FeatureStats(feature_dim(method, rate, n_mels))
    failures = []
    for index, path in items:
        try:
            samples = load_audio(path, rate)
        except AudioError as err:
            failures.append((index, _audio_reason(err, path)))
            continue
        stats.add(compute_features(samples, method, rate, n_mels))  # feats [T, D]
    return stats, failures


def _feature_stats(kept: KeptTable, train: np.ndarray, cfg: Config,
                   workers: Workers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean/std [D] over a seeded sample of num_samples training rows (-1: all of them), and the rows
    of that sample (their audio decoded here).

    Rows whose audio fails to decode here are dropped from the table (and go to skipped.txt).
    """
    count = len(train) if cfg.prep.num_samples < 0 else min(cfg.prep.num_samples, len(train))
    sample = np.sort(train[random.Random(cfg.train.seed).sample(range(len(train)), count)])
    starts = range(0, len(sample), STATS_CHUNK)
    feats = cfg.features
    tasks = (([(int(row), kept.path(int(row))) for row in sample[i:i + STATS_CHUNK]], feats.feature_method,
              feats.sample_rate, feats.n_mels) for i in starts)
    total = FeatureStats(feature_dim(feats.feature_method, feats.sample_rate, feats.n_mels))
    feature_kernels.load()  # built once here, not by each worker
    for stats, failures in pmap(workers, _stats_chunk, tasks, "mean/std", chunksize=1,
                                 weights=[min(STATS_CHUNK, len(sample) - i) for i in starts]):
        total.merge(stats)
        for row, reason in failures:
            kept.drop(row, reason)
    if total.frames == 0:
        raise NothingToTrainOnError("the sampled training audio gave no feature frames (all shorter than one "
                                    "window); raise --min_duration or check the audio")
    return (*total.mean_std(), sample)


def _decode_one(job: tuple[int, str, int]) -> tuple[int, str | None]:
    row, path, rate = job
    try:
        load_audio(path, rate)
    except AudioError as err:
        return row, _audio_reason(err, path)
    return row, None


def _decode_check(table: KeptTable, rows: np.ndarray, cfg: Config, workers: Workers) -> None:
    """Decode the audio of the rows not decoded by the conversion or the statistics: a header can read
    fine over data that does not (a FLAC file that lost sync), and such a file would otherwise stop a
    training epoch or an evaluation that reaches it. Failures are dropped from the table. 16-bit WAV
    files cost a file read each."""
    rows = rows[~np.frombuffer(table.converted, dtype=np.int8).astype(bool)[rows]]
    if not len(rows):
        return
    tasks = ((int(row), table.path(int(row)), cfg.features.sample_rate) for row in rows)
    for row, reason in pmap(workers, _decode_one, tasks, "audio check", total=len(rows)):
        if reason is not None:
            table.drop(row, reason)


def _manifest_path(path: str, data_dir: Optional[str]) -> str:
    """The path as written: unchanged, or absolute when data_dir is set (reads with or without it)."""
    return os.path.abspath(path) if data_dir and not os.path.isabs(path) else path


def _utterances(table: KeptTable, rows: np.ndarray, data_dir: Optional[str],
                by_duration: bool = True) -> Iterator[Utterance]:
    order = rows_in_order(rows, table.duration_array()) if by_duration \
        else (int(row) for row in rows)
    for row in order:
        yield Utterance(_manifest_path(table.path(row), data_dir), table.durations[row], table.text(row))


def _write_outputs(cfg: Config, kept: KeptTable, train: np.ndarray, test: np.ndarray, noise: KeptTable,
                   vocab: Vocabulary, mean: np.ndarray, std: np.ndarray,
                   skips: SkipLog) -> tuple[list[str], list[str]]:
    """The outputs, each written under a temporary name (`<name>.new`); they take their names, and
    skipped.txt its, only once all are written, so that an error (a full disk) or Ctrl-C leaves the last
    run's set whole, never new manifests beside an old vocabulary, and no temporary file. With no noise
    clip, an earlier run's <prefix>.noise is removed then (training would still mix its clips in).
    Returns (written, removed)."""
    prefix, data_dir, feats = cfg.prep.manifest_prefix, cfg.data.data_dir, cfg.features
    noise_rows = noise.alive()
    manifests = {f"{prefix}.train": _utterances(kept, train, data_dir), f"{prefix}.test": _utterances(kept, test, data_dir)}
    if len(noise_rows):
        manifests[f"{prefix}.noise"] = _utterances(noise, noise_rows, data_dir, by_duration=False)
    outputs = [*manifests, cfg.data.dataset_vocab, cfg.data.mean_std_path]
    staged = {path: f"{path}.new" for path in outputs}
    try:
        for path, utterances in manifests.items():
            write_manifest(staged[path], utterances)
        vocab.save(staged[cfg.data.dataset_vocab])
        with open(staged[cfg.data.mean_std_path], "wb") as handle:
            save_mean_std(handle, mean, std, feats.feature_method, feats.sample_rate, feats.n_mels)
        stale_noise = [] if len(noise_rows) or not os.path.lexists(f"{prefix}.noise") else [f"{prefix}.noise"]
        _make_current(staged, stale_noise, skips)
    finally:
        for path in staged.values():
            Path(path).unlink(missing_ok=True)
    return outputs, stale_noise


def _make_current(staged: dict[str, str], stale: list[str], skips: SkipLog) -> None:
    """The renames (and removals) that make a run's outputs the current ones, with Ctrl-C ignored for
    their few milliseconds: interrupted halfway they would pair new manifests with an old vocabulary."""
    with _sigint_ignored():
        for path, staged_path in staged.items():
            os.replace(staged_path, path)
        for path in stale:
            os.remove(path)
        skips.commit()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

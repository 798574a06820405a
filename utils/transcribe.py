"""infer.py's library: find the inputs, transcribe each file (long ones split at silences)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.annotations import decoded_lines, unreadable_reason
from utils.audio import AudioError, audio_info, load_audio
from utils.features import STRIDE_MS, compute_features
from utils.vad import MAX_SEGMENT_S, cap_length, speech_segments

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".au"}
LIST_SUFFIXES = {".txt", ".lst", ".list", ".scp"}
LONG_AUDIO_AUTO_S = 60.0  # longer files are split at silences even without --is_long_audio


@dataclass
class Transcript:
    path: str
    text: str = ""
    duration: float = 0.0
    seconds: float = 0.0  # wall time to transcribe
    times: list = field(default_factory=list)  # [(word or character, start_s, end_s)]
    error: str = ""


def list_inputs(wav_path: str) -> list[str]:
    """One audio file, every audio file in a folder (sorted; a folder named x.wav is not one), or the
    paths of a list file (one a line, optionally followed by a tab and anything; blank lines and
    lines that start with # are skipped)."""
    path = Path(wav_path)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
        return files
    if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        paths = []
        for line_no, line, raw in decoded_lines(path):  # as create_data reads lists; no blank lines
            if unreadable_reason(line, raw) is not None:
                raise ValueError(f"{path}:{line_no}: not UTF-8 text ({raw.strip()[:60]!r}); re-save the list as "
                                 f"UTF-8 (e.g. iconv -f GB18030 -t UTF-8 {path} > {path.stem}.utf8{path.suffix}; "
                                 f"-f UTF-16LE for UTF-16 without a BOM)")
            if not line.strip().startswith("#"):
                paths.append(line.split("\t")[0].strip())
        if not paths:
            raise ValueError(f"{path} lists no audio files (it is empty or holds only blank and # lines); "
                             f"write one audio path a line")
        return paths
    if not path.exists():  # one file: said before the model loads (a list's missing files are said one by one)
        raise FileNotFoundError(f"{path}: file not found; --wav_path takes an audio file, a folder of audio "
                                f"or a list file ({', '.join(sorted(LIST_SUFFIXES))})")
    return [str(path)]


def _pieces(samples: np.ndarray, sample_rate: int, split: bool) -> list[tuple[int, int]]:
    if not split:
        return [(0, len(samples))]
    # no speech found: decode it all anyway, in pieces of at most MAX_SEGMENT_S (an hour of silence
    # must not become one hour-long forward pass)
    return (speech_segments(samples, sample_rate)
            or cap_length((0, len(samples)), int(MAX_SEGMENT_S * sample_rate)))


def transcribe(path: str, runner, decode_fn, is_long_audio: bool, timestamps: bool) -> Transcript:
    """Text of one file; errors become Transcript.error (the caller reports them)."""
    from utils.decoders import group_token_times

    start, f = time.perf_counter(), runner.cfg.features
    result = Transcript(path)
    try:
        audio_info(path)  # missing, empty or unreadable files get a message that says which
        samples = load_audio(path, f.sample_rate)
    except AudioError as err:
        result.error = str(err)
        return result
    result.duration = len(samples) / f.sample_rate
    split = is_long_audio or result.duration > LONG_AUDIO_AUTO_S
    frame_shift = STRIDE_MS / 1000 * int(np.prod([s[1] for s in runner.cfg.model.conv_strides]))
    texts = []
    for begin, end in _pieces(samples, f.sample_rate, split):
        feats = compute_features(samples[begin:end], f.feature_method, f.sample_rate, f.n_mels)  # [T, D]
        if len(feats) == 0:
            continue
        log_probs, out_lens = runner(feats[None], np.array([len(feats)], dtype=np.int64))
        texts.append(decode_fn(log_probs, out_lens)[0])
        if timestamps:
            offset = begin / f.sample_rate
            tokens = text_times(log_probs[0, :out_lens[0]], texts[-1], runner.vocabulary, frame_shift)
            result.times += [(t, min(s + offset, result.duration), min(e + offset, result.duration))
                             for t, s, e in group_token_times(tokens)]
    joiner = "" if texts and all(not (" " in t) for t in texts) and _mostly_cjk("".join(texts)) else " "
    result.text = joiner.join(t for t in texts if t)
    if result.duration < 0.1:
        result.error = f"{path}: only {result.duration * 1000:.0f} ms of audio; nothing to recognise"
    result.seconds = time.perf_counter() - start
    return result


def text_times(log_probs_one: np.ndarray, text: str, vocabulary, frame_shift_s: float) -> list[tuple[str, float, float]]:
    """(character, start_s, end_s) for every character of the decoded `text`, spaces included as " "
    (group_token_times splits words at them): the run of frames each one holds on the most likely
    CTC path that spells `text` (ctc_align). The text is whatever the decoder chose, so a beam search
    that overrules the frame-wise argmax gets times for its own words, not the greedy path's.
    log_probs_one [T, V] (valid frames only); start = first frame x shift, end = (last frame + 1) x shift.
    """
    ids = np.array(vocabulary.encode(text), dtype=np.int64)  # [L]
    first, last = ctc_align(log_probs_one, ids)
    return [(char, float(a * frame_shift_s), float((b + 1) * frame_shift_s)) for char, a, b in zip(text, first, last)]


def ctc_align(log_probs_one: np.ndarray, ids: np.ndarray, blank_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """First and last frame [L] of each of ids [L] on the most likely CTC path that collapses to them
    (Viterbi forced alignment over log_probs_one [T, V]), in O(T * (2L + 1)).

    States: blank, ids[0], blank, ids[1], ..., blank [S = 2L + 1]. A path stays in a state, moves
    to the next one, or skips the blank between two different tokens (a repeated token needs one).
    """
    ids = np.asarray(ids, dtype=np.int64)
    frames, length = len(log_probs_one), len(ids)
    if length == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if frames < length + int(np.sum(ids[1:] == ids[:-1])):
        raise ValueError(f"{length} tokens need more than the {frames} output frames they were decoded from")
    states = np.full(2 * length + 1, blank_id, dtype=np.int64)  # [S]
    states[1::2] = ids
    may_skip = np.zeros(len(states), dtype=bool)  # [S]: entered from two states back
    may_skip[3::2] = ids[1:] != ids[:-1]
    emit = np.asarray(log_probs_one, dtype=np.float64)[:, states]  # [T, S]
    score = np.full(len(states), -np.inf)  # [S] best log-prob of a path ending in each state
    score[:2] = emit[0, :2]
    moves = np.zeros((frames, len(states)), dtype=np.int8)  # [T, S] 0 stay, 1 from s - 1, 2 from s - 2
    for t in range(1, frames):
        step = np.concatenate([[-np.inf], score[:-1]])
        skip = np.where(may_skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        candidates = np.stack([score, step, skip])  # [3, S]
        moves[t] = candidates.argmax(axis=0)
        score = candidates.max(axis=0) + emit[t]
    state = len(states) - 1 if score[-1] >= score[-2] else len(states) - 2  # end in the last blank or token
    if not np.isfinite(score[state]):
        raise ValueError(f"no CTC path spells these {length} tokens: a frame they need has probability 0")
    path = np.empty(frames, dtype=np.int64)  # [T] state of each frame, non-decreasing
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= moves[t, state]
    token_states = 2 * np.arange(length) + 1
    return np.searchsorted(path, token_states, "left"), np.searchsorted(path, token_states, "right") - 1


def _mostly_cjk(text: str) -> bool:
    from utils.text import is_cjk

    return bool(text) and 2 * sum(is_cjk(c) for c in text) >= len(text)


def warm_up(runner, seconds: float = 1.0) -> None:
    """One forward pass on silence, so that one-time costs (feature and kernel set-up) count as
    loading time instead of inflating the first file's real-time factor."""
    f = runner.cfg.features
    feats = compute_features(np.zeros(int(seconds * f.sample_rate), np.float32), f.feature_method,
                             f.sample_rate, f.n_mels)  # [T, D]
    runner(feats[None], np.array([len(feats)], dtype=np.int64))


def run_infer(cfg, model_folder: Path) -> tuple[str, int]:
    """Transcribe cfg.infer.wav_path; prints one line per file. Returns (summary, files that failed)."""
    from utils.evaluate import make_decode_fn
    from utils.inference import load_runner

    inputs = list_inputs(cfg.infer.wav_path)  # a bad list or folder stops the run before the model loads
    load_start = time.perf_counter()
    runner = load_runner(model_folder, cfg.infer.runtime)
    decode_fn = make_decode_fn(cfg.decode.decoder, cfg.decode, runner.vocabulary.tokens)
    warm_up(runner)
    load_seconds = time.perf_counter() - load_start
    failed, audio, wall = 0, 0.0, 0.0
    for path in inputs:
        result = transcribe(path, runner, decode_fn, cfg.infer.is_long_audio, cfg.infer.timestamps)
        if result.error:
            failed += 1
            print(f"error: {result.error}", file=sys.stderr, flush=True)
            continue
        audio, wall = audio + result.duration, wall + result.seconds
        print(f"{path}\t{result.text}\t({result.duration:.2f} s audio, {result.seconds * 1000:.0f} ms, "
              f"RTF {result.seconds / max(result.duration, 1e-9):.4f})")
        for token, begin, end in result.times:
            print(f"  {begin:7.2f} {end:7.2f}  {token}")
    summary = (f"transcribed {audio:.1f} s of audio in {wall:.2f} s (RTF {wall / max(audio, 1e-9):.4f}) with the "
               f"{runner.kind} {model_folder} and {cfg.decode.decoder} (loading took {load_seconds:.1f} s); "
               f"{failed} file(s) failed")
    return summary, failed

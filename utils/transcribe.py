"""infer.py's library: find the inputs, transcribe each file (long ones split at silences)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        paths = [line.split("\t")[0].strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not paths:
            raise ValueError(f"{path} lists no audio files (it is empty or holds only blank and # lines); "
                             f"write one audio path a line")
        return paths
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
    from utils.decoders import greedy_decode_with_times, group_token_times

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
            tokens = greedy_decode_with_times(log_probs[0, :out_lens[0]], runner.vocabulary.tokens, frame_shift)
            result.times += [(t, min(s + offset, result.duration), min(e + offset, result.duration))
                             for t, s, e in group_token_times(tokens)]
    joiner = "" if texts and all(not (" " in t) for t in texts) and _mostly_cjk("".join(texts)) else " "
    result.text = joiner.join(t for t in texts if t)
    if result.duration < 0.1:
        result.error = f"{path}: only {result.duration * 1000:.0f} ms of audio; nothing to recognise"
    result.seconds = time.perf_counter() - start
    return result


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

    load_start = time.perf_counter()
    runner = load_runner(model_folder, cfg.infer.runtime)
    decode_fn = make_decode_fn(cfg.decode.decoder, cfg.decode, runner.vocabulary.tokens)
    warm_up(runner)
    load_seconds = time.perf_counter() - load_start
    failed, audio, wall = 0, 0.0, 0.0
    for path in list_inputs(cfg.infer.wav_path):
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

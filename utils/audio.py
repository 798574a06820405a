"""Audio loading: any file soundfile reads (16-bit PCM WAV through the wave module, same values,
three times faster), mixed to mono float32, resampled with soxr."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soundfile
import soxr

TARGET_SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file and the reason."""


def audio_info(path: str | Path) -> tuple[int, int, float]:
    """(sample_rate, channels, duration_s) from the header alone; AudioError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise AudioError(f"{path}: not readable audio ({err})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: zero duration")
    return info.samplerate, info.channels, info.frames / info.samplerate


PCM16_SCALE = np.float32(1.0 / 32768)  # libsndfile's float scale for 16-bit PCM


def read_pcm16_wav(path: str | Path) -> tuple[np.ndarray, int] | None:
    """(samples [N, C] float32, rate) of a 16-bit PCM WAV file, with the same values soundfile
    gives, through the standard library's wave module; None for any other file or on any error
    (soundfile reads it then and reports). About 0.04 ms a 1.5 s file against soundfile's 0.13,
    a tenth of a training sample's CPU."""
    try:
        with wave.open(str(path), "rb") as handle:
            if handle.getsampwidth() != 2 or handle.getcomptype() != "NONE":
                return None
            channels, rate = handle.getnchannels(), handle.getframerate()
            raw = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError, OSError):
        return None
    frames = len(raw) // (2 * channels)  # a truncated last frame is left out, as soundfile does
    pcm = np.frombuffer(raw, dtype="<i2", count=frames * channels).reshape(frames, channels)
    return pcm.astype(np.float32) * PCM16_SCALE, rate


def load_audio(path: str | Path, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """samples [N] float32 in [-1, 1], mono, at `sample_rate`."""
    pcm16 = read_pcm16_wav(path)
    try:
        samples, file_rate = pcm16 or soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        if not Path(path).is_file():
            raise AudioError(f"{path}: file not found") from None
        raise AudioError(f"{path}: not readable audio ({err})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: zero duration")
    samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]  # [N]
    if file_rate != sample_rate:
        samples = resample(samples, file_rate, sample_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int, quality: str = "HQ") -> np.ndarray:
    """samples [N] -> [N * to_rate / from_rate] with soxr's resampler (high quality unless told)."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality=quality).astype(np.float32, copy=False)


def save_wav(path: str | Path, samples: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
    """16-bit PCM wav, written to a temporary name first so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    soundfile.write(str(tmp), samples, sample_rate, subtype="PCM_16", format="WAV")
    tmp.replace(path)

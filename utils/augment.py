"""Data augmentation: small functions on audio samples [N] or features [T, D].

`conf/augmentation.json` is a list of {"type", "params", "prob"}; each entry runs with
probability `prob`, in file order, audio-domain entries before feature-domain ones.
Every function takes a numpy Generator so a seeded run augments identically.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from utils import feature_kernels
from utils.audio import AudioError, load_audio, resample


def _fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """samples cut or padded with silence to `length` (a resampler's output is off by a sample or so)."""
    return samples[:length] if len(samples) >= length else np.pad(samples, (0, length - len(samples)))


def speed_perturb(samples: np.ndarray, rng: np.random.Generator, min_rate: float = 0.9,
                  max_rate: float = 1.1) -> np.ndarray:
    """Play faster or slower (pitch moves with it, as Kaldi's speed perturbation): [N] -> [N / rate].

    Cubic interpolation (soxr's quick method): our C++ resampler (utils/feature_kernels.py) where it
    builds, 0.07 ms a 2.5 s clip, else soxr's own "QQ" at 0.25 ms; the two agree within 0.4 % RMS."""
    rate = rng.uniform(min_rate, max_rate)
    new_len = max(1, int(round(len(samples) / rate)))
    stretched = feature_kernels.cubic_resample(samples, new_len)
    if stretched is not None:
        return stretched
    return _fit_length(resample(samples, len(samples), new_len, quality="QQ"), new_len)


def volume_perturb(samples: np.ndarray, rng: np.random.Generator, min_gain_db: float = -10.0,
                   max_gain_db: float = 6.0) -> np.ndarray:
    gain = np.float32(10.0 ** (rng.uniform(min_gain_db, max_gain_db) / 20.0))
    scaled = feature_kernels.scale_clip(samples, gain)  # one pass in C++: the step 11 us a 3.5 s clip against 18
    if scaled is not None:
        return scaled
    louder = np.multiply(samples, gain, dtype=np.float32)
    return np.clip(louder, -1.0, 1.0, out=louder)


def time_shift(samples: np.ndarray, rng: np.random.Generator, max_shift_ms: float = 50.0,
               sample_rate: int = 16000) -> np.ndarray:
    """Shift by up to max_shift_ms either way, filling with silence; length unchanged."""
    shift = int(rng.uniform(-max_shift_ms, max_shift_ms) * sample_rate / 1000)
    if shift == 0 or abs(shift) >= len(samples):
        return samples
    out = np.zeros_like(samples)
    if shift > 0:
        out[shift:] = samples[:-shift]
    else:
        out[:shift] = samples[-shift:]
    return out


def add_noise(samples: np.ndarray, rng: np.random.Generator, noise_clips: list[np.ndarray],
              min_snr_db: float = 10.0, max_snr_db: float = 30.0) -> np.ndarray:
    """Mix a random stretch of a random noise clip at a random SNR (dB)."""
    if not noise_clips:
        return samples
    noise = noise_clips[rng.integers(len(noise_clips))]
    if len(noise) < len(samples):
        noise = np.tile(noise, len(samples) // len(noise) + 1)
    start = rng.integers(0, len(noise) - len(samples) + 1)
    noise = noise[start:start + len(samples)]
    signal_power = _mean_square(samples) + 1e-10
    noise_power = _mean_square(noise) + 1e-10
    snr_db = rng.uniform(min_snr_db, max_snr_db)
    scale = np.float32(np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0))))
    mixed = feature_kernels.mix_clip(samples, noise, scale)  # one pass in C++: the step 31 us a 3.5 s clip against 38
    if mixed is not None:
        return mixed
    mixed = np.multiply(noise, scale, dtype=np.float32)  # float32 throughout: a float64 scale would
    mixed += samples                                     # make every pass float64 and twice as long
    return np.clip(mixed, -1.0, 1.0, out=mixed)


def _mean_square(samples: np.ndarray) -> float:
    """mean(samples ** 2) as a float32 dot product (BLAS), without a squared copy."""
    samples = samples.astype(np.float32, copy=False)
    return float(np.dot(samples, samples)) / max(1, len(samples))


def resample_perturb(samples: np.ndarray, rng: np.random.Generator, rates: tuple = (8000,),
                     sample_rate: int = 16000) -> np.ndarray:
    """Down to a random lower rate and back: the band limit of telephone or old recordings.
    Augmentation.apply_audio_for_features leaves it to the features where nothing follows it."""
    return _round_trip(samples, _lower_rate(rng, rates), sample_rate)


def _lower_rate(rng: np.random.Generator, rates) -> int:
    return int(rates[rng.integers(len(rates))])


def _round_trip(samples: np.ndarray, low: int, sample_rate: int) -> np.ndarray:
    return _fit_length(resample(resample(samples, sample_rate, low), low, sample_rate), len(samples))


def spec_augment(feats: np.ndarray, rng: np.random.Generator, freq_masks: int = 2, max_freq_width: int = 10,
                 time_masks: int = 2, max_time_ratio: float = 0.05, max_time_warp: int = 0) -> np.ndarray:
    """SpecAugment on log features [T, D]: frequency and time masks set to the mean, optional warp."""
    feats = feats.copy()
    steps, dim = feats.shape
    if max_time_warp > 0 and steps > 2 * max_time_warp + 2:
        feats = _time_warp(feats, rng, max_time_warp)
    # one draw for every mask (a generator call costs a microsecond or more, as much as a mask):
    # per mask a width in [0, max], then a start in [0, size - width]
    uniforms = iter(rng.random(2 * (freq_masks + time_masks)).tolist())
    masks = [(1, dim, max_freq_width)] * freq_masks + [(0, steps, int(steps * max_time_ratio))] * time_masks
    fill = None
    for axis, size, max_width in masks:
        width = int(next(uniforms) * (max_width + 1))
        start = int(next(uniforms) * max(1, size - width + 1))
        if width == 0:
            continue
        fill = np.add.reduce(feats, axis=None) / feats.size if fill is None else fill  # feats.mean()'s value, 5 us sooner
        if axis == 1:
            feats[:, start:start + width] = fill
        else:
            feats[start:start + width, :] = fill
    return feats


def _time_warp(feats: np.ndarray, rng: np.random.Generator, max_warp: int) -> np.ndarray:
    """Move a random centre frame by up to max_warp frames, stretching both sides linearly."""
    steps = feats.shape[0]
    centre = rng.integers(max_warp + 1, steps - max_warp - 1)
    target = centre + rng.integers(-max_warp, max_warp + 1)
    source = np.concatenate([np.linspace(0, centre, target, endpoint=False),
                             np.linspace(centre, steps - 1, steps - target)])
    left = np.floor(source).astype(int)
    right = np.minimum(left + 1, steps - 1)
    frac = (source - left)[:, None].astype(np.float32)
    return (feats[left] * (1 - frac) + feats[right] * frac).astype(np.float32)


def spec_sub(feats: np.ndarray, rng: np.random.Generator, max_time: int = 20, num_subs: int = 3) -> np.ndarray:
    """SpecSub: replace short stretches with earlier stretches of the same utterance: a stretch of
    `width` frames from frame `width` on takes the frames of one that ends before it starts, so an
    utterance shorter than two stretches keeps its frames."""
    feats = feats.copy()
    steps = feats.shape[0]
    for _ in range(num_subs):
        width = rng.integers(0, max_time + 1)
        if width == 0 or steps <= width + 1 or steps < 2 * width:
            continue
        start = rng.integers(width, steps - width + 1)
        source = rng.integers(0, start - width + 1)
        feats[start:start + width] = feats[source:source + width]
    return feats


_RESAMPLE_DEFAULTS = {name: parameter.default
                      for name, parameter in inspect.signature(resample_perturb).parameters.items()
                      if parameter.default is not inspect.Parameter.empty}
AUDIO_AUGMENTORS: dict[str, Callable] = {
    "speed": speed_perturb, "volume": volume_perturb, "shift": time_shift,
    "noise": add_noise, "resample": resample_perturb}
FEATURE_AUGMENTORS: dict[str, Callable] = {"specaugment": spec_augment, "specsub": spec_sub}


@dataclass
class Augmentation:
    """The parsed augmentation list: (function, params, prob) per domain."""
    audio: list = field(default_factory=list)
    feature: list = field(default_factory=list)

    def describe(self) -> str:
        """e.g. 'speed (p=0.5), noise (p=0.3, no noise clips: does nothing), specaugment (p=1.0)'."""
        parts = []
        for function, params, prob in self.audio + self.feature:
            note = ", no noise clips: does nothing" if function is add_noise and not params["noise_clips"] else ""
            parts.append(f"{function.__name__} (p={prob}{note})")
        return ", ".join(parts) or "none"

    def apply_audio(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _apply(self.audio, samples, rng)

    def apply_audio_for_features(self, samples: np.ndarray,
                                 rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
        """apply_audio's steps and draws, except that a resample perturbation with no audio step after it
        comes back as a band limit (Hz, else None) for compute_features(band_limit_hz=...) instead of
        soxr's round trip: the same features within 0.04 log units on average (utils/features.py), for
        0.4-0.8 ms less CPU a 3 s clip where it fires (the worker's largest step after the fbank itself)."""
        deferred = None  # (lower rate, sample rate) of a resample perturbation not yet applied
        for function, params, prob in self.audio:
            if rng.random() >= prob:
                continue
            if deferred is not None:  # an audio step follows it: apply it to the audio after all
                samples, deferred = _round_trip(samples, *deferred), None
            if function is resample_perturb:
                options = {**_RESAMPLE_DEFAULTS, **params}
                deferred = (_lower_rate(rng, options["rates"]), options["sample_rate"])
            else:
                samples = function(samples, rng, **params)
        return samples, None if deferred is None else deferred[0] / 2

    def apply_features(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _apply(self.feature, feats, rng)


def _apply(steps: list, data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for function, params, prob in steps:
        if rng.random() < prob:
            data = function(data, rng, **params)
    return data


def load_augmentation(path: str | None, noise_paths: list[str] = (), sample_rate: int = 16000) -> Augmentation:
    """Parse conf/augmentation.json; path None gives no augmentation. Noise clips load once here."""
    augmentation = Augmentation()
    if path is None:
        return augmentation
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"augmentation config {path} does not exist; "
                                f"pass --augment_conf_path=None to train without augmentation") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    for number, entry in enumerate(entries):
        kind, params, prob = entry.get("type"), dict(entry.get("params", {})), float(entry.get("prob", 1.0))
        if kind in ("shift", "resample"):
            params.setdefault("sample_rate", sample_rate)
        if kind == "noise":
            params["noise_clips"] = _load_noise(noise_paths, sample_rate)
        if kind not in AUDIO_AUGMENTORS and kind not in FEATURE_AUGMENTORS:
            known = sorted(AUDIO_AUGMENTORS) + sorted(FEATURE_AUGMENTORS)
            raise ValueError(f"{path}: entry {number} has unknown type '{kind}'; known types: {known}")
        function = AUDIO_AUGMENTORS.get(kind) or FEATURE_AUGMENTORS[kind]
        _check_params(path, number, kind, function, params)
        (augmentation.audio if kind in AUDIO_AUGMENTORS else augmentation.feature).append((function, params, prob))
    return augmentation


def _check_params(path, number: int, kind: str, function: Callable, params: dict) -> None:
    """A misspelt parameter fails here, naming the entry, not later inside a loader worker."""
    try:
        inspect.signature(function).bind(None, None, **params)
    except TypeError as err:
        accepted = list(inspect.signature(function).parameters)[2:]  # after (samples or feats, rng)
        raise ValueError(f"{path}: entry {number} ('{kind}') has bad params ({err}); "
                         f"accepted params: {accepted}") from None


def _load_noise(noise_paths: list[str], sample_rate: int) -> list[np.ndarray]:
    clips = []
    for path in noise_paths:
        try:
            clips.append(load_audio(path, sample_rate))
        except AudioError as err:
            raise AudioError(f"noise manifest: {err}; fix or remove the clip and rerun create_data.py") from None
    return clips

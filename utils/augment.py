"""Data augmentation: small functions on audio samples [N] or features [T, D].

`conf/augmentation.json` is a list of {"type", "params", "prob"}; each entry runs with
probability `prob`, in file order, audio-domain entries before feature-domain ones.
Every function takes a numpy Generator so a seeded run augments identically; each is a draw half,
which turns the draws into rows (see STEP_* and EDIT_* below), and an apply half, so that a loader
worker can make a sample's draws first and compute its augmented features in one C++ call.
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from utils import feature_kernels
from utils.audio import AudioError, load_audio, resample


# A sample's augmentation as rows (kind, a, b, c), drawn before any of its audio or features is
# computed (Augmentation.draw_audio, draw_feature_edits) and applied in order by apply_audio_rows and
# apply_feature_edits (numpy), or by feature_kernels.sample_features (C++, in one call a sample; the
# kinds match utils/csrc/features.cc's PlanKind). Each function below draws its rows with its own
# draws, so the two ways see the same draws and a seeded run augments identically either way.
STEP_SPEED = 0       # resample to a samples
STEP_GAIN = 1        # times a (float32), clipped to [-1, 1]
STEP_SHIFT = 2       # by a samples (later where positive), silence filling
STEP_NOISE = 3       # noise clip a from its sample b on (repeating), mixed at c dB SNR
STEP_ROUND_TRIP = 4  # down to a Hz and back up to b Hz with soxr (numpy's way only)
EDIT_FILL = 10       # the masks after it fill with the features' mean at this point
EDIT_FREQ_MASK = 11  # bands [a, a + b) := fill
EDIT_TIME_MASK = 12  # frames [a, a + b) := fill
EDIT_COPY = 13       # frames [a, a + b) := frames [c, c + b), c + b <= a
EDIT_WARP = 14       # frame a moved to b, both sides stretched linearly (numpy's way only)
NUMPY_ONLY_KINDS = (STEP_ROUND_TRIP, EDIT_WARP)


def _fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """samples cut or padded with silence to `length` (a resampler's output is off by a sample or so)."""
    return samples[:length] if len(samples) >= length else np.pad(samples, (0, length - len(samples)))


def speed_perturb(samples: np.ndarray, rng: np.random.Generator, min_rate: float = 0.9,
                  max_rate: float = 1.1) -> np.ndarray:
    """Play faster or slower (pitch moves with it, as Kaldi's speed perturbation): [N] -> [N / rate].

    Cubic interpolation (soxr's quick method): our C++ resampler (utils/feature_kernels.py) where it
    builds, 0.07 ms a 2.5 s clip, else soxr's own "QQ" at 0.25 ms; the two agree within 0.4 % RMS."""
    return apply_audio_rows(samples, [speed_row(rng, len(samples), min_rate, max_rate)])


def speed_row(rng: np.random.Generator, length: int, min_rate: float = 0.9, max_rate: float = 1.1) -> tuple:
    rate = rng.uniform(min_rate, max_rate)
    return STEP_SPEED, max(1, int(round(length / rate))), 0, 0


def volume_perturb(samples: np.ndarray, rng: np.random.Generator, min_gain_db: float = -10.0,
                   max_gain_db: float = 6.0) -> np.ndarray:
    return apply_audio_rows(samples, [gain_row(rng, len(samples), min_gain_db, max_gain_db)])


def gain_row(rng: np.random.Generator, length: int, min_gain_db: float = -10.0, max_gain_db: float = 6.0) -> tuple:
    return STEP_GAIN, float(np.float32(10.0 ** (rng.uniform(min_gain_db, max_gain_db) / 20.0))), 0, 0


def time_shift(samples: np.ndarray, rng: np.random.Generator, max_shift_ms: float = 50.0,
               sample_rate: int = 16000) -> np.ndarray:
    """Shift by up to max_shift_ms either way, filling with silence; length unchanged."""
    return apply_audio_rows(samples, [shift_row(rng, len(samples), max_shift_ms, sample_rate)])


def shift_row(rng: np.random.Generator, length: int, max_shift_ms: float = 50.0,
              sample_rate: int = 16000) -> tuple | None:
    """None where the shift rounds to nothing or would shift everything out."""
    shift = int(rng.uniform(-max_shift_ms, max_shift_ms) * sample_rate / 1000)
    return None if shift == 0 or abs(shift) >= length else (STEP_SHIFT, shift, 0, 0)


def add_noise(samples: np.ndarray, rng: np.random.Generator, noise_clips: list[np.ndarray],
              min_snr_db: float = 10.0, max_snr_db: float = 30.0) -> np.ndarray:
    """Mix a random stretch of a random noise clip at a random SNR (dB)."""
    row = noise_row(rng, len(samples), noise_clips, min_snr_db, max_snr_db)
    return samples if row is None else apply_audio_rows(samples, [row], noise_clips)


def noise_row(rng: np.random.Generator, length: int, noise_clips: list[np.ndarray], min_snr_db: float = 10.0,
              max_snr_db: float = 30.0) -> tuple | None:
    """A clip, a start in it (repeated end to end where it is shorter than the samples) and an SNR;
    None, without a draw, where there is no clip."""
    if not noise_clips:
        return None
    clip = int(rng.integers(len(noise_clips)))
    clip_length = len(noise_clips[clip])
    repeated = clip_length if clip_length >= length else clip_length * (length // clip_length + 1)
    start = int(rng.integers(0, repeated - length + 1))
    return STEP_NOISE, clip, start, float(rng.uniform(min_snr_db, max_snr_db))


def resample_perturb(samples: np.ndarray, rng: np.random.Generator, rates: tuple = (8000,),
                     sample_rate: int = 16000) -> np.ndarray:
    """Down to a random lower rate and back: the band limit of telephone or old recordings.
    Augmentation.draw_audio leaves it to the features where nothing follows it."""
    return _round_trip(samples, _lower_rate(rng, rates), sample_rate)


def _lower_rate(rng: np.random.Generator, rates) -> int:
    return int(rates[rng.integers(len(rates))])


def _round_trip(samples: np.ndarray, low: int, sample_rate: int) -> np.ndarray:
    return _fit_length(resample(resample(samples, sample_rate, low), low, sample_rate), len(samples))


def apply_audio_rows(samples: np.ndarray, rows: list, noise_clips: list[np.ndarray] = ()) -> np.ndarray:
    """samples [N] float32 after the audio rows (STEP_*; None rows do nothing), in order: a new array,
    or samples itself where no row applies."""
    for row in rows:
        if row is None:
            continue
        kind, a, b, c = row
        if kind == STEP_SPEED:
            stretched = feature_kernels.cubic_resample(samples, int(a))
            samples = stretched if stretched is not None else _fit_length(
                resample(samples, len(samples), int(a), quality="QQ"), int(a))
        elif kind == STEP_GAIN:
            samples = _scale_clip(samples, np.float32(a))
        elif kind == STEP_SHIFT:
            samples = _shift(samples, int(a))
        elif kind == STEP_NOISE:
            samples = _mix(samples, noise_clips[int(a)], int(b), c)
        elif kind == STEP_ROUND_TRIP:
            samples = _round_trip(samples, int(a), int(b))
        else:
            raise ValueError(f"unknown audio step kind {kind}")
    return samples


def _scale_clip(samples: np.ndarray, gain: np.float32) -> np.ndarray:
    scaled = feature_kernels.scale_clip(samples, gain)  # one pass in C++: the step 11 us a 3.5 s clip against 18
    if scaled is not None:
        return scaled
    louder = np.multiply(samples, gain, dtype=np.float32)
    return np.clip(louder, -1.0, 1.0, out=louder)


def _shift(samples: np.ndarray, shift: int) -> np.ndarray:
    out = np.zeros_like(samples)
    if shift > 0:
        out[shift:] = samples[:-shift]
    else:
        out[:shift] = samples[-shift:]
    return out


def _mix(samples: np.ndarray, noise: np.ndarray, start: int, snr_db: float) -> np.ndarray:
    if len(noise) < len(samples):
        noise = np.tile(noise, len(samples) // len(noise) + 1)
    noise = noise[start:start + len(samples)]
    signal_power = _mean_square(samples) + 1e-10
    noise_power = _mean_square(noise) + 1e-10
    scale = np.float32(np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0))))
    mixed = feature_kernels.mix_clip(samples, noise, scale)  # one pass in C++: the step 31 us a 3.5 s clip against 38
    if mixed is not None:
        return mixed
    mixed = np.multiply(noise, scale, dtype=np.float32)  # float32 throughout: a float64 scale would
    mixed += samples                                     # make every pass float64 and twice as long
    return np.clip(mixed, -1.0, 1.0, out=mixed)


def _mean_square(samples: np.ndarray) -> float:
    """mean(samples ** 2), summed in float64 as the C++ sample path sums it (a float32 dot product
    drifted by up to 4e-4 of it over a 3 s clip)."""
    wide = samples.astype(np.float64)
    return float(np.dot(wide, wide)) / max(1, len(samples))


def spec_augment(feats: np.ndarray, rng: np.random.Generator, freq_masks: int = 2, max_freq_width: int = 10,
                 time_masks: int = 2, max_time_ratio: float = 0.05, max_time_warp: int = 0) -> np.ndarray:
    """SpecAugment on log features [T, D]: frequency and time masks set to the mean, optional warp."""
    return apply_feature_edits(feats.copy(), spec_augment_edits(rng, *feats.shape, freq_masks, max_freq_width,
                                                                time_masks, max_time_ratio, max_time_warp))


def spec_augment_edits(rng: np.random.Generator, steps: int, dim: int, freq_masks: int = 2, max_freq_width: int = 10,
                       time_masks: int = 2, max_time_ratio: float = 0.05, max_time_warp: int = 0) -> list[tuple]:
    """spec_augment's draws for features [steps, dim], as edits."""
    edits = []
    if max_time_warp > 0 and steps > 2 * max_time_warp + 2:
        centre = int(rng.integers(max_time_warp + 1, steps - max_time_warp - 1))
        edits.append((EDIT_WARP, centre, centre + int(rng.integers(-max_time_warp, max_time_warp + 1)), 0))
    # one draw for every mask (a generator call costs a microsecond or more, as much as a mask):
    # per mask a width in [0, max], then a start in [0, size - width]
    uniforms = iter(rng.random(2 * (freq_masks + time_masks)).tolist())
    masks = ([(EDIT_FREQ_MASK, dim, max_freq_width)] * freq_masks
             + [(EDIT_TIME_MASK, steps, int(steps * max_time_ratio))] * time_masks)
    filled = False
    for kind, size, max_width in masks:
        width = int(next(uniforms) * (max_width + 1))
        start = int(next(uniforms) * max(1, size - width + 1))
        if width == 0:
            continue
        if not filled:
            edits.append((EDIT_FILL, 0, 0, 0))
            filled = True
        edits.append((kind, start, width, 0))
    return edits


def _time_warp(feats: np.ndarray, centre: int, target: int) -> np.ndarray:
    """Frame `centre` moved to `target`, both sides stretched linearly; a new array."""
    steps = feats.shape[0]
    source = np.concatenate([np.linspace(0, centre, target, endpoint=False),
                             np.linspace(centre, steps - 1, steps - target)])
    left = np.floor(source).astype(int)
    right = np.minimum(left + 1, steps - 1)
    frac = (source - left)[:, None].astype(np.float32)
    return (feats[left] * (1 - frac) + feats[right] * frac).astype(np.float32)


def spec_sub(feats: np.ndarray, rng: np.random.Generator, max_time: int = 20, num_subs: int = 3) -> np.ndarray:
    """SpecSub: replace short stretches with earlier stretches of the same utterance."""
    return apply_feature_edits(feats.copy(), spec_sub_edits(rng, *feats.shape, max_time, num_subs))


def spec_sub_edits(rng: np.random.Generator, steps: int, dim: int, max_time: int = 20,
                   num_subs: int = 3) -> list[tuple]:
    """spec_sub's draws for features [steps, dim], as edits: a stretch of `width` frames from frame
    `width` on takes the frames of one that ends before it starts, so an utterance shorter than two
    stretches keeps its frames."""
    edits = []
    for _ in range(num_subs):
        width = int(rng.integers(0, max_time + 1))
        if width == 0 or steps <= width + 1 or steps < 2 * width:
            continue
        start = int(rng.integers(width, steps - width + 1))
        source = int(rng.integers(0, start - width + 1))
        edits.append((EDIT_COPY, start, width, source))
    return edits


def apply_feature_edits(feats: np.ndarray, edits: list) -> np.ndarray:
    """feats [T, D] after the edits (EDIT_*), in order: edited in place and returned, except that a
    time warp makes a new array."""
    fill = np.float32(0.0)
    for kind, a, b, c in edits:
        a, b, c = int(a), int(b), int(c)
        if kind == EDIT_FILL:
            fill = np.add.reduce(feats, axis=None) / max(1, feats.size)  # feats.mean()'s value, 5 us sooner
        elif kind == EDIT_FREQ_MASK:
            feats[:, a:a + b] = fill
        elif kind == EDIT_TIME_MASK:
            feats[a:a + b, :] = fill
        elif kind == EDIT_COPY:
            feats[a:a + b] = feats[c:c + b]
        elif kind == EDIT_WARP:
            feats = _time_warp(feats, a, b)
        else:
            raise ValueError(f"unknown feature edit kind {kind}")
    return feats


_RESAMPLE_DEFAULTS = {name: parameter.default
                      for name, parameter in inspect.signature(resample_perturb).parameters.items()
                      if parameter.default is not inspect.Parameter.empty}
AUDIO_AUGMENTORS: dict[str, Callable] = {
    "speed": speed_perturb, "volume": volume_perturb, "shift": time_shift,
    "noise": add_noise, "resample": resample_perturb}
FEATURE_AUGMENTORS: dict[str, Callable] = {"specaugment": spec_augment, "specsub": spec_sub}
AUDIO_ROW_DRAWS: dict[Callable, Callable] = {speed_perturb: speed_row, volume_perturb: gain_row,
                                             time_shift: shift_row, add_noise: noise_row}
FEATURE_EDIT_DRAWS: dict[Callable, Callable] = {spec_augment: spec_augment_edits, spec_sub: spec_sub_edits}


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
        soxr's round trip (see draw_audio)."""
        rows, band_limit_hz, _ = self.draw_audio(rng, len(samples))
        return apply_audio_rows(samples, rows, self.noise_clips), band_limit_hz

    def draw_audio(self, rng: np.random.Generator, length: int) -> tuple[list[tuple], float | None, int]:
        """apply_audio's draws for `length` samples as rows (STEP_*), the band limit (Hz, else None) of
        a resample perturbation with no audio step after it, and the length after the rows. That
        perturbation is left to compute_features(band_limit_hz=...) instead of soxr's round trip: the
        same features within 0.04 log units on average (utils/features.py), for 0.4-0.8 ms less CPU a
        3 s clip where it fires (the worker's largest step after the fbank itself)."""
        rows, deferred = [], None  # deferred: (lower rate, sample rate) of a resample perturbation
        for function, params, prob in self.audio:
            if rng.random() >= prob:
                continue
            if deferred is not None:  # an audio step follows it: applied to the audio after all
                rows.append((STEP_ROUND_TRIP, *deferred, 0))
                deferred = None
            if function is resample_perturb:
                options = {**_RESAMPLE_DEFAULTS, **params}
                deferred = (_lower_rate(rng, options["rates"]), options["sample_rate"])
                continue
            row = AUDIO_ROW_DRAWS[function](rng, length, **params)
            if row is not None:
                rows.append(row)
                length = row[1] if row[0] == STEP_SPEED else length
        return rows, None if deferred is None else deferred[0] / 2, length

    def apply_features(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _apply(self.feature, feats, rng)

    def draw_feature_edits(self, rng: np.random.Generator, steps: int, dim: int) -> list[tuple]:
        """apply_features' draws for features [steps, dim], as edits (EDIT_*; apply_feature_edits)."""
        edits = []
        for function, params, prob in self.feature:
            if rng.random() < prob:
                edits += FEATURE_EDIT_DRAWS[function](rng, steps, dim, **params)
        return edits

    @property
    def noise_clips(self) -> list[np.ndarray]:
        """The noise step's clips (load_augmentation loads them once for every noise entry)."""
        return next((params["noise_clips"] for function, params, _ in self.audio if function is add_noise), [])


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
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{\"type\", \"params\", \"prob\"}} entries")
    noise_clips = None  # loaded at the first noise entry, shared by any other
    for number, entry in enumerate(entries):
        kind, params, prob = _entry_fields(path, number, entry)
        if kind in ("shift", "resample"):
            params.setdefault("sample_rate", sample_rate)
        if kind == "noise":
            noise_clips = _load_noise(noise_paths, sample_rate) if noise_clips is None else noise_clips
            params["noise_clips"] = noise_clips
        if kind not in AUDIO_AUGMENTORS and kind not in FEATURE_AUGMENTORS:
            known = sorted(AUDIO_AUGMENTORS) + sorted(FEATURE_AUGMENTORS)
            raise ValueError(f"{path}: entry {number} has unknown type '{kind}'; known types: {known}")
        function = AUDIO_AUGMENTORS.get(kind) or FEATURE_AUGMENTORS[kind]
        _check_params(path, number, kind, function, params)
        if kind == "resample":
            rates = params.get("rates", _RESAMPLE_DEFAULTS["rates"])
            if any(rate >= params["sample_rate"] for rate in rates):
                raise ValueError(f"{path}: entry {number} ('resample'): rates {list(rates)} must all be below the "
                                 f"sample rate {params['sample_rate']}; a rate at or above it limits no band")
        (augmentation.audio if kind in AUDIO_AUGMENTORS else augmentation.feature).append((function, params, prob))
    return augmentation


ENTRY_KEYS = {"type", "params", "prob"}


def _entry_fields(path, number: int, entry) -> tuple[str, dict, float]:
    """(type, params, prob) of an entry, or a ValueError naming the entry: a misspelt key, a prob outside
    [0, 1], or a number below 0 other than a dB value (a negative mask width wrote outside the features
    in C++; rates must be above 0), so that no such value reaches a loader worker."""
    where = f"{path}: entry {number}"
    if not isinstance(entry, dict) or not isinstance(entry.get("params", {}), dict) or set(entry) - ENTRY_KEYS:
        raise ValueError(f"{where}: expected an object with the keys {sorted(ENTRY_KEYS)}, got {entry!r}")
    kind, params, prob = entry.get("type"), dict(entry.get("params", {})), entry.get("prob", 1.0)
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"{where} ('{kind}'): prob must be a number in [0, 1], got {prob!r}")
    for name, value in params.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            raise ValueError(f"{where} ('{kind}'): parameter {name} must be a finite number or a list of them, "
                             f"got {value!r}")
        if name.endswith("_db"):  # gains and SNRs in dB may be negative
            continue
        positive = name.endswith("rate") or name == "rates"
        if any(v < 0 or (positive and v <= 0) for v in values) or (name == "rates" and not values):
            raise ValueError(f"{where} ('{kind}'): parameter {name} must be {'above' if positive else 'at least'} 0, "
                             f"got {value!r}")
    for low, high in (("min_rate", "max_rate"), ("min_gain_db", "max_gain_db"), ("min_snr_db", "max_snr_db")):
        if low in params and high in params and params[low] > params[high]:
            raise ValueError(f"{where} ('{kind}'): {low} {params[low]} is above {high} {params[high]}")
    return kind, params, float(prob)


def _check_params(path, number: int, kind: str, function: Callable, params: dict) -> None:
    """A misspelt parameter, or a count that is not a whole number, fails here, naming the entry, not later
    inside a loader worker; a whole number written 2.0 becomes 2."""
    signature = inspect.signature(function)
    try:
        signature.bind(None, None, **params)
    except TypeError as err:
        accepted = list(signature.parameters)[2:]  # after (samples or feats, rng)
        raise ValueError(f"{path}: entry {number} ('{kind}') has bad params ({err}); "
                         f"accepted params: {accepted}") from None
    for name, value in params.items():
        if signature.parameters[name].annotation not in (int, "int"):
            continue
        if isinstance(value, list) or not float(value).is_integer():
            raise ValueError(f"{path}: entry {number} ('{kind}'): parameter {name} is a count, a whole number, "
                             f"got {value!r}")
        params[name] = int(value)


def _load_noise(noise_paths: list[str], sample_rate: int) -> list[np.ndarray]:
    clips = []
    for path in noise_paths:
        try:
            clips.append(load_audio(path, sample_rate))
        except AudioError as err:
            raise AudioError(f"noise manifest: {err}; fix or remove the clip and rerun create_data.py") from None
    return clips

"""Acoustic features (no Paddle, so loader workers never touch OpenMP): our C++ front end
(utils/feature_kernels.py) where it builds, these numpy functions otherwise; the same values.

linear: log power spectrogram, 20 ms Hann window, 10 ms stride, 320-point FFT -> 161 bins
        (the DeepSpeech2 feature).
fbank:  log mel filterbank, 25 ms window, 10 ms stride, 512-point FFT -> n_mels bands.
Frames: num_frames = 1 + (num_samples - window) // stride (0 when shorter than a window).
"""
from __future__ import annotations

import functools
import zipfile

import numpy as np
import scipy.fft

from utils import feature_kernels

STRIDE_MS = 10
LINEAR_WINDOW_MS = 20
FBANK_WINDOW_MS = 25
FBANK_FFT_SIZE = 512
LOG_FLOOR = 1e-10
FEATURE_METHODS = ("linear", "fbank")


def window_and_stride(feature_method: str, sample_rate: int) -> tuple[int, int]:
    window_ms = LINEAR_WINDOW_MS if feature_method == "linear" else FBANK_WINDOW_MS
    return sample_rate * window_ms // 1000, sample_rate * STRIDE_MS // 1000


def feature_dim(feature_method: str, sample_rate: int = 16000, n_mels: int = 80) -> int:
    _check_method(feature_method)
    if feature_method == "linear":
        return window_and_stride("linear", sample_rate)[0] // 2 + 1
    return n_mels


def num_frames(num_samples: int, feature_method: str, sample_rate: int = 16000) -> int:
    window, stride = window_and_stride(feature_method, sample_rate)
    return 0 if num_samples < window else 1 + (num_samples - window) // stride


def _check_method(feature_method: str) -> None:
    if feature_method not in FEATURE_METHODS:
        raise ValueError(f"unknown feature_method '{feature_method}'; use one of {FEATURE_METHODS}")


@functools.lru_cache(maxsize=8)
def _hann(window: int) -> np.ndarray:
    return np.hanning(window + 2)[1:-1].astype(np.float32)  # no zero end points


# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
MEL_LINEAR_HZ_PER_MEL = 200.0 / 3
MEL_LOG_START_HZ = 1000.0
MEL_LOG_STEP = np.log(6.4) / 27.0
MEL_LOG_START = MEL_LOG_START_HZ / MEL_LINEAR_HZ_PER_MEL


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = MEL_LOG_START + np.log(np.maximum(hz, MEL_LOG_START_HZ) / MEL_LOG_START_HZ) / MEL_LOG_STEP
    return np.where(hz >= MEL_LOG_START_HZ, log_part, hz / MEL_LINEAR_HZ_PER_MEL)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = MEL_LOG_START_HZ * np.exp(MEL_LOG_STEP * (np.maximum(mel, MEL_LOG_START) - MEL_LOG_START))
    return np.where(mel >= MEL_LOG_START, log_part, mel * MEL_LINEAR_HZ_PER_MEL)


@functools.lru_cache(maxsize=8)
def _mel_matrix(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters [n_mels, n_fft // 2 + 1], 0 Hz to Nyquist, each scaled to unit area
    (Slaney); equal to librosa.filters.mel's defaults (tests pin it), without librosa's import,
    which costs about 0.4 s and 95 MB in every process that computes features."""
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # [F]
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0), n_mels + 2))  # [M + 2]
    widths = np.diff(edges_hz)  # [M + 1]
    offsets = edges_hz[:, None] - bin_hz[None, :]  # [M + 2, F]
    rising = -offsets[:-2] / widths[:-1, None]  # [M, F]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


# A band limit (augment.py's resample perturbation, applied to the features) weights each FFT bin's
# power by a gain falling linearly in amplitude from 1 at BAND_EDGE_START to 0 at BAND_EDGE_END times
# the limit. That matched the features of soxr's round trip down and back up best (20 demo clips at
# 8 and 11.025 kHz: 0.04 and 0.02 log units off on average, at most 1.0 in the band at the limit).
BAND_EDGE_END = 0.98
BAND_EDGE_START = 0.90


@functools.lru_cache(maxsize=16)
def band_gain(sample_rate: int, n_fft: int, band_limit_hz: float) -> np.ndarray:
    """[n_fft // 2 + 1] float32 power gains of a band limit at band_limit_hz."""
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    end, start = BAND_EDGE_END * band_limit_hz, BAND_EDGE_START * band_limit_hz
    return (np.clip((end - bin_hz) / (end - start), 0.0, 1.0) ** 2).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _weights(feature_method: str, sample_rate: int, n_fft: int, n_mels: int,
             band_limit_hz: float | None) -> np.ndarray | None:
    """The [dim, n_fft // 2 + 1] weights the C++ front end takes of the power spectrum: the mel
    filters for fbank; for linear none (every bin as it is), or with a band limit the diagonal of
    its gains (the front end skips each row's zeros)."""
    if feature_method == "linear":
        if band_limit_hz is None:
            return None
        return np.diag(band_gain(sample_rate, n_fft, band_limit_hz)).astype(np.float32)
    mel = _mel_matrix(sample_rate, n_fft, n_mels)
    if band_limit_hz is None:
        return mel
    return (mel * band_gain(sample_rate, n_fft, band_limit_hz)[None, :]).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _weights_bins(feature_method: str, sample_rate: int, n_fft: int, n_mels: int,
                  band_limit_hz: float | None) -> np.ndarray | None:
    """[dim, 2] int32: where each row of _weights' matrix is non-zero (feature_kernels.nonzero_bins)."""
    weights = _weights(feature_method, sample_rate, n_fft, n_mels, band_limit_hz)
    return None if weights is None else feature_kernels.nonzero_bins(weights)


def power_spectrum(samples: np.ndarray, window: int, stride: int, n_fft: int) -> np.ndarray:
    """samples [N] -> power [T, n_fft // 2 + 1], T = 1 + (N - window) // stride."""
    count = 0 if len(samples) < window else 1 + (len(samples) - window) // stride
    if count == 0:
        return np.zeros((0, n_fft // 2 + 1), dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(
        samples, shape=(count, window), strides=(samples.strides[0] * stride, samples.strides[0]),
        writeable=False)  # [T, window]
    # windowed straight into the zero-padded buffer the FFT reads (and may overwrite): one copy
    # fewer than rfft(n=n_fft) padding a windowed copy, 0.88 -> 0.79 ms for 2.8 s, same values
    padded = np.zeros((count, n_fft), dtype=np.float32)  # [T, n_fft]
    np.multiply(frames, _hann(window), out=padded[:, :window])
    # scipy's FFT keeps float32 (numpy's computes in float64): the FFT 5x faster, fbank of 3 s 1.7 -> 0.8 ms
    spectrum = scipy.fft.rfft(padded, axis=1, overwrite_x=True)  # [T, F] complex64
    return spectrum.real ** 2 + spectrum.imag ** 2


def fft_size(feature_method: str, window: int) -> int:
    """The FFT length: the window for linear; for fbank FBANK_FFT_SIZE, or the next power of two where
    the window is longer (a 25 ms window above 20.48 kHz: 22.05, 44.1 and 48 kHz audio)."""
    if feature_method == "linear":
        return window
    return max(FBANK_FFT_SIZE, 1 << (window - 1).bit_length())


def compute_features(samples: np.ndarray, feature_method: str = "linear", sample_rate: int = 16000,
                     n_mels: int = 80, band_limit_hz: float | None = None) -> np.ndarray:
    """samples [N] float32 -> feats [T, D] float32 (log scale, not normalized). band_limit_hz: the
    power above that frequency removed (band_gain), as a resample to twice it and back would."""
    _check_method(feature_method)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    window, stride = window_and_stride(feature_method, sample_rate)
    n_fft = fft_size(feature_method, window)
    weights = _weights(feature_method, sample_rate, n_fft, n_mels, band_limit_hz)  # [D, n_fft // 2 + 1] or None
    feats = feature_kernels.log_power_features(samples, window, stride, n_fft, _hann(window), weights, LOG_FLOOR,
                                               _weights_bins(feature_method, sample_rate, n_fft, n_mels, band_limit_hz))
    if feats is not None:
        return feats
    power = power_spectrum(samples, window, stride, n_fft)  # [T, n_fft // 2 + 1]
    if feature_method == "linear":  # a band limit's gains bin by bin, not through a diagonal matrix
        gains = None if band_limit_hz is None else band_gain(sample_rate, n_fft, band_limit_hz)
        return np.log((power if gains is None else power * gains) + LOG_FLOOR)  # [T, 161]
    return np.log(power @ weights.T + LOG_FLOOR)  # [T, n_mels]


_front_ends: dict[tuple, feature_kernels.FrontEnd] = {}


def front_end(feature_method: str, sample_rate: int = 16000, n_mels: int = 80,
              band_limit_hz: float | None = None) -> feature_kernels.FrontEnd | None:
    """compute_features' settings and tables for feature_kernels.sample_features, made once per
    argument set; None where the C++ front end is not used."""
    key = (feature_method, sample_rate, n_mels, band_limit_hz)
    settings = _front_ends.get(key)
    if settings is None:
        _check_method(feature_method)
        window, stride = window_and_stride(feature_method, sample_rate)
        n_fft = fft_size(feature_method, window)
        settings = feature_kernels.front_end(window, stride, n_fft, _hann(window),
                                             _weights(feature_method, sample_rate, n_fft, n_mels, band_limit_hz),
                                             LOG_FLOOR, _weights_bins(feature_method, sample_rate, n_fft, n_mels,
                                                                      band_limit_hz))
        if settings is not None:  # not kept while the library is off: it may be on later
            _front_ends[key] = settings
    return settings


def path_note(feature_method: str, sample_rate: int, n_mels: int) -> str:
    """A log line naming where these features are computed: feature_kernels.status(), or numpy where the
    library is there but the C++ front end does not take this FFT size (linear: 320 points at 16 kHz)."""
    if feature_kernels.load() is not None and front_end(feature_method, sample_rate, n_mels) is None:
        n_fft = fft_size(feature_method, window_and_stride(feature_method, sample_rate)[0])
        return (f"features: numpy ({feature_method} at {sample_rate} Hz takes a {n_fft}-point FFT, and our C++ "
                f"front end only powers of two); WAV reading and speed perturbation in C++")
    return feature_kernels.status()


class FeatureStats:
    """Running sum and sum of squares per feature dimension, mergeable across workers."""

    def __init__(self, dim: int):
        self.total = np.zeros(dim, dtype=np.float64)
        self.total_sq = np.zeros(dim, dtype=np.float64)
        self.frames = 0

    def add(self, feats: np.ndarray) -> None:
        self.total += feats.sum(axis=0, dtype=np.float64)
        self.total_sq += np.square(feats, dtype=np.float64).sum(axis=0)
        self.frames += feats.shape[0]

    def merge(self, other: "FeatureStats") -> None:
        self.total += other.total
        self.total_sq += other.total_sq
        self.frames += other.frames

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if self.frames == 0:
            raise ValueError("no feature frames to compute mean/std from")
        mean = self.total / self.frames
        var = np.maximum(self.total_sq / self.frames - mean ** 2, 1e-20)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def save_mean_std(path, mean: np.ndarray, std: np.ndarray, feature_method: str,
                  sample_rate: int, n_mels: int) -> None:
    np.savez(path, mean=mean, std=std, feature_method=feature_method,
             sample_rate=sample_rate, n_mels=n_mels)


def load_mean_std(path) -> dict:
    """{'mean': [D], 'std': [D], 'feature_method': str, 'sample_rate': int, 'n_mels': int}."""
    try:
        with np.load(path) as data:
            return {"mean": data["mean"].astype(np.float32), "std": data["std"].astype(np.float32),
                    "feature_method": str(data["feature_method"]),
                    "sample_rate": int(data["sample_rate"]), "n_mels": int(data["n_mels"])}
    except FileNotFoundError:
        raise FileNotFoundError(f"normalizer {path} does not exist; run python create_data.py first") from None
    except KeyError as err:  # MASR's and older files hold mean and std only
        raise ValueError(f"normalizer {path} lacks {err.args[0].split()[0]} (written by another tool or an older "
                         f"version); run python create_data.py to write it again") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # not an npz, or cut short
        raise ValueError(f"normalizer {path} cannot be read ({err}); run python create_data.py to write it "
                         f"again") from None

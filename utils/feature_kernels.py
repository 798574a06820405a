"""The feature front end in C++ (csrc/features.cc), called through ctypes, with the loader worker's
other passes over a clip's samples: the 16-bit PCM WAV reader, the cubic resampler, the gain and the
noise mix.

One pass over an utterance's samples frames them, applies the Hann window, runs the real FFT (eight
frames at a time in SIMD lanes), and takes the power, the mel filterbank and the log. numpy's path
(utils/features.py) makes a copy per step instead. A 3 s clip's fbank costs 0.13 ms against
0.8 ms; tests/test_feature_kernels.py pins the two paths together. The speed perturbation's
cubic resampler costs 0.07 ms a 2.5 s clip against 0.25 for soxr's quick one, which spends its
time on set-up. The WAV reader, the gain and the noise mix each save one or two passes and numpy's
calls around them: 19, 11 and 31 us against 28, 18 and 38 (load_audio, volume_perturb and add_noise on
a 3.5 s clip), about 0.3 ms of a training batch's 5 ms of loader CPU. sample_features runs a training
sample's whole way from its decoded samples to its augmented features (the audio steps, the fbank,
SpecAugment's masks and SpecSub's copies, as rows drawn by utils/augment.py) in one call, into its
rows of the batch: the numpy and ctypes calls around a dozen steps had cost the worker 0.6-1.0 ms of
a batch of 16's 4-6 ms.

In a training step's DataLoader worker this CPU is taken from the step's own threads on a machine
they fill (README, "Benchmarks": pipeline ratio). The library links nothing but libc and libm and
never touches Paddle or OpenMP, so forked workers may call it.

g++ builds it on first use (about 1 s) into build/feature_kernels/<key>/. Without g++, or when the
build fails, numpy computes the same values (float32 rounding apart): `status()` says which path runs.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from utils import native_build

SOURCE = Path(__file__).with_name("csrc") / "features.cc"
BUILD_ROOT = native_build.BUILD_ROOT / "feature_kernels"
LIBRARY_NAME = "libds2_features.so"
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC"]
# Linked without -ffast-math: with it g++ adds crtfastmath.o, whose load-time code sets flush-to-zero
# and denormals-are-zero for the loading thread and every thread it starts later, Paddle's included.
LINK_FLAGS = ["-shared", "-fPIC"]
BUILD_TIMEOUT_S = 300

_library = None       # the loaded ctypes library
_unavailable = None   # why it cannot be used, once tried
_disabled = False     # disable(): numpy's path on purpose (benchmarks, tests)


def _address(array: np.ndarray) -> int:
    """The address of a contiguous array's first element, for a c_void_p argument: 1.2 us against 1.5
    for array.ctypes.data and 3.2 for an ndpointer argument's checks (a 3 s clip's fbank is 125 us)."""
    return array.__array_interface__["data"][0]


def disable(disabled: bool = True) -> None:
    """Use numpy's path (True) or the library again (False) in this process and the workers it forks."""
    global _disabled
    _disabled = disabled


def load() -> ctypes.CDLL | None:
    """The library, built on first use; None when it is disabled or cannot be built (status() says why)."""
    global _library, _unavailable
    if _disabled:
        return None
    if _library is not None or _unavailable is not None:
        return _library
    try:
        _library = _bind(ctypes.CDLL(str(_build())))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _unavailable = str(error)
    return _library


def status() -> str:
    """A log line naming the feature path and why."""
    if load() is not None:
        return f"features: our C++ front end (built in {_library_path().parent})"
    if _disabled:
        return "features: numpy (feature_kernels.disable())"
    return f"features: numpy ({_unavailable})"


def _library_path() -> Path:
    return native_build.keyed_folder(BUILD_ROOT, [SOURCE], COMPILE_FLAGS + LINK_FLAGS) / LIBRARY_NAME


def _build() -> Path:
    path = _library_path()
    if path.is_file():
        return path
    if shutil.which("g++") is None:
        raise RuntimeError("the C++ feature front end needs g++ (apt-get install g++)")
    try:
        with native_build.build_lock(path.parent):
            if not path.is_file():  # another process may have built it while this one waited
                _compile(path)
    except OSError as error:  # a read-only checkout, a full disk
        raise RuntimeError(f"cannot build {SOURCE} in {path.parent} ({error})") from error
    native_build.prune_stale(BUILD_ROOT, path.parent)
    return path


def _compile(path: Path) -> None:
    partial = path.with_name(f"{LIBRARY_NAME}.{os.getpid()}.tmp")
    objects = path.with_name(f"features.{os.getpid()}.o")
    try:
        for command in (["g++", *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(objects)],
                        ["g++", *LINK_FLAGS, str(objects), "-o", str(partial)]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                raise RuntimeError(f"building {SOURCE} in {path.parent} failed: {result.stderr.strip()[-1500:]}")
    finally:
        objects.unlink(missing_ok=True)
    partial.replace(path)  # whole or absent: a killed build leaves no half library


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    library.ds2_log_power_features.restype = ctypes.c_int
    library.ds2_log_power_features.argtypes = [  # arrays as raw pointers, made contiguous float32 by the callers
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p]
    library.ds2_cubic_resample.restype = None
    library.ds2_cubic_resample.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
    library.ds2_read_pcm16_wav.restype = ctypes.c_int64
    library.ds2_read_pcm16_wav.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64,
                                           ctypes.POINTER(ctypes.c_uint32)]
    for name in ("ds2_scale_clip", "ds2_mix_clip"):
        getattr(library, name).restype = None
    library.ds2_scale_clip.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p]
    library.ds2_mix_clip.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
                                     ctypes.c_void_p]
    library.ds2_sample_features.restype = ctypes.c_int64
    library.ds2_sample_features.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return library


def fft_size_supported(n_fft: int) -> bool:
    return n_fft >= 4 and n_fft & (n_fft - 1) == 0


def nonzero_bins(weights: np.ndarray) -> np.ndarray:
    """[D, 2] int32: each row's bins [first, last) outside which it is zero ([0, 0) for a zero row),
    what log_power_features skips by; compute it once per weight matrix."""
    nonzero = np.asarray(weights) != 0  # [D, F]
    first = np.argmax(nonzero, axis=1)
    last = nonzero.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    empty = ~nonzero.any(axis=1)
    return np.stack([np.where(empty, 0, first), np.where(empty, 0, last)], axis=1).astype(np.int32)


def log_power_features(samples: np.ndarray, window: int, stride: int, n_fft: int, hann: np.ndarray,
                       mel: np.ndarray | None, log_floor: float, mel_bins: np.ndarray | None = None) -> np.ndarray | None:
    """samples [N] float32 -> log(mel @ power + floor) [T, n_mels], or log(power + floor) [T, n_fft // 2 + 1]
    without mel ([n_mels, n_fft // 2 + 1]); T = 1 + (N - window) // stride. mel_bins: nonzero_bins(mel),
    computed here when not given. None where the library is not used (unavailable, disabled, or n_fft
    not a power of two): the caller computes with numpy."""
    library = load()
    if library is None or not fft_size_supported(n_fft):
        return None
    count = 0 if len(samples) < window else 1 + (len(samples) - window) // stride
    dim = mel.shape[0] if mel is not None else n_fft // 2 + 1
    out = np.empty((count, dim), dtype=np.float32)
    if count:
        hann, mel, mel_bins = _checked_tables(window, n_fft, hann, mel, mel_bins)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        status = library.ds2_log_power_features(_address(samples), len(samples), window, stride, n_fft, _address(hann),
                                                None if mel is None else _address(mel),
                                                None if mel is None else _address(mel_bins),
                                                dim if mel is not None else 0, log_floor, _address(out))
        if status != 0:
            raise ValueError(f"feature front end: window {window}, stride {stride}, n_fft {n_fft} not supported")
    return out


def _checked_tables(window: int, n_fft: int, hann: np.ndarray, mel: np.ndarray | None,
                    mel_bins: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """hann [window], mel [n_mels, n_fft // 2 + 1] and mel_bins [n_mels, 2] (nonzero_bins(mel) when not
    given) as the contiguous float32 / int32 arrays the front end reads; a ValueError naming a wrong shape."""
    hann = np.ascontiguousarray(hann, dtype=np.float32)
    if hann.shape != (window,):
        raise ValueError(f"hann has shape {hann.shape}, not ({window},)")
    if mel is None:
        return hann, None, None
    mel = np.ascontiguousarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"mel has shape {mel.shape}, not (n_mels, {n_fft // 2 + 1}): one weight per FFT bin")
    mel_bins = np.ascontiguousarray(nonzero_bins(mel) if mel_bins is None else mel_bins, dtype=np.int32)
    if mel_bins.shape != (mel.shape[0], 2):
        raise ValueError(f"mel_bins has shape {mel_bins.shape}, not ({mel.shape[0]}, 2): pass nonzero_bins(mel)")
    return hann, mel, mel_bins


class FrontEnd(ctypes.Structure):
    """The settings and tables of ds2_log_power_features for ds2_sample_features, made once per feature
    config (features.front_end); it keeps its arrays alive."""
    _fields_ = [("window", ctypes.c_int32), ("stride", ctypes.c_int32), ("n_fft", ctypes.c_int32),
                ("n_mels", ctypes.c_int32), ("log_floor", ctypes.c_float), ("hann", ctypes.c_void_p),
                ("mel", ctypes.c_void_p), ("mel_bins", ctypes.c_void_p)]


def front_end(window: int, stride: int, n_fft: int, hann: np.ndarray, mel: np.ndarray | None, log_floor: float,
              mel_bins: np.ndarray | None = None) -> FrontEnd | None:
    """log_power_features' arguments but the samples, for sample_features; None where the library is
    not used."""
    if load() is None or not fft_size_supported(n_fft):
        return None
    if window > n_fft:
        raise ValueError(f"window {window} is longer than n_fft {n_fft}")
    hann, mel, mel_bins = _checked_tables(window, n_fft, hann, mel, mel_bins)
    settings = FrontEnd(window, stride, n_fft, 0 if mel is None else mel.shape[0], log_floor, _address(hann),
                        None if mel is None else _address(mel), None if mel is None else _address(mel_bins))
    settings.arrays = (hann, mel, mel_bins)
    settings.dim = n_fft // 2 + 1 if mel is None else mel.shape[0]
    return settings


class NoiseClips(ctypes.Structure):
    """The augmentation's noise clips for ds2_sample_features (noise_clips makes it; it keeps them alive)."""
    _fields_ = [("count", ctypes.c_int64), ("clips", ctypes.c_void_p), ("lengths", ctypes.c_void_p)]


def noise_clips(clips: list[np.ndarray]) -> NoiseClips:
    """The clips' addresses and lengths in a table sample_features passes on (any count, none too)."""
    clips = [np.ascontiguousarray(clip, dtype=np.float32) for clip in clips]
    addresses = np.array([_address(clip) for clip in clips] or [0], dtype=np.uint64)
    lengths = np.array([len(clip) for clip in clips] or [0], dtype=np.int64)
    table = NoiseClips(len(clips), _address(addresses), _address(lengths))
    table.arrays = (clips, addresses, lengths)
    return table


def sample_features(samples: np.ndarray, plan: np.ndarray, noise: NoiseClips | None, settings: FrontEnd,
                    out: np.ndarray) -> bool:
    """out [T, D] (C-contiguous float32, T the frames of the samples after the plan's audio rows) :=
    the features of samples [N] float32 after the audio rows of plan [R, 4] float64, then its edit rows
    (utils/augment.py's STEP_* and EDIT_*, those of NUMPY_ONLY_KINDS excepted). False where the
    library is not used or refuses the plan (the caller takes numpy's way)."""
    library = load()
    if library is None:
        return False
    if out.ndim != 2 or out.shape[1] != settings.dim or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out is a {out.dtype} array of shape {out.shape}, not a C-contiguous float32 (T, {settings.dim})")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    plan = np.ascontiguousarray(plan, dtype=np.float64)
    frames = library.ds2_sample_features(_address(samples), len(samples), _address(plan), len(plan),
                                         None if noise is None else ctypes.addressof(noise), ctypes.addressof(settings),
                                         _address(out), len(out))
    return frames == len(out)


def cubic_resample(samples: np.ndarray, new_length: int) -> np.ndarray | None:
    """samples [N] float32 -> [new_length], Catmull-Rom cubic interpolation (soxr's "QQ" method);
    None where the library is not used."""
    library = load()
    if library is None:
        return None
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    out = np.empty(new_length, dtype=np.float32)
    library.ds2_cubic_resample(_address(samples), len(samples), _address(out), new_length)
    return out


def read_pcm16_wav(path) -> tuple[np.ndarray, int] | None:
    """(samples [N] float32, mixed to mono, rate) of a 16-bit PCM WAV file, the values of
    utils/audio.read_pcm16_wav's path; None for any other file, on any error, or where the library is not
    used (the caller reads it another way)."""
    library = load()
    if library is None:
        return None
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    out = np.empty(size // 2, dtype=np.float32)  # room for every byte pair: more than the mono samples
    rate = ctypes.c_uint32(0)
    frames = library.ds2_read_pcm16_wav(os.fsencode(path), _address(out), len(out), ctypes.byref(rate))
    return None if frames <= 0 else (out[:frames], rate.value)


def scale_clip(samples: np.ndarray, gain: float) -> np.ndarray | None:
    """clip(samples [N] * gain, -1, 1) as a new float32 array; None where the library is not used."""
    library = load()
    if library is None:
        return None
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    out = np.empty_like(samples)
    library.ds2_scale_clip(_address(samples), len(samples), gain, _address(out))
    return out


def mix_clip(samples: np.ndarray, noise: np.ndarray, scale: float) -> np.ndarray | None:
    """clip(samples [N] + noise [N] * scale, -1, 1) as a new float32 array; None where the library is not used."""
    library = load()
    if library is None:
        return None
    if noise.shape != samples.shape:
        raise ValueError(f"noise has shape {noise.shape}, samples {samples.shape}: cut the noise to the samples' length")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    noise = np.ascontiguousarray(noise, dtype=np.float32)
    out = np.empty_like(samples)
    library.ds2_mix_clip(_address(samples), _address(noise), len(samples), scale, _address(out))
    return out


"""Our C++ feature front end (utils/feature_kernels.py) against the numpy path it replaces, its cubic
resampler against a plain reference, its WAV reader, gain and noise mix against the Python paths they
replace, and the fallback to numpy when it cannot be built."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile

from conftest import tone
from utils import augment, feature_kernels
from utils.audio import read_pcm16_wav
from utils.features import LOG_FLOOR, _hann, _mel_matrix, compute_features, power_spectrum

pytestmark = pytest.mark.skipif(feature_kernels.load() is None, reason=feature_kernels.status())


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise under two tones with a slow envelope: energy in every bin, loud and quiet frames."""
    rng = np.random.default_rng(seed)
    count = int(16000 * seconds)
    envelope = 0.55 + 0.45 * np.sin(np.linspace(0, 6 * np.pi, count))
    mix = tone(seconds, freq=440.0, amplitude=0.3) + tone(seconds, freq=2100.0, amplitude=0.1)
    mix = mix + 0.02 * rng.standard_normal(count)
    return (envelope * mix).astype(np.float32)


def numpy_fbank(samples: np.ndarray, n_mels: int = 80, sample_rate: int = 16000) -> np.ndarray:
    window, stride = sample_rate * 25 // 1000, sample_rate * 10 // 1000
    power = power_spectrum(samples, window, stride, 512)
    return np.log(power @ _mel_matrix(sample_rate, 512, n_mels).T + LOG_FLOOR)


def test_loading_the_library_leaves_denormals_alone():
    """Linked with -ffast-math, the library's load set flush-to-zero for the whole process (Paddle too)."""
    feature_kernels.load()
    tiny = np.array([1e-40], np.float32)
    assert (tiny * np.float32(1.0))[0] != 0.0 and (np.array([1e-310]) * 1.0)[0] != 0.0


@pytest.mark.parametrize("count", [400, 401, 559, 560, 1000, 16000 + 13, 48000])
def test_fbank_equals_numpy_path(count):
    samples = speech_like(3.0)[:count]
    ours = compute_features(samples, "fbank")  # the library: n_fft 512
    reference = numpy_fbank(samples)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-4)


@pytest.mark.parametrize("sample_rate, n_mels", [(8000, 40), (16000, 40), (16000, 128)])
def test_fbank_equals_numpy_path_at_other_rates_and_bands(sample_rate, n_mels):
    samples = speech_like(1.0, seed=3)[:sample_rate]
    ours = compute_features(samples, "fbank", sample_rate, n_mels)
    np.testing.assert_allclose(ours, numpy_fbank(samples, n_mels, sample_rate), rtol=0, atol=2e-4)


@pytest.mark.parametrize("window, frames", [(256, 124), (255, 124), (101, 125)])  # odd: a last lone sample
def test_log_power_without_mel_equals_numpy(window, frames):
    samples = speech_like(1.0, seed=1)
    stride, n_fft = 128, 256  # a power of two: the library's linear path
    ours = feature_kernels.log_power_features(samples, window, stride, n_fft, _hann(window), None, LOG_FLOOR)
    reference = np.log(power_spectrum(samples, window, stride, n_fft) + LOG_FLOOR)
    assert ours.shape == reference.shape == (frames, 129)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-3)


@pytest.mark.parametrize("n_fft", [4, 8, 16, 32, 64, 128, 1024, 2048])
def test_every_power_of_two_fft_size_equals_numpy(n_fft):
    """An odd number of radix-2 stages (n_fft 4, 16, 64, 1024: one radix-2 stage, then pairs) and an even
    one (8, 32, 128, 2048: pairs only); 20 frames: two full blocks of eight and a partial one."""
    window, stride = n_fft, n_fft // 2
    samples = speech_like(2.0, seed=2)[:window + 19 * stride]
    ours = feature_kernels.log_power_features(samples, window, stride, n_fft, _hann(window), None, LOG_FLOOR)
    reference = np.log(power_spectrum(samples, window, stride, n_fft) + LOG_FLOOR)
    assert ours.shape == reference.shape == (20, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-3)


def test_nonzero_bins_bound_each_rows_nonzero_weights():
    weights = np.array([[0, 1, 0, 2, 0], [0, 0, 0, 0, 0], [3, 0, 0, 0, 0], [0, 0, 0, 0, 4]], np.float32)
    np.testing.assert_array_equal(feature_kernels.nonzero_bins(weights), [[1, 4], [0, 0], [0, 1], [4, 5]])


def test_any_weight_matrix_equals_numpy_rows_with_gaps_and_zero_rows_included():
    """The front end skips each row's zeros outside its bins; a zero inside them, or a row of zeros
    (log of the floor), comes out as numpy's matrix product gives it."""
    samples = speech_like(1.0, seed=4)
    weights = np.random.default_rng(0).uniform(0, 1, (6, 257)).astype(np.float32)
    weights[0, :100] = weights[0, 110:] = 0.0
    weights[1, 50:60] = 0.0
    weights[2] = 0.0
    weights[3, :256] = 0.0
    ours = feature_kernels.log_power_features(samples, 400, 160, 512, _hann(400), weights, LOG_FLOOR)
    reference = np.log(power_spectrum(samples, 400, 160, 512) @ weights.T + LOG_FLOOR)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-4)
    with pytest.raises(ValueError, match="nonzero_bins"):
        feature_kernels.log_power_features(samples, 400, 160, 512, _hann(400), weights, LOG_FLOOR,
                                           np.zeros((5, 2), np.int32))


def test_fft_sizes_that_are_not_powers_of_two_go_to_numpy():
    samples = speech_like(0.5)
    assert feature_kernels.log_power_features(samples, 320, 160, 320, _hann(320), None, LOG_FLOOR) is None
    linear = compute_features(samples, "linear")  # n_fft 320: numpy computes it
    np.testing.assert_array_equal(linear, np.log(power_spectrum(samples, 320, 160, 320) + LOG_FLOOR))


def test_shorter_than_a_window_gives_no_frames():
    assert compute_features(np.zeros(399, np.float32), "fbank").shape == (0, 80)
    assert feature_kernels.log_power_features(np.zeros(0, np.float32), 400, 160, 512, _hann(400),
                                              _mel_matrix(16000, 512, 80), LOG_FLOOR).shape == (0, 80)


def test_silence_gives_the_log_floor():
    feats = compute_features(np.zeros(1600, np.float32), "fbank")
    np.testing.assert_allclose(feats, np.log(LOG_FLOOR), rtol=1e-6)


def cubic_reference(samples: np.ndarray, length: int) -> np.ndarray:
    """Catmull-Rom through the four samples around i * N / length, ends repeated (float64)."""
    last, out = len(samples) - 1, np.empty(length)
    for i in range(length):
        position = i * len(samples) / length
        j = min(int(position), last)
        t = position - j
        p0, p1 = samples[max(j - 1, 0)], samples[j]
        p2, p3 = samples[min(j + 1, last)], samples[min(j + 2, last)]
        out[i] = p1 + 0.5 * t * (p2 - p0 + t * (2 * p0 - 5 * p1 + 4 * p2 - p3 + t * (3 * (p1 - p2) + p3 - p0)))
    return out


# from (1000, 1111) on: eight outputs at a time with AVX-512 (rates up to 1.5), a scalar start and tail
@pytest.mark.parametrize("count, length", [(1, 3), (2, 5), (5, 7), (5, 3), (1000, 1111), (1000, 909), (40, 37),
                                           (48000, 43637), (48001, 53334)])
def test_cubic_resample_equals_the_reference(count, length):
    samples = np.random.default_rng(count).uniform(-1, 1, count).astype(np.float32)
    out = feature_kernels.cubic_resample(samples, length)
    assert out.shape == (length,) and out.dtype == np.float32
    # 32.32 fixed-point positions: the truncated step puts output i up to i * 2^-32 samples early, which
    # moves a value by up to about 4x that on samples drawn from [-1, 1]
    np.testing.assert_allclose(out, cubic_reference(samples, length), rtol=0, atol=2e-6 + 4 * length * 2.0 ** -32)


def test_cubic_resample_beyond_rate_one_and_a_half_is_the_same_interpolation():
    samples = np.random.default_rng(7).uniform(-1, 1, 3001).astype(np.float32)  # rates 1.6 and 2.5
    for length in (1875, 1200):
        np.testing.assert_allclose(feature_kernels.cubic_resample(samples, length), cubic_reference(samples, length),
                                   rtol=0, atol=2e-6)


def test_cubic_resample_to_the_same_length_returns_the_samples():
    samples = speech_like(0.1)
    np.testing.assert_array_equal(feature_kernels.cubic_resample(samples, len(samples)), samples)


def test_cubic_resample_keeps_a_tone_at_the_new_rate():
    out = feature_kernels.cubic_resample(tone(1.0, freq=100.0), 32000)  # half speed: 100 Hz becomes 50 Hz
    spectrum = np.abs(np.fft.rfft(out))
    assert int(np.argmax(spectrum)) == 100  # bin 100 of a 2 s window at 16 kHz: 50 Hz


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_wav_reader_gives_the_python_readers_mono_samples(tmp_path, channels):
    path = tmp_path / f"clip_{channels}.wav"
    pcm = np.random.default_rng(channels).uniform(-1, 1, (1601, channels)).astype(np.float32)
    soundfile.write(str(path), pcm, 22050, subtype="PCM_16")
    samples, rate = feature_kernels.read_pcm16_wav(path)
    reference, reference_rate = read_pcm16_wav(path)  # [N, C]
    assert rate == reference_rate == 22050 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, reference.mean(axis=1) if channels > 1 else reference[:, 0])


def test_wav_reader_walks_other_chunks_and_keeps_a_cut_files_whole_frames(tmp_path):
    plain = tmp_path / "plain.wav"
    soundfile.write(str(plain), speech_like(0.1), 16000, subtype="PCM_16")
    data = plain.read_bytes()
    fmt_end = 12 + 8 + int.from_bytes(data[16:20], "little")
    odd = b"LIST" + (5).to_bytes(4, "little") + b"abcde" + b"\0"  # an odd size, padded to even
    body = data[12:fmt_end] + odd + data[fmt_end:-3]  # and the last sample cut to one of its two bytes
    path = tmp_path / "chunks.wav"
    path.write_bytes(b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WAVE" + body)
    samples, _ = feature_kernels.read_pcm16_wav(path)
    np.testing.assert_array_equal(samples, read_pcm16_wav(path)[0][:, 0])
    assert len(samples) == 1600 - 2


def test_wav_reader_reads_a_long_file_and_the_next_one(tmp_path):
    long, short = tmp_path / "long.wav", tmp_path / "short.wav"  # 18 MB: past the buffer the reader keeps
    soundfile.write(str(long), np.tile(speech_like(1.0), 9 * 60), 16000, subtype="PCM_16")
    soundfile.write(str(short), speech_like(0.2), 16000, subtype="PCM_16")
    for path in (long, short):
        samples, _ = feature_kernels.read_pcm16_wav(path)
        np.testing.assert_array_equal(samples, read_pcm16_wav(path)[0][:, 0])


@pytest.mark.parametrize("content", [None, b"", b"RIFF\x04\x00\x00\x00WAVE", b"RIFF\x00\x00\x00\x00WAVEdata"])
def test_wav_reader_leaves_missing_and_broken_files_to_the_caller(tmp_path, content):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    assert feature_kernels.read_pcm16_wav(path) is None


def test_wav_reader_agrees_with_the_python_reader_on_damaged_files(tmp_path):
    """Random bytes of the header region changed and random cuts: the C++ parser takes or refuses each
    file as utils/audio.read_pcm16_wav does, with the same samples."""
    plain = tmp_path / "plain.wav"
    soundfile.write(str(plain), np.random.default_rng(0).uniform(-1, 1, (300, 2)).astype(np.float32), 16000,
                    subtype="PCM_16")
    data = plain.read_bytes()
    fmt_end = 12 + 8 + int.from_bytes(data[16:20], "little")
    original = bytearray(data[:fmt_end] + b"LIST" + (3).to_bytes(4, "little") + b"abc\0" + data[fmt_end:])
    rng, path, taken = np.random.default_rng(1), tmp_path / "damaged.wav", 0
    for _ in range(300):
        damaged = bytearray(original)
        for position in rng.integers(0, 64, rng.integers(1, 4)):
            damaged[position] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged[:rng.integers(0, len(damaged) + 1)]))
        ours, theirs = feature_kernels.read_pcm16_wav(path), read_pcm16_wav(path)
        if theirs is None or len(theirs[0]) == 0:
            assert ours is None
            continue
        taken += 1
        assert ours[1] == theirs[1]
        mono = theirs[0].mean(axis=1) if theirs[0].shape[1] > 1 else theirs[0][:, 0]
        np.testing.assert_allclose(ours[0], mono, rtol=0, atol=1e-6)  # numpy sums 8 or more channels pairwise
    assert taken > 30  # most damage leaves a readable file: the comparison covered both outcomes


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_24", "PCM_U8"])
def test_wav_reader_leaves_other_encodings_to_the_caller(tmp_path, subtype):
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(str(path), speech_like(0.1), 16000, subtype=subtype)
    assert feature_kernels.read_pcm16_wav(path) is None


def test_gain_and_noise_mix_equal_numpy():
    samples, noise = speech_like(1.0, seed=4) * 3, speech_like(1.0, seed=5)  # loud: some samples clip
    gain, scale = np.float32(1.7), np.float32(0.4)
    np.testing.assert_array_equal(feature_kernels.scale_clip(samples, gain),
                                  np.clip(np.multiply(samples, gain, dtype=np.float32), -1, 1))
    mixed = np.clip(np.multiply(noise, scale, dtype=np.float32) + samples, -1, 1)
    np.testing.assert_allclose(feature_kernels.mix_clip(samples, noise, scale), mixed, rtol=0, atol=1e-7)
    assert np.abs(samples).max() > 1 and np.abs(feature_kernels.scale_clip(samples, gain)).max() == 1
    with pytest.raises(ValueError, match="cut the noise"):
        feature_kernels.mix_clip(samples, noise[:-1], scale)


def test_volume_and_noise_steps_draw_and_mix_as_numpy_does(monkeypatch):
    samples, clips = speech_like(1.0, seed=6), [speech_like(2.0, seed=7)]
    ours = [augment.volume_perturb(samples, np.random.default_rng(1), -10, 10),
            augment.add_noise(samples, np.random.default_rng(2), clips, 0, 10)]
    for name in ("scale_clip", "mix_clip"):
        monkeypatch.setattr(feature_kernels, name, lambda *args: None)  # numpy's path
    numpy_path = [augment.volume_perturb(samples, np.random.default_rng(1), -10, 10),
                  augment.add_noise(samples, np.random.default_rng(2), clips, 0, 10)]
    np.testing.assert_array_equal(ours[0], numpy_path[0])
    np.testing.assert_allclose(ours[1], numpy_path[1], rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- one sample in one call
A = augment


def numpy_sample(samples, plan, clips, band_limit_hz=None):
    """A plan's features the step-by-step way: utils/augment.py's numpy executors (with the library's
    per-step kernels where they have one) and compute_features."""
    audio = [row for row in plan if row[0] < A.EDIT_FILL]
    feats = compute_features(A.apply_audio_rows(samples, audio, clips), "fbank", band_limit_hz=band_limit_hz)
    return A.apply_feature_edits(feats, plan[len(audio):])


def fused_sample(samples, plan, clips, band_limit_hz=None, frames=None):
    from utils.features import front_end, num_frames

    length = next((row[1] for row in reversed(plan) if row[0] == A.STEP_SPEED), len(samples))
    out = np.full((num_frames(length, "fbank") if frames is None else frames, 80), np.nan, dtype=np.float32)
    ok = feature_kernels.sample_features(samples, np.array(plan, dtype=np.float64).reshape(-1, 4),
                                         feature_kernels.noise_clips(clips), front_end("fbank", 16000, 80, band_limit_hz),
                                         out)
    return out if ok else None


# every kind the C++ path takes: a shift each way, a noise clip shorter than the samples (repeated,
# its stretch wrapping past its end), masks, copies, and a second fill after a copy
SAMPLE_PLANS = {
    "speed, gain, shift later": [(A.STEP_SPEED, 17000, 0, 0), (A.STEP_GAIN, 1.7, 0, 0), (A.STEP_SHIFT, 400, 0, 0)],
    "shift earlier, noise wrapping": [(A.STEP_SHIFT, -800, 0, 0), (A.STEP_NOISE, 1, 3100, 12.5)],
    "noise from a longer clip": [(A.STEP_NOISE, 0, 1234, 25.0), (A.STEP_SPEED, 14000, 0, 0)],
    "edits": [(A.EDIT_FILL, 0, 0, 0), (A.EDIT_FREQ_MASK, 70, 10, 0), (A.EDIT_TIME_MASK, 3, 5, 0),
              (A.EDIT_COPY, 40, 12, 7), (A.EDIT_FILL, 0, 0, 0), (A.EDIT_TIME_MASK, 90, 8, 0)],
    "all": [(A.STEP_SPEED, 15500, 0, 0), (A.STEP_GAIN, 0.25, 0, 0), (A.STEP_NOISE, 1, 3000, 10.0),
            (A.EDIT_FILL, 0, 0, 0), (A.EDIT_FREQ_MASK, 0, 3, 0), (A.EDIT_COPY, 30, 20, 2)],
    "nothing": [],
}


@pytest.mark.parametrize("name", SAMPLE_PLANS)
def test_a_samples_plan_in_one_call_equals_the_steps_one_by_one(name):
    samples, clips = speech_like(1.0, seed=8), [speech_like(2.0, seed=9), speech_like(0.3, seed=10)]
    plan = SAMPLE_PLANS[name]
    ours, reference = fused_sample(samples, plan, clips), numpy_sample(samples, plan, clips)
    assert ours is not None and ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=5e-6)
    ours = fused_sample(samples, plan, clips, band_limit_hz=4000.0)
    np.testing.assert_allclose(ours, numpy_sample(samples, plan, clips, 4000.0), rtol=0, atol=5e-6)


def test_a_fill_of_no_frames_and_masks_past_the_end_are_harmless():
    samples = speech_like(0.02)  # under one window: no frames
    plan = [(A.EDIT_FILL, 0, 0, 0), (A.EDIT_FREQ_MASK, 78, 10, 0), (A.EDIT_TIME_MASK, 0, 3, 0)]
    assert fused_sample(samples, plan, []).shape == (0, 80)
    ours = fused_sample(speech_like(0.5), [(A.EDIT_FILL, 0, 0, 0), (A.EDIT_FREQ_MASK, 75, 10, 0)], [])
    assert np.all(ours[:, 75:] == ours[0, 75]) and not np.isnan(ours).any()


@pytest.mark.parametrize("plan, frames", [
    ([(A.STEP_ROUND_TRIP, 8000, 16000, 0)], None),  # soxr's: numpy only
    ([(A.EDIT_WARP, 40, 44, 0)], None),               # numpy only
    ([(7, 0, 0, 0)], None),                           # no such kind
    ([(A.EDIT_FILL, 0, 0, 0), (A.STEP_GAIN, 2.0, 0, 0)], None),  # an audio row after an edit
    ([(A.STEP_NOISE, 2, 0, 10.0)], None),             # no third clip
    ([(A.STEP_SHIFT, 16000, 0, 0)], None),            # shifts everything out
    ([], 5),                                          # out has not the result's frame count
])
def test_the_one_call_refuses_what_it_cannot_apply(plan, frames):
    clips = [speech_like(2.0, seed=9), speech_like(0.3, seed=10)]
    assert fused_sample(speech_like(1.0), plan, clips, frames=frames) is None


@pytest.fixture
def fresh_library_state(monkeypatch):
    """Lets a test make the library unavailable; the loaded library comes back afterwards."""
    for name in ("_library", "_unavailable", "_disabled"):
        monkeypatch.setattr(feature_kernels, name, getattr(feature_kernels, name))
    monkeypatch.setattr(feature_kernels, "_library", None)
    monkeypatch.setattr(feature_kernels, "_unavailable", None)


def test_without_gpp_numpy_computes_the_same_features(fresh_library_state, monkeypatch):
    samples = speech_like(1.0)
    monkeypatch.setattr(feature_kernels, "BUILD_ROOT", feature_kernels.BUILD_ROOT / "never_built")
    monkeypatch.setattr(feature_kernels.shutil, "which", lambda name: None)
    assert feature_kernels.load() is None
    assert "numpy (the C++ feature front end needs g++ (apt-get install g++))" in feature_kernels.status()
    assert feature_kernels.cubic_resample(samples, 10) is None
    assert feature_kernels.scale_clip(samples, 0.5) is None and feature_kernels.mix_clip(samples, samples, 0.5) is None
    np.testing.assert_array_equal(compute_features(samples, "fbank"), numpy_fbank(samples))


def test_a_failed_build_names_the_source_and_numpy_takes_over(fresh_library_state, monkeypatch, tmp_path):
    broken = tmp_path / "features.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(feature_kernels, "SOURCE", broken)
    monkeypatch.setattr(feature_kernels, "BUILD_ROOT", tmp_path / "build")
    assert feature_kernels.load() is None
    note = feature_kernels.status()
    assert f"building {broken}" in note and "failed" in note and "features: numpy" in note
    assert not list((tmp_path / "build").glob("*/*.so*"))  # no half library left behind
    assert compute_features(speech_like(0.5), "fbank").shape == (48, 80)


def test_disable_switches_to_numpy_and_back(fresh_library_state):
    samples = speech_like(0.5)
    feature_kernels.disable()
    assert feature_kernels.status() == "features: numpy (feature_kernels.disable())"
    np.testing.assert_array_equal(compute_features(samples, "fbank"), numpy_fbank(samples))
    feature_kernels.disable(False)
    assert feature_kernels.status().startswith("features: our C++ front end")


def test_the_log_says_numpy_computes_linear_features_whose_fft_is_not_a_power_of_two():
    from utils.features import path_note

    assert path_note("fbank", 16000, 80).startswith("features: our C++ front end")
    assert path_note("linear", 16000, 80) == ("features: numpy (linear at 16000 Hz takes a 320-point FFT, and our "
                                              "C++ front end only powers of two); WAV reading and speed "
                                              "perturbation in C++")


def test_an_unwritable_build_folder_leaves_numpy_computing(fresh_library_state, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")  # mkdir under a file fails, even for root
    monkeypatch.setattr(feature_kernels, "BUILD_ROOT", blocker / "build")
    assert feature_kernels.load() is None
    assert feature_kernels.status().startswith(f"features: numpy (cannot build {feature_kernels.SOURCE} in "
                                               f"{blocker / 'build'}")
    samples = speech_like(0.5)
    np.testing.assert_array_equal(compute_features(samples, "fbank"), numpy_fbank(samples))

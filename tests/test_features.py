"""Feature shapes from the frame formula, and statistics on known signals."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tone
from utils.features import (FeatureStats, _mel_matrix, compute_features, feature_dim, load_mean_std, num_frames,
                            power_spectrum, save_mean_std)

# (samples, frames): linear 20 ms window 320 / stride 160; fbank 25 ms window 400 / stride 160
LINEAR_FRAMES = [(0, 0), (319, 0), (320, 1), (479, 1), (480, 2), (16000, 99), (16001, 99)]
FBANK_FRAMES = [(399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (48000, 298)]


@pytest.mark.parametrize("method,cases,dim", [("linear", LINEAR_FRAMES, 161), ("fbank", FBANK_FRAMES, 80)])
def test_frame_count_follows_the_formula(method, cases, dim):
    rng = np.random.default_rng(0)
    for samples, frames in cases:
        assert num_frames(samples, method) == frames
        feats = compute_features(rng.standard_normal(samples).astype(np.float32), method)
        assert feats.shape == (frames, dim) and feats.dtype == np.float32
    assert feature_dim(method) == dim


def test_feature_dims_follow_sample_rate_and_n_mels():
    assert feature_dim("linear", sample_rate=8000) == 81
    assert feature_dim("fbank", n_mels=40) == 40
    assert compute_features(tone(0.5), "fbank", n_mels=40).shape == (48, 40)
    with pytest.raises(ValueError, match="unknown feature_method 'mfcc'"):
        compute_features(tone(0.5), "mfcc")


def test_sine_power_lands_in_its_bin_with_the_pinned_value():
    feats = compute_features(tone(1.0, freq=1000.0, amplitude=0.5))  # [99, 161]
    # 1000 Hz / (16000 / 320) = bin 20; power = (amplitude / 2 * sum(window))^2, sum(window) = 160.5
    assert np.all(np.argmax(feats, axis=1) == 20)
    np.testing.assert_allclose(feats[:, 20], np.log((0.25 * 160.5) ** 2), atol=1e-3)
    assert float(feats[:, 20].mean()) == pytest.approx(7.3840036, abs=1e-5)
    # the mean includes bins far from the tone, near float32 FFT round-off (-18.945555 in float64)
    assert float(feats.mean()) == pytest.approx(-18.944525, abs=1e-4)


@pytest.mark.parametrize("sample_rate, n_fft, n_mels", [(16000, 512, 80), (8000, 512, 40), (22050, 1024, 128)])
def test_mel_matrix_equals_librosa(sample_rate, n_fft, n_mels):
    librosa = pytest.importorskip("librosa")  # a dev dependency: the toolkit computes the matrix itself
    ours = _mel_matrix(sample_rate, n_fft, n_mels)
    theirs = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    assert ours.shape == theirs.shape == (n_mels, n_fft // 2 + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8)


def test_float32_fft_matches_a_float64_reference():
    samples = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    window, stride = 400, 160
    frames = np.stack([samples[i:i + window] for i in range(0, len(samples) - window + 1, stride)])
    hann = np.hanning(window + 2)[1:-1]
    reference = np.abs(np.fft.rfft(frames.astype(np.float64) * hann, n=512, axis=1)) ** 2
    power = power_spectrum(samples, window, stride, n_fft=512)
    assert power.dtype == np.float32 and power.shape == reference.shape == (98, 257)
    np.testing.assert_allclose(np.log(power + 1e-10), np.log(reference + 1e-10), atol=2e-3)


def test_fbank_of_a_sine_is_pinned():
    feats = compute_features(tone(1.0, freq=1000.0), "fbank")  # [98, 80]
    assert int(np.argmax(feats.mean(axis=0))) == 26
    assert float(feats.mean(axis=0).max()) == pytest.approx(4.189554, abs=1e-4)


def test_feature_stats_equal_numpy_mean_and_std_across_merges():
    rng = np.random.default_rng(1)
    parts = [rng.normal(3.0, 2.0, size=(n, 5)).astype(np.float32) for n in (7, 1, 30)]
    first, second = FeatureStats(5), FeatureStats(5)
    first.add(parts[0])
    second.add(parts[1])
    second.add(parts[2])
    first.merge(second)
    mean, std = first.mean_std()
    everything = np.concatenate(parts).astype(np.float64)
    assert first.frames == 38
    np.testing.assert_allclose(mean, everything.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, everything.std(axis=0), rtol=1e-5)


def test_feature_stats_of_constant_columns():
    stats = FeatureStats(2)
    stats.add(np.array([[1.0, -2.0], [3.0, -2.0]], dtype=np.float32))
    mean, std = stats.mean_std()
    assert mean.tolist() == [2.0, -2.0]
    assert std[0] == 1.0 and 0 < std[1] < 1e-9  # floored, never zero
    with pytest.raises(ValueError, match="no feature frames"):
        FeatureStats(3).mean_std()


def test_mean_std_file_round_trip(tmp_path):
    mean, std = np.arange(3, dtype=np.float32), np.ones(3, dtype=np.float32)
    save_mean_std(tmp_path / "mean_std.npz", mean, std, "fbank", 16000, 80)
    loaded = load_mean_std(tmp_path / "mean_std.npz")
    assert loaded["feature_method"] == "fbank" and (loaded["sample_rate"], loaded["n_mels"]) == (16000, 80)
    np.testing.assert_array_equal(loaded["mean"], mean)
    with pytest.raises(FileNotFoundError, match="run python create_data.py"):
        load_mean_std(tmp_path / "missing.npz")
    np.savez(tmp_path / "masr.npz", mean=mean, std=std)  # MASR's: mean and std only
    with pytest.raises(ValueError, match=r"masr.npz lacks feature_method .*run python create_data.py"):
        load_mean_std(tmp_path / "masr.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "mean_std.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut.npz cannot be read .*run python create_data.py"):
        load_mean_std(tmp_path / "cut.npz")


@pytest.mark.parametrize("method", ["linear", "fbank"])
def test_band_limit_removes_the_power_above_it_on_both_paths(method):
    from utils import feature_kernels
    from utils.features import LOG_FLOOR, band_gain

    samples = np.random.default_rng(3).standard_normal(16000).astype(np.float32) * 0.1  # white: power in every bin
    full = compute_features(samples, method)
    limited = compute_features(samples, method, band_limit_hz=4000.0)
    assert limited.shape == full.shape
    gain = band_gain(16000, 320 if method == "linear" else 512, 4000.0)  # [bins]: 1 to 0.9 x 4 kHz, 0 from 0.98 x
    assert gain[0] == 1.0 and gain[int(0.9 * 4000 / 16000 * len(gain) * 2) - 1] == 1.0 and gain[-1] == 0.0
    if method == "linear":  # bin k at k * 50 Hz
        np.testing.assert_allclose(limited[:, :72], full[:, :72], atol=1e-5)  # up to 3.55 kHz: untouched
        np.testing.assert_allclose(limited[:, 79:], np.log(LOG_FLOOR), rtol=1e-6)  # from 3.95 kHz: nothing
    else:
        assert np.abs(limited - full).mean(axis=0)[:40].max() < 1e-5
        np.testing.assert_allclose(limited[:, -1], np.log(LOG_FLOOR), rtol=1e-6)
    feature_kernels.disable()  # numpy's path gives the same values
    try:
        np.testing.assert_allclose(compute_features(samples, method, band_limit_hz=4000.0), limited, atol=1e-4)
    finally:
        feature_kernels.disable(False)


@pytest.mark.parametrize("sample_rate,n_fft", [(16000, 512), (20480, 512), (22050, 1024), (44100, 2048),
                                               (48000, 2048)])
def test_fbank_above_20_khz_takes_a_longer_fft_on_both_paths(sample_rate, n_fft):
    """A 25 ms window is longer than 512 samples above 20.48 kHz: fbank failed there on both paths."""
    from utils import feature_kernels
    from utils.features import fft_size, window_and_stride

    assert fft_size("fbank", window_and_stride("fbank", sample_rate)[0]) == n_fft
    samples = np.random.default_rng(5).standard_normal(sample_rate // 2).astype(np.float32) * 0.1
    fast = compute_features(samples, "fbank", sample_rate)
    assert fast.shape == (num_frames(len(samples), "fbank", sample_rate), 80) and np.isfinite(fast).all()
    feature_kernels.disable()
    try:
        np.testing.assert_allclose(compute_features(samples, "fbank", sample_rate), fast, atol=1e-4)
    finally:
        feature_kernels.disable(False)

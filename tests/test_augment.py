"""Augmentation: every augmentor on seeded generators, the JSON list, and its effect on training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_noise
from train_fixtures import ROOT, max_abs_diff, model_folder, read_params, spoken_corpus, tiny_config  # noqa: F401
from utils.audio import load_audio
from utils.augment import (Augmentation, _round_trip, add_noise, load_augmentation, resample_perturb, spec_augment,
                           spec_sub, speed_perturb, time_shift, volume_perturb)
from utils.features import LOG_FLOOR, _mel_matrix, compute_features
from utils.config import parse_args
from utils.data import SpeechDataset
from utils.manifest import read_manifest
from utils.text import Vocabulary

SR = 16000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def tone(seconds: float = 1.0, freq: float = 440.0, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def white(seconds: float = 1.0, amplitude: float = 0.1, seed: int = 1) -> np.ndarray:
    return (amplitude * rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def log_feats(steps: int = 120, dim: int = 40, seed: int = 2) -> np.ndarray:
    return rng(seed).normal(-5.0, 2.0, (steps, dim)).astype(np.float32)


# ----------------------------------------------------------------------------- audio
def test_speed_changes_length_by_the_rate():
    samples = white(1.0)
    assert len(speed_perturb(samples, rng(), 0.9, 0.9)) == round(16000 / 0.9) == 17778
    assert len(speed_perturb(samples, rng(), 1.1, 1.1)) == round(16000 / 1.1) == 14545
    for seed in range(20):
        out = speed_perturb(samples, rng(seed), 0.9, 1.1)
        assert 14545 <= len(out) <= 17778
        assert out.dtype == np.float32


def test_speed_is_resampling_of_the_same_signal():
    out = speed_perturb(tone(1.0, 100.0), rng(), 0.5, 0.5)  # half speed: 100 Hz becomes 50 Hz
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) * SR / len(out) == pytest.approx(50.0, abs=1.0)


def test_volume_gain_stays_within_bounds():
    samples = tone(0.1, amplitude=0.01)
    gains = [float(np.max(np.abs(volume_perturb(samples, rng(s), -10, 6))) / np.max(np.abs(samples)))
             for s in range(50)]
    low, high = 10 ** (-10 / 20), 10 ** (6 / 20)
    assert all(low - 1e-4 <= g <= high + 1e-4 for g in gains)
    assert min(gains) < 0.5 and max(gains) > 1.5  # the range is used, not a constant
    exact = volume_perturb(samples, rng(), 6, 6)
    np.testing.assert_allclose(exact, samples * 10 ** (6 / 20), rtol=1e-5)
    loud = volume_perturb(tone(0.1, amplitude=0.9), rng(), 6, 6)
    assert np.max(np.abs(loud)) == 1.0  # clipped to the sample range


def test_shift_keeps_length_and_moves_the_signal():
    samples = white(0.5)
    shifts = set()
    for seed in range(10):
        out = time_shift(samples, rng(seed), max_shift_ms=50, sample_rate=SR)
        assert out.shape == samples.shape
        shift = next(s for s in range(-800, 801) if _is_shift(samples, out, s))
        assert abs(shift) <= 800  # 50 ms at 16 kHz
        shifts.add(shift)
    assert len(shifts) == 10


def _is_shift(samples: np.ndarray, out: np.ndarray, shift: int) -> bool:
    if shift >= 0:
        return np.array_equal(out[shift:], samples[:len(samples) - shift]) and not out[:shift].any()
    return np.array_equal(out[:shift], samples[-shift:]) and not out[shift:].any()


@pytest.mark.parametrize("snr_db", [5.0, 12.0, 25.0])
def test_noise_is_mixed_at_the_requested_snr(snr_db):
    speech, noise = tone(1.0, amplitude=0.2), white(0.3, amplitude=0.05)  # short noise clip: tiled
    out = add_noise(speech, rng(), [noise], snr_db, snr_db)
    added = out.astype(np.float64) - speech
    measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added ** 2))
    assert measured == pytest.approx(snr_db, abs=0.05)
    assert out.shape == speech.shape


def test_noise_snr_within_range_and_no_clips_is_identity():
    speech = tone(1.0, amplitude=0.2)
    for seed in range(10):
        out = add_noise(speech, rng(seed), [white(2.0, seed=seed)], 10, 30)
        snr = 10 * np.log10(np.mean(speech ** 2) / np.mean((out - speech) ** 2))
        assert 9.9 <= snr <= 30.1
    assert add_noise(speech, rng(), [], 10, 30) is speech


def test_resample_keeps_length_and_removes_the_upper_band():
    samples = white(1.0)
    out = resample_perturb(samples, rng(), rates=[8000], sample_rate=SR)
    assert out.shape == samples.shape
    spectrum_in, spectrum_out = np.abs(np.fft.rfft(samples)) ** 2, np.abs(np.fft.rfft(out)) ** 2
    upper = slice(int(4200 / SR * len(samples)), None)  # above the 4 kHz Nyquist of 8 kHz
    assert spectrum_out[upper].sum() < 1e-3 * spectrum_in[upper].sum()
    lower = slice(0, int(3500 / SR * len(samples)))
    assert spectrum_out[lower].sum() == pytest.approx(spectrum_in[lower].sum(), rel=0.05)


def test_band_limit_in_the_features_matches_the_audio_round_trip(spoken_corpus):
    # real speech (espeak-ng): the features of soxr's round trip and the band-limited features
    clips = [load_audio(u.audio_filepath, SR) for u in read_manifest(str(spoken_corpus / "manifest.train"))[:6]]
    mel = _mel_matrix(SR, 512, 80)  # [80, 257]
    band_hz = np.fft.rfftfreq(512, 1 / SR)
    lowest_hz = np.array([band_hz[np.flatnonzero(row)[0]] for row in mel])  # each band's lowest and highest bin
    highest_hz = np.array([band_hz[np.flatnonzero(row)[-1]] for row in mel])
    for low in (8000, 11025):
        diffs, above = [], []
        for samples in clips:
            audio = compute_features(_round_trip(samples, low, SR), "fbank", SR, 80)  # [T, 80]
            limited = compute_features(samples, "fbank", SR, 80, band_limit_hz=low / 2)
            diffs.append(np.abs(audio - limited).mean(axis=0))  # [80]
            above.append(limited[:, lowest_hz >= 0.98 * low / 2])
        diff = np.mean(diffs, axis=0)
        assert diff[highest_hz < 0.85 * low / 2].max() < 1e-3  # below the band edge: untouched by either
        assert diff.mean() < 0.06 and diff.max() < 1.5, (low, diff.round(2))
        np.testing.assert_allclose(np.concatenate(above), np.log(LOG_FLOOR), rtol=1e-6)  # nothing above


def test_resample_left_to_the_features_draws_as_the_audio_path(tmp_path):
    entries = [{"type": "speed", "prob": 1.0}, {"type": "volume", "prob": 0.5},
               {"type": "resample", "params": {"rates": [8000, 11025]}, "prob": 1.0}]
    augmentation, samples = load_augmentation(write_conf(tmp_path, entries)), white(1.0)
    for seed in range(4):
        audio_rng, feature_rng = rng(seed), rng(seed)
        whole = augmentation.apply_audio(samples, audio_rng)
        partial, band_limit_hz = augmentation.apply_audio_for_features(samples, feature_rng)
        assert band_limit_hz in (4000.0, 5512.5)
        np.testing.assert_array_equal(_round_trip(partial, int(band_limit_hz * 2), SR), whole)
        assert audio_rng.random() == feature_rng.random()  # the same draws, so later steps see the same numbers
    # an audio step after the resample: applied to the audio, as apply_audio does
    louder_after = load_augmentation(write_conf(tmp_path, entries[2:] + [{"type": "volume", "prob": 1.0}]))
    partial, band_limit_hz = louder_after.apply_audio_for_features(samples, rng(5))
    assert band_limit_hz is None
    np.testing.assert_array_equal(partial, louder_after.apply_audio(samples, rng(5)))


# ----------------------------------------------------------------------------- features
def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return (edges[1::2] - edges[::2]).tolist()


# seed 0: a frequency mask over bands 9-12 (the other 0 wide), time masks over frames 85-88 and 105-112
PINNED_FREQ_MASK = [9, 10, 11, 12]
PINNED_TIME_MASK = [85, 86, 87, 88, 105, 106, 107, 108, 109, 110, 111, 112]


def test_spec_augment_masks_count_and_width():
    feats = log_feats()
    for seed in range(30):
        out = spec_augment(feats, rng(seed), freq_masks=2, max_freq_width=6, time_masks=3, max_time_ratio=0.05)
        assert out.shape == feats.shape
        fill = feats.mean()
        masked_cols = np.all(out == fill, axis=0)
        masked_rows = np.all(out == fill, axis=1)
        assert len(_runs(masked_cols)) <= 2 and all(w <= 12 for w in _runs(masked_cols))
        assert len(_runs(masked_rows)) <= 3 and sum(_runs(masked_rows)) <= 3 * 6  # 5 % of 120 frames
        untouched = ~masked_cols[None, :] & ~masked_rows[:, None]
        np.testing.assert_array_equal(out[untouched], feats[untouched])
    # pinned for seed 0: two frequency masks and three time masks
    out = spec_augment(feats, rng(0), freq_masks=2, max_freq_width=6, time_masks=3, max_time_ratio=0.05)
    assert np.flatnonzero(np.all(out == feats.mean(), axis=0)).tolist() == PINNED_FREQ_MASK
    assert np.flatnonzero(np.all(out == feats.mean(), axis=1)).tolist() == PINNED_TIME_MASK



def test_spec_augment_can_mask_the_last_band_and_frame():
    feats = log_feats(steps=40, dim=10)
    last_col = last_row = False
    for seed in range(300):
        out = spec_augment(feats, rng(seed), freq_masks=1, max_freq_width=3, time_masks=1, max_time_ratio=0.1)
        last_col |= bool(np.all(out[:, -1] == feats.mean()))
        last_row |= bool(np.all(out[-1] == feats.mean()))
    assert last_col and last_row


def test_spec_augment_time_warp_keeps_shape_and_ends():
    feats = log_feats()
    out = spec_augment(feats, rng(3), freq_masks=0, time_masks=0, max_time_warp=5)
    assert out.shape == feats.shape
    np.testing.assert_array_equal(out[0], feats[0])
    assert not np.array_equal(out, feats)


def test_spec_sub_keeps_shape_and_copies_earlier_frames():
    feats = log_feats()
    changed_any = False
    for seed in range(10):
        out = spec_sub(feats, rng(seed), max_time=20, num_subs=3)
        assert out.shape == feats.shape
        changed = np.flatnonzero(np.any(out != feats, axis=1))
        changed_any |= len(changed) > 0
        for row in changed:  # every replaced frame is a copy of an earlier frame of the utterance
            assert any(np.array_equal(out[row], feats[source]) for source in range(row))
    assert changed_any


def test_spec_sub_on_an_utterance_shorter_than_two_stretches():
    # 30 frames (0.3 s, kept by min_duration 0) against stretches of up to 20: drawing a stretch of
    # 16-20 frames at frame `width` had no room for it and raised a broadcast ValueError in a worker
    feats = log_feats(steps=30, dim=8)
    copied = 0
    for seed in range(200):
        out = spec_sub(feats, rng(seed), max_time=20, num_subs=3)
        assert out.shape == feats.shape
        changed = np.flatnonzero(np.any(out != feats, axis=1))
        copied += len(changed) > 0
        for row in changed:
            assert any(np.array_equal(out[row], feats[source]) for source in range(row))
    assert 0 < copied < 200
    np.testing.assert_array_equal(spec_sub(log_feats(steps=3, dim=8), rng(0), max_time=20), log_feats(steps=3, dim=8))


# ----------------------------------------------------------------------------- the JSON list
def write_conf(tmp_path: Path, entries: list) -> str:
    path = tmp_path / "augmentation.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return str(path)


def test_shipped_config_parses_into_both_domains(tmp_path):
    noise = tmp_path / "noise.wav"
    import soundfile

    soundfile.write(str(noise), white(0.5), SR)
    aug = load_augmentation(str(ROOT / "conf" / "augmentation.json"), [str(noise)], SR)
    assert [f.__name__ for f, _, _ in aug.audio] == ["speed_perturb", "volume_perturb", "time_shift", "add_noise",
                                                      "resample_perturb"]
    assert [f.__name__ for f, _, _ in aug.feature] == ["spec_augment", "spec_sub"]
    noise_params = aug.audio[3][1]
    assert len(noise_params["noise_clips"]) == 1 and noise_params["noise_clips"][0].shape == (8000,)


def test_prob_zero_is_identity_and_same_seed_same_output(tmp_path):
    entries = json.loads((ROOT / "conf" / "augmentation.json").read_text())
    zero = load_augmentation(write_conf(tmp_path, [dict(e, prob=0.0) for e in entries]))
    samples, feats = white(1.0), log_feats()
    np.testing.assert_array_equal(zero.apply_audio(samples, rng()), samples)
    np.testing.assert_array_equal(zero.apply_features(feats, rng()), feats)

    always = load_augmentation(write_conf(tmp_path, [dict(e, prob=1.0) for e in entries if e["type"] != "noise"]))
    first, again, other = (always.apply_audio(samples, rng(seed)) for seed in (9, 9, 10))
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or not np.array_equal(first, other)
    assert first.shape != samples.shape or not np.array_equal(first, samples)
    feats_first, feats_again, feats_other = (always.apply_features(feats, rng(seed)) for seed in (9, 9, 10))
    np.testing.assert_array_equal(feats_first, feats_again)
    assert not np.array_equal(feats_first, feats_other) and not np.array_equal(feats_first, feats)


def test_unknown_type_is_a_clear_error(tmp_path):
    path = write_conf(tmp_path, [{"type": "speed", "params": {}, "prob": 1.0}, {"type": "reverb", "prob": 0.5}])
    with pytest.raises(ValueError) as err:
        load_augmentation(path)
    message = str(err.value)
    assert path in message and "entry 1" in message and "'reverb'" in message and "specaugment" in message


def test_misspelt_param_is_a_clear_error_at_load_time(tmp_path):
    path = write_conf(tmp_path, [{"type": "speed", "params": {"min_ratio": 0.9}, "prob": 1.0}])
    with pytest.raises(ValueError, match=r"entry 0 \('speed'\) has bad params .*min_rate"):
        load_augmentation(path)


@pytest.mark.parametrize("entry,message", [
    ({"type": "specaugment", "params": {"max_freq_width": -30}}, r"parameter max_freq_width must be at least 0"),
    ({"type": "specaugment", "params": {"max_time_ratio": -0.1}}, r"max_time_ratio must be at least 0"),
    ({"type": "speed", "params": {"min_rate": 0}}, r"min_rate must be above 0"),
    ({"type": "speed", "params": {"min_rate": 1.2, "max_rate": 1.1}}, r"min_rate 1.2 is above max_rate 1.1"),
    ({"type": "resample", "params": {"rates": [0]}}, r"rates must be above 0"),
    ({"type": "resample", "params": {"rates": [8000, 16000]}},  # soxr: a no-op; the band limit: a cut at 8 kHz
     r"rates \[8000, 16000\] must all be below the sample rate 16000"),
    ({"type": "speed", "prob": 2}, r"prob must be a number in \[0, 1\], got 2"),
    ({"type": "speed", "probability": 0.5}, r"expected an object with the keys"),
    ({"type": "specaugment", "params": {"freq_masks": "two"}}, r"freq_masks must be a finite number"),
    ({"type": "specaugment", "params": {"max_time_ratio": float("nan")}}, r"max_time_ratio must be a finite number"),
    ({"type": "specsub", "params": {"num_subs": 2.5}}, r"parameter num_subs is a count, a whole number, got 2.5"),
    ({"type": "specaugment", "params": {"freq_masks": [1, 2]}}, r"freq_masks is a count, a whole number, got \[1, 2\]"),
    ("speed", r"expected an object with the keys"),
])
def test_out_of_range_entries_are_refused_naming_the_entry(tmp_path, entry, message):
    """A negative mask width wrote outside the features in C++ (heap corruption); a zero rate divided by
    zero in a loader worker: refused when the file loads, naming it and the entry."""
    path = write_conf(tmp_path, [{"type": "volume", "params": {"min_gain_db": -10}}, entry])
    with pytest.raises(ValueError, match=r"entry 1.*" + message):
        load_augmentation(path)


def test_a_whole_count_written_as_a_float_is_taken_as_an_int(tmp_path):
    """JSON's 2.0 for freq_masks loaded, then failed in the loader worker (rng.random(8.0))."""
    augmentation = load_augmentation(write_conf(tmp_path, [{"type": "specaugment", "params": {"freq_masks": 2.0}},
                                                           {"type": "specsub", "params": {"num_subs": 3.0}}]))
    assert [params for _, params, _ in augmentation.feature] == [{"freq_masks": 2}, {"num_subs": 3}]
    assert all(type(v) is int for _, params, _ in augmentation.feature for v in params.values())


def test_missing_and_broken_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="augment_conf_path=None"):
        load_augmentation(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "speed",\n  oops}]')
    with pytest.raises(ValueError, match=r"bad.json:2: not valid JSON"):
        load_augmentation(str(bad))


@pytest.mark.parametrize("argv", [["--augment_conf_path=None"], ["--augment_conf_path", "None"],
                                  ["--data.augment_conf_path=null"]])
def test_augment_conf_path_none_disables_augmentation(argv):
    cfg = parse_args("test", default_config=str(ROOT / "conf" / "deepspeech2.yml"), argv=argv)
    assert cfg.data.augment_conf_path is None
    aug = load_augmentation(cfg.data.augment_conf_path)
    assert aug.audio == [] and aug.feature == []
    default = parse_args("test", default_config=str(ROOT / "conf" / "deepspeech2.yml"), argv=[])
    assert default.data.augment_conf_path == "conf/augmentation.json"


# ----------------------------------------------------------------------------- effect on training
def _dataset(corpus: Path, augmentation: Augmentation | None) -> SpeechDataset:
    utts = read_manifest(corpus / "manifest.train")
    return SpeechDataset(utts, Vocabulary.load(corpus / "vocabulary.txt"), "fbank", SR, 40, augmentation, seed=7)


def test_augmentation_changes_training_features_deterministically(spoken_corpus):
    plain = _dataset(spoken_corpus, None)
    augmented = _dataset(spoken_corpus, load_augmentation(str(ROOT / "conf" / "augmentation.json")))
    n = len(plain)
    for key in (0, 3, n + 3):  # utterance 0 and 3 in epoch 0, utterance 3 in epoch 1
        feats_plain, labels_plain, index = plain[key]
        feats_aug, labels_aug, index_aug = augmented[key]
        assert index == index_aug == key % n
        np.testing.assert_array_equal(labels_plain, labels_aug)
        assert feats_aug.shape[1] == feats_plain.shape[1] == 40
        assert feats_aug.shape != feats_plain.shape or not np.array_equal(feats_aug, feats_plain)
        np.testing.assert_array_equal(augmented[key][0], feats_aug)  # same key: same augmentation
    np.testing.assert_array_equal(plain[3][0], plain[n + 3][0])  # no augmentation: epochs identical
    assert augmented[3][0].shape != augmented[n + 3][0].shape or not np.array_equal(augmented[3][0],
                                                                                     augmented[n + 3][0])


def test_augmentation_on_changes_the_trained_weights(spoken_corpus, tmp_path):
    from utils.training import train

    results = {}
    for name, conf in (("off", None), ("off_again", None), ("on", str(ROOT / "conf" / "augmentation.json"))):
        cfg = tiny_config(spoken_corpus, tmp_path / name, data__augment_conf_path=conf, train__max_steps=2,
                          train__batch_size=2)
        train(cfg)
        results[name] = read_params(model_folder(cfg))
    assert max_abs_diff(results["off"], results["off_again"]) == 0.0
    assert max_abs_diff(results["off"], results["on"]) > 1e-4


def _every_step(tmp_path: Path, noise: Path, warp: int = 0) -> Augmentation:
    """Every step always (a resample last: left to the features) but the warp, which `warp` turns on."""
    entries = json.loads((ROOT / "conf" / "augmentation.json").read_text())
    for entry in entries:
        entry["prob"] = 1.0
        if entry["type"] == "specaugment":
            entry["params"]["max_time_warp"] = warp
    return load_augmentation(write_conf(tmp_path, entries), [str(noise)], SR)


@pytest.mark.parametrize("warp", [0, 3])
def test_a_batch_made_in_place_equals_the_samples_padded(spoken_corpus, tmp_path, warp):
    from utils.data import collate, make_batch

    augmentation = _every_step(tmp_path, write_noise(tmp_path / "noise.wav", 0.7), warp)
    dataset = _dataset(spoken_corpus, augmentation)
    keys = [1, 0, len(dataset) + 2, 3]
    buffer = bytearray(8 << 20)
    buffer[:] = b"\x01" * len(buffer)  # an earlier batch's leftovers: the padding must be written
    ours, padded = make_batch(dataset, keys, buffer), collate([dataset[key] for key in keys])
    for made, reference in zip(ours, padded):
        np.testing.assert_array_equal(made, reference)
    drawn = dataset.draw(keys[0])
    assert drawn.native == (warp == 0) and drawn.band_limit_hz is not None  # warp: numpy's way


def test_a_sample_in_one_call_equals_the_numpy_steps(spoken_corpus, tmp_path, monkeypatch):
    from utils import feature_kernels

    dataset = _dataset(spoken_corpus, _every_step(tmp_path, write_noise(tmp_path / "noise.wav", 0.7)))
    keys = range(0, 2 * len(dataset), 3)
    ours = [dataset[key] for key in keys]
    monkeypatch.setattr(feature_kernels, "sample_features", lambda *args: False)  # the steps one by one
    for key, (feats, labels, index) in zip(keys, ours):
        reference = dataset[key]
        np.testing.assert_allclose(feats, reference[0], rtol=0, atol=5e-6)
        np.testing.assert_array_equal(labels, reference[1])

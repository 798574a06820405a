"""Long-audio splitting (utils/vad.py) on a synthesized recording with pauses.

The recording: three espeak-ng sentences joined by 1 s of digital silence, plus light
white noise (seeded) over the whole file, so the pauses are quiet but not empty.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from train_fixtures import SAMPLE_RATE, have_espeak, speak
from utils import vad
from utils.audio import load_audio

SENTENCES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
             "a red bus goes home now"]
PAUSE_S = 1.0
NOISE_STD = 0.003  # about -50 dBFS: audible hiss, far below the speech
SPEECH_THRESHOLD = 0.01  # |sample| above this counts as speech when finding the true bounds
FRAME = SAMPLE_RATE * vad.VAD_FRAME_MS // 1000  # 480 samples


def pause_recording(folder: Path) -> tuple[Path, np.ndarray, list[tuple[int, int]]]:
    """folder/pauses.wav; returns (path, samples [N], true speech bounds [(first, last sample)] per sentence)."""
    path = folder / "pauses.wav"
    parts, bounds, offset = [], [], 0
    for number, text in enumerate(SENTENCES):
        samples = load_audio(speak(folder / f"sentence_{number}.wav", text), SAMPLE_RATE)
        loud = np.flatnonzero(np.abs(samples) > SPEECH_THRESHOLD)
        bounds.append((offset + int(loud[0]), offset + int(loud[-1])))
        parts.append(samples)
        offset += len(samples)
        if number < len(SENTENCES) - 1:
            parts.append(np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32))
            offset += int(PAUSE_S * SAMPLE_RATE)
    recording = np.concatenate(parts)
    recording += NOISE_STD * np.random.default_rng(0).standard_normal(len(recording)).astype(np.float32)
    soundfile.write(str(path), recording, SAMPLE_RATE, subtype="PCM_16")
    return path, load_audio(path, SAMPLE_RATE), bounds


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return pause_recording(tmp_path_factory.mktemp("vad"))


def test_three_sentences_give_three_segments_cut_inside_the_pauses(recording):
    _, samples, speech = recording
    segments = vad.speech_segments(samples, SAMPLE_RATE)
    assert len(segments) == 3
    for (start, end), (first, last) in zip(segments, speech):
        assert start <= first and end >= last, "a segment must hold all of its sentence"
        assert end - start <= (last - first) + int(1.0 * SAMPLE_RATE), "and not much more than it"
    for (_, end), (next_start, _), (_, last), (next_first, _) in zip(segments, segments[1:], speech, speech[1:]):
        assert last < end <= next_start < next_first, "each cut falls inside the pause between two sentences"
    assert segments[0][0] >= 0 and segments[-1][1] <= len(samples)
    assert all(start % FRAME == 0 for start, _ in segments), "cuts are on VAD frame boundaries"


def test_rates_webrtcvad_refuses_are_judged_on_a_16k_copy(recording):
    """A 22.05 kHz model's long audio: the same three segments, in 22.05 kHz samples."""
    from utils.audio import resample

    _, samples, _ = recording
    at_16k = vad.speech_segments(samples, SAMPLE_RATE)
    at_22k = vad.speech_segments(resample(samples, SAMPLE_RATE, 22050), 22050)
    assert len(at_22k) == len(at_16k) == 3
    for (start, end), (start_22k, end_22k) in zip(at_16k, at_22k):
        assert abs(start_22k - start * 22050 / SAMPLE_RATE) <= 1 and abs(end_22k - end * 22050 / SAMPLE_RATE) <= 1


def test_segment_longer_than_max_is_cut_into_equal_pieces(recording, monkeypatch):
    _, samples, _ = recording
    whole = vad.speech_segments(samples, SAMPLE_RATE)
    monkeypatch.setattr(vad, "MAX_SEGMENT_S", 1.0)
    pieces = vad.speech_segments(samples, SAMPLE_RATE)
    expected = sum(-(-(end - start) // SAMPLE_RATE) for start, end in whole)
    assert len(pieces) == expected > len(whole)
    assert all(0 < end - start <= SAMPLE_RATE for start, end in pieces)
    covered = sorted(pieces)
    for start, end in whole:  # the pieces of each segment tile it exactly
        inside = [p for p in covered if start <= p[0] and p[1] <= end]
        assert inside[0][0] == start and inside[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(inside, inside[1:]))


def test_cap_length_pinned_values():
    assert vad.cap_length((0, 50 * SAMPLE_RATE), 20 * SAMPLE_RATE) == [(0, 266666), (266666, 533333),
                                                                       (533333, 800000)]
    assert vad.cap_length((100, 200), 1000) == [(100, 200)]
    assert vad.cap_length((0, 2000), 1000) == [(0, 1000), (1000, 2000)]


def test_pure_silence_and_tiny_input_give_no_segments():
    assert vad.speech_segments(np.zeros(5 * SAMPLE_RATE, np.float32), SAMPLE_RATE) == []
    assert vad.speech_segments(np.zeros(FRAME - 1, np.float32), SAMPLE_RATE) == []
    assert vad.voiced_frames(np.zeros(10 * FRAME + 7, np.float32), SAMPLE_RATE).shape == (10,)

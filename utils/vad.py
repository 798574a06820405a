"""Split long recordings at silences with WebRTC's voice activity detector (webrtcvad-wheels)."""
from __future__ import annotations

import numpy as np

VAD_FRAME_MS = 30  # webrtcvad accepts 10, 20 or 30 ms frames
VAD_AGGRESSIVENESS = 2  # 0 (keeps most) .. 3 (drops most)
MIN_SILENCE_MS = 300  # a pause this long ends a segment
PAD_MS = 150  # speech kept before and after each segment
MAX_SEGMENT_S = 20.0  # longer speech is cut into pieces of at most this length


def voiced_frames(samples: np.ndarray, sample_rate: int, aggressiveness: int = VAD_AGGRESSIVENESS) -> np.ndarray:
    """samples [N] float32 -> is_speech [N // frame] bool, one flag per 30 ms frame."""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    frame = sample_rate * VAD_FRAME_MS // 1000
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    count = len(pcm) // frame
    return np.array([vad.is_speech(pcm[i * frame:(i + 1) * frame].tobytes(), sample_rate)
                     for i in range(count)], dtype=bool)


VAD_RATES = (8000, 16000, 32000, 48000)  # the rates webrtcvad accepts
VAD_FALLBACK_RATE = 16000  # audio at any other rate is judged on a copy resampled to this


def speech_segments(samples: np.ndarray, sample_rate: int = 16000) -> list[tuple[int, int]]:
    """[(start_sample, end_sample)] of speech, split at pauses >= MIN_SILENCE_MS, each <= MAX_SEGMENT_S."""
    if sample_rate in VAD_RATES:
        flags = voiced_frames(samples, sample_rate)
    else:  # 22.05, 24 or 44.1 kHz models: flags from a 16 kHz copy, one per 30 ms frame as well
        from utils.audio import resample

        flags = voiced_frames(resample(samples, sample_rate, VAD_FALLBACK_RATE), VAD_FALLBACK_RATE)
    frame = sample_rate * VAD_FRAME_MS / 1000  # samples a flag (fractional at 22.05 kHz)
    min_gap, pad = MIN_SILENCE_MS // VAD_FRAME_MS, PAD_MS // VAD_FRAME_MS
    segments, start, silence = [], None, 0
    for index, speech in enumerate(flags):
        if speech:
            start = index if start is None else start
            silence = 0
        elif start is not None:
            silence += 1
            if silence >= min_gap:
                segments.append((start, index - silence + 1))
                start, silence = None, 0
    if start is not None:
        segments.append((start, len(flags) - silence))
    spans = [(max(0, round((s - pad) * frame)), min(len(samples), round((e + pad) * frame))) for s, e in segments]
    return [piece for span in spans for piece in cap_length(span, int(MAX_SEGMENT_S * sample_rate))]


def cap_length(span: tuple[int, int], max_len: int) -> list[tuple[int, int]]:
    """(start, end) -> contiguous pieces of equal length, each at most max_len samples."""
    start, end = span
    pieces = max(1, -(-(end - start) // max_len))
    bounds = np.linspace(start, end, pieces + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

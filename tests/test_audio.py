"""load_audio: 16-bit PCM WAV parsed by read_pcm16_wav gives soundfile's values; the rest goes to soundfile."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile

from utils import feature_kernels
from utils.audio import AudioError, load_audio, read_pcm16_wav


def noise(frames: int, channels: int, seed: int = 0) -> np.ndarray:
    """[frames, channels] float32 in [-0.5, 0.5]."""
    return (np.random.default_rng(seed).random((frames, channels), dtype=np.float32) - 0.5)


def soundfile_mono(path) -> np.ndarray:
    samples, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    return samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pcm16_wav_reads_as_soundfile_reads_it(tmp_path, channels):
    path = tmp_path / f"pcm16_{channels}.wav"
    soundfile.write(str(path), noise(1601, channels), 16000, subtype="PCM_16")
    samples, rate = read_pcm16_wav(path)
    assert rate == 16000 and samples.shape == (1601, channels) and samples.dtype == np.float32
    assert np.array_equal(load_audio(path), soundfile_mono(path))  # through the C++ reader where it builds


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm16_wav_reads_the_same_without_the_cpp_reader(tmp_path, monkeypatch, channels):
    path = tmp_path / f"pcm16_{channels}.wav"
    soundfile.write(str(path), noise(801, channels), 8000, subtype="PCM_16")
    with_reader = load_audio(path, 16000)
    monkeypatch.setattr(feature_kernels, "load", lambda: None)  # no library: the Python parser
    assert np.array_equal(load_audio(path, 16000), with_reader)


def test_pcm16_wav_with_other_chunks_and_odd_sizes_reads_as_soundfile_reads_it(tmp_path):
    plain = tmp_path / "plain.wav"
    soundfile.write(str(plain), noise(801, 1), 16000, subtype="PCM_16")
    data = plain.read_bytes()
    fmt_end = 12 + 8 + int.from_bytes(data[16:20], "little")
    odd = b"LIST" + (5).to_bytes(4, "little") + b"abcde" + b"\0"  # an odd size, padded to even
    body = data[12:fmt_end] + odd + data[fmt_end:]
    path = tmp_path / "chunks.wav"
    path.write_bytes(b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WAVE" + body)
    samples, rate = read_pcm16_wav(path)
    assert rate == 16000 and np.array_equal(samples[:, 0], soundfile_mono(path))
    assert np.array_equal(samples[:, 0], soundfile_mono(plain))


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_24", "PCM_U8"])
def test_other_wav_encodings_go_to_soundfile(tmp_path, subtype):
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(str(path), noise(800, 1), 16000, subtype=subtype)
    assert read_pcm16_wav(path) is None
    assert np.array_equal(load_audio(path), soundfile_mono(path))


def test_flac_and_resampling_still_work(tmp_path):
    path = tmp_path / "clip.flac"
    soundfile.write(str(path), noise(8000, 1), 8000, subtype="PCM_16")
    assert read_pcm16_wav(path) is None
    assert len(load_audio(path, 16000)) == 16000


def test_truncated_pcm16_wav_keeps_its_whole_frames(tmp_path):
    path = tmp_path / "cut.wav"
    soundfile.write(str(path), noise(1000, 2), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # the last frame loses 3 of its 4 bytes
    samples, _ = read_pcm16_wav(path)
    assert samples.shape == (999, 2)


@pytest.mark.parametrize("content,message", [(None, "file not found"), (b"", "not readable audio"),
                                             (b"RIFF\x04\x00\x00\x00WAVE", "not readable audio")])
def test_bad_files_raise_audio_errors_that_name_them(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=f"bad.wav: {message}"):
        load_audio(path)


def test_pcm16_wav_cut_inside_its_format_chunk_is_an_audio_error(tmp_path, monkeypatch):
    path = tmp_path / "cut.wav"
    soundfile.write(str(path), noise(100, 1), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:30])  # the fmt chunk's 16 bytes start at 20
    assert read_pcm16_wav(path) is None
    with pytest.raises(AudioError, match="cut.wav: not readable audio"):
        load_audio(path)
    monkeypatch.setattr(feature_kernels, "load", lambda: None)  # no library: the Python parser
    with pytest.raises(AudioError, match="cut.wav: not readable audio"):
        load_audio(path)


def test_pcm16_wav_whose_header_says_0_hz_is_an_audio_error_naming_it(tmp_path, monkeypatch):
    """Both PCM readers took it, and soxr then raised a bare 'Sample rate should be over 0'."""
    import struct

    path = tmp_path / "rate0.wav"
    soundfile.write(str(path), noise(1600, 1), 16000, subtype="PCM_16")
    header = bytearray(path.read_bytes())
    header[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    path.write_bytes(bytes(header))
    assert read_pcm16_wav(path) is None
    with pytest.raises(AudioError, match="rate0.wav: not readable audio"):
        load_audio(path)
    monkeypatch.setattr(feature_kernels, "load", lambda: None)  # no library: the Python parser
    with pytest.raises(AudioError, match="rate0.wav: not readable audio"):
        load_audio(path)


def test_pcm16_wav_without_frames_is_zero_duration(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(str(path), np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="zero duration"):
        load_audio(path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_float_wav_with_non_finite_samples_is_an_audio_error_naming_it(tmp_path, bad_value):
    path = tmp_path / "float.wav"
    samples = noise(1600, 2)
    samples[800, 1] = bad_value  # 0.05 s into the file, in the second channel
    soundfile.write(str(path), samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"float.wav: 1 non-finite samples \(NaN or Inf\), the first at 0.050 s"):
        load_audio(path)

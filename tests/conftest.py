"""Shared fixtures: tiny audio written with numpy + soundfile, transcript lists, a prep config."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.config import Config  # noqa: E402

SAMPLE_RATE = 16000
TONE_AMPLITUDE = 0.5


def tone(seconds: float, sample_rate: int = SAMPLE_RATE, freq: float = 440.0,
         amplitude: float = TONE_AMPLITUDE) -> np.ndarray:
    """samples [N] float32 of a sine."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_tone(path: Path, seconds: float = 1.0, sample_rate: int = SAMPLE_RATE, channels: int = 1,
               freq: float = 440.0, subtype: str = "PCM_16") -> Path:
    """A sine (one per channel, at freq, 2*freq, ...) as a wav; parent folders are made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([tone(seconds, sample_rate, freq * (c + 1)) for c in range(channels)], axis=1)  # [N, C]
    soundfile.write(str(path), data, sample_rate, subtype=subtype)
    return path


def write_noise(path: Path, seconds: float = 1.0, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)
    soundfile.write(str(path), samples, sample_rate, subtype="PCM_16")
    return path


def write_text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_bytes_lines(path: Path, lines: list[bytes]) -> Path:
    """Raw byte lines (for non-UTF-8 input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def read_skipped(path: Path) -> list[list[str]]:
    """Rows of skipped.txt without its header: [source, line, reason, raw]."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "source\tline\treason\traw"
    return [line.split("\t", 3) for line in lines[1:]]


def prep_config(tmp_path: Path, annotation_path: str | Path, **overrides) -> Config:
    """A config whose outputs all land under tmp_path/out; overrides are dotted keys."""
    cfg = Config()
    cfg.prep.annotation_path = str(annotation_path)
    cfg.prep.manifest_prefix = str(tmp_path / "out" / "manifest")
    cfg.prep.noise_dir = str(tmp_path / "no_noise")
    cfg.prep.resampled_dir = str(tmp_path / "resampled")
    cfg.prep.num_samples = -1
    cfg.data.dataset_vocab = str(tmp_path / "out" / "vocabulary.txt")
    cfg.data.mean_std_path = str(tmp_path / "out" / "mean_std.npz")
    cfg.data.num_workers = 1
    cfg.data.min_duration = 0.1
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        setattr(getattr(cfg, section), key, value)
    return cfg


# Five clean utterances: (file, seconds, transcript).
CLEAN_CORPUS = [
    ("a.wav", 0.6, "ab ba"),
    ("b.wav", 0.4, "abc"),
    ("c.wav", 0.8, "ca b"),
    ("d.wav", 0.3, "bab"),
    ("e.wav", 0.5, "c"),
]


@pytest.fixture
def clean_corpus(tmp_path: Path) -> Path:
    """tmp_path/audio/*.wav (tones) and tmp_path/annotation/train.txt listing them with absolute paths."""
    lines = []
    for index, (name, seconds, text) in enumerate(CLEAN_CORPUS):
        path = write_tone(tmp_path / "audio" / name, seconds, freq=300.0 + 100 * index)
        lines.append(f"{path}\t{text}")
    write_text(tmp_path / "annotation" / "train.txt", lines)
    return tmp_path

"""Helpers for the model, training, augmentation and distributed tests.

- `speak`: one sentence synthesized with espeak-ng, as a 16 kHz mono wav.
- `make_corpus`: a tiny spoken corpus (wavs, manifests, vocabulary, mean/std) built
  directly with the library, without the demo generator or create_data.py.
- `tiny_config`: conf/tiny.yml with every path pointed into a test's folders.
- `read_params`: a model folder's weights as numpy arrays.

Run as a script it is the worker that `paddle.distributed.launch` starts in
tests/test_distributed.py: it runs train.py's main() unchanged, with two test-only
additions that production code does not carry (see `_distributed_worker`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.audio import load_audio, save_wav  # noqa: E402
from utils.config import Config, load_yaml  # noqa: E402
from utils.features import FeatureStats, compute_features, feature_dim, save_mean_std  # noqa: E402
from utils.manifest import Utterance, write_manifest  # noqa: E402
from utils.text import Vocabulary  # noqa: E402

SAMPLE_RATE = 16000
TINY_YAML = ROOT / "conf" / "tiny.yml"

# Eight short training sentences and two test sentences (their characters all occur in training).
TRAIN_TEXTS = ["one two three", "four five six", "seven eight nine", "the cat sat",
               "a red bus", "go home now", "big dogs run", "hello world"]
TEST_TEXTS = ["red cat", "go now"]
VOICES = ["en-us", "en", "en-us+m3", "en+f2"]


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(path: Path, text: str, voice: str = "en-us", speed: int = 170) -> Path:
    """Synthesize `text` with espeak-ng (22.05 kHz) and write it as 16 kHz 16-bit mono."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
                       check=True, capture_output=True)
        save_wav(path, load_audio(raw, SAMPLE_RATE), SAMPLE_RATE)
    return path


def write_normalizer(path: Path, wavs: list[str], feature_method: str = "fbank", n_mels: int = 40) -> None:
    stats = FeatureStats(feature_dim(feature_method, SAMPLE_RATE, n_mels))
    for wav in wavs:
        stats.add(compute_features(load_audio(wav, SAMPLE_RATE), feature_method, SAMPLE_RATE, n_mels))
    mean, std = stats.mean_std()
    save_mean_std(path, mean, std, feature_method, SAMPLE_RATE, n_mels)


def make_corpus(root: Path, train_texts: list[str] = tuple(TRAIN_TEXTS),
                test_texts: list[str] = tuple(TEST_TEXTS), repeat: int = 1) -> Path:
    """root/{audio/*.wav, manifest.train, manifest.test, vocabulary.txt, mean_std.npz}.

    Each training sentence is spoken by a different voice (cycling VOICES); `repeat`
    lists every training utterance that many times in manifest.train.
    """
    root.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for split, texts, out in (("train", train_texts, train), ("test", test_texts, test)):
        for number, text in enumerate(texts):
            wav = speak(root / "audio" / f"{split}_{number}.wav", text, VOICES[number % len(VOICES)])
            out.append(Utterance(str(wav), len(load_audio(wav)) / SAMPLE_RATE, text))
    write_manifest(root / "manifest.train", [u for u in train for _ in range(repeat)])
    write_manifest(root / "manifest.test", test)
    Vocabulary.build(u.text for u in train).save(root / "vocabulary.txt")
    write_normalizer(root / "mean_std.npz", [u.audio_filepath for u in train])
    return root


_CORPORA: dict[str, Path] = {}


def cached_corpus(key: str, build) -> Path:
    """One corpus per key and test session, shared by every test module that asks for it."""
    if key not in _CORPORA:
        _CORPORA[key] = build()
    return _CORPORA[key]


@pytest.fixture(scope="session")
def spoken_corpus(tmp_path_factory) -> Path:
    """TRAIN_TEXTS / TEST_TEXTS spoken by espeak-ng (read-only: tests write into their own tmp_path)."""
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return cached_corpus("spoken", lambda: make_corpus(tmp_path_factory.mktemp("spoken_corpus")))


def tiny_config(corpus: Path, out: Path, **overrides) -> Config:
    """conf/tiny.yml reading `corpus` and writing models and logs under `out`.

    overrides: dotted keys with '.' written as '__' (train__batch_size=2).
    """
    cfg = Config()
    load_yaml(cfg, str(TINY_YAML))
    cfg.data.train_manifest = str(corpus / "manifest.train")
    cfg.data.test_manifest = str(corpus / "manifest.test")
    cfg.data.dataset_vocab = str(corpus / "vocabulary.txt")
    cfg.data.mean_std_path = str(corpus / "mean_std.npz")
    cfg.data.noise_manifest = str(corpus / "manifest.noise")
    cfg.train.save_model_path = str(out / "models")
    cfg.train.log_dir = str(out / "log")
    for key, value in overrides.items():
        section, name = key.split("__")
        if not hasattr(getattr(cfg, section), name):
            raise KeyError(f"no config key {section}.{name}")
        setattr(getattr(cfg, section), name, value)
    return cfg


def model_folder(cfg: Config, name: str = "last_model") -> Path:
    return Path(cfg.train.save_model_path) / cfg.train.use_model / name


def read_params(folder: Path) -> dict[str, np.ndarray]:
    import paddle

    return {k: np.asarray(v.numpy()) for k, v in paddle.load(str(Path(folder) / "model.pdparams")).items()}


def max_abs_diff(a: dict, b: dict, keys=None) -> float:
    keys = sorted(a) if keys is None else keys
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


def relative_diff(a: dict, b: dict, keys) -> float:
    """||a - b|| / ||a|| over the concatenation of `keys`."""
    diff = np.sqrt(sum(float(np.sum((a[k] - b[k]) ** 2)) for k in keys))
    norm = np.sqrt(sum(float(np.sum(a[k] ** 2)) for k in keys))
    return diff / norm


# ----------------------------------------------------------------------------- distributed worker
def _distributed_worker(argv: list[str]) -> int:
    """`train_fixtures.py DUMP_DIR [train.py arguments]`, started by paddle.distributed.launch.

    Runs train.py's main() with two test-only hooks:
    - after training, every rank saves its own model.state_dict() to DUMP_DIR/rank<N>.pdparams
      (rank 0 alone writes checkpoints, so this is how the test sees rank 1's weights);
    - env NAN_RANK=r and NAN_CALLS=2,3: on rank r only, the loss of those training batches
      (1-based, counted per process) is replaced by NaN.
    """
    import paddle

    import train as train_script
    import utils.training as training

    dump_dir = Path(argv[0])
    sys.argv = [str(ROOT / "train.py")] + argv[1:]
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    original_loop = training._loop

    def loop_and_dump(run):
        try:
            return original_loop(run)
        finally:
            dump_dir.mkdir(parents=True, exist_ok=True)
            paddle.save(run.model.state_dict(), str(dump_dir / f"rank{rank}.pdparams"))

    training._loop = loop_and_dump
    if os.environ.get("NAN_RANK", "") == str(rank):
        nan_calls = {int(c) for c in os.environ["NAN_CALLS"].split(",")}
        original_loss, calls = training.ctc_loss_per_utterance, [0]

        def loss_with_nan(*args, **kwargs):
            calls[0] += 1
            loss = original_loss(*args, **kwargs)
            return loss * float("nan") if calls[0] in nan_calls else loss

        training.ctc_loss_per_utterance = loss_with_nan
    return train_script.main()


if __name__ == "__main__":
    sys.exit(_distributed_worker(sys.argv[1:]))

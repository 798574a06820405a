"""Self-describing model folders, written atomically, and a lock per model folder.

models/<use_model>/{epoch_N,last_model,best_model}/ each hold:
  model.pdparams   weights and the normalizer buffers
  optimizer.pdopt  optimizer state (absent in exported-only folders)
  state.json       epoch, batch in epoch, step, best metric, AMP scaler state, format version
  config.yml       the effective config the model was trained with
  vocabulary.txt   the vocabulary
  mean_std.npz     the feature normalizer
A folder is first written as .tmp-<name>, then swapped in by rename; a crash between
the two renames leaves .old-<name>, which `recover` puts back.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import paddle

from utils.config import Config, from_dict, save_config
from utils.text import Vocabulary

FORMAT_VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.pdparams", "optimizer.pdopt", "state.json"
CONFIG_FILE, VOCAB_FILE, NORMALIZER_FILE = "config.yml", "vocabulary.txt", "mean_std.npz"


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""
    epoch: int = 0  # epoch in progress
    batch_in_epoch: int = 0  # batches of that epoch already trained
    step: int = 0  # optimizer steps so far
    best_metric: Optional[float] = None  # lowest test CER/WER so far
    best_epoch: int = -1
    metrics_type: str = "cer"
    nan_skipped: int = 0
    scaler: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # per epoch: {"epoch", "test_loss", "test_error"}
    format_version: int = FORMAT_VERSION


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message says what is intact."""


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: str | Path, model: paddle.nn.Layer, optimizer, state: TrainState, cfg: Config,
                    vocabulary: Vocabulary, mean_std_path: str | Path) -> Path:
    """Write a complete model folder atomically; on failure the previous folder stays intact."""
    folder = Path(folder)
    tmp, old = folder.with_name(".tmp-" + folder.name), folder.with_name(".old-" + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        paddle.save(model.state_dict(), str(tmp / MODEL_FILE))
        if optimizer is not None:
            paddle.save(optimizer.state_dict(), str(tmp / OPTIMIZER_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        save_config(cfg, tmp / CONFIG_FILE)
        vocabulary.save(tmp / VOCAB_FILE)
        shutil.copyfile(mean_std_path, tmp / NORMALIZER_FILE)
        _fsync_tree(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        intact = f"the previous {folder} is intact" if folder.exists() else f"no {folder} was written"
        raise CheckpointError(f"could not save checkpoint {folder} ({err}); {intact}. "
                              f"Free disk space or fix permissions of {folder.parent}") from err
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def copy_checkpoint(source: Path, folder: Path) -> None:
    """Atomically make `folder` a copy of the complete folder `source` (best_model, epoch_N)."""
    tmp, old = folder.with_name(".tmp-" + folder.name), folder.with_name(".old-" + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp)
        _fsync_tree(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {folder} ({err}); the previous one is intact. "
                              f"Free disk space or fix permissions of {folder.parent}") from err
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover(model_root: str | Path) -> list[str]:
    """Undo what a crash mid-save left: put .old-X back where X is missing, drop .tmp-X."""
    model_root, notes = Path(model_root), []
    if not model_root.is_dir():
        return notes
    for path in sorted(model_root.iterdir()):
        if path.name.startswith(".tmp-"):
            shutil.rmtree(path, ignore_errors=True)
            notes.append(f"removed unfinished {path.name}")
        elif path.name.startswith(".old-"):
            target = path.with_name(path.name[len(".old-"):])
            if target.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, target)
                notes.append(f"restored {target.name} from an interrupted save")
    return notes


def is_complete(folder: str | Path) -> bool:
    folder = Path(folder)
    return all((folder / name).is_file() for name in (MODEL_FILE, STATE_FILE, CONFIG_FILE, VOCAB_FILE,
                                                      NORMALIZER_FILE))


def load_state(folder: str | Path) -> TrainState:
    data = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
    return TrainState(**data)


def load_config(folder: str | Path) -> Config:
    import yaml

    path = Path(folder) / CONFIG_FILE
    return from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path))


def check_model_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist; train first (python train.py) "
                              f"or pass the folder of a trained model")
    if not is_complete(folder):
        raise CheckpointError(f"model folder {folder} is incomplete (a model folder holds {MODEL_FILE}, "
                              f"{STATE_FILE}, {CONFIG_FILE}, {VOCAB_FILE}, {NORMALIZER_FILE})")
    return folder


class FolderLock:
    """An exclusive flock on <model_root>/.lock; the kernel releases it when the process dies."""

    def __init__(self, model_root: str | Path):
        self.path = Path(model_root) / ".lock"
        self.handle = None

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            raise CheckpointError(f"{self.path.parent} is in use by {owner}; two trainings must not write "
                                  f"the same model folder. Wait for it, or pass another --use_model") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"train.py pid {os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.handle:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()

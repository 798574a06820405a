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
    history: list = field(default_factory=list)  # per epoch: {"epoch", "step", "test_loss", "test_<metric>"}
    lineage: list = field(default_factory=list)  # [run id, step it started at] of each run that trained it
    world_size: int = 0  # training processes batch_in_epoch counts the batches of (0: not recorded)
    format_version: int = FORMAT_VERSION


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message says what is intact."""


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(tmp: Path, folder: Path) -> None:
    """Replace folder by the complete tmp: folder -> .old-folder, tmp -> folder, drop .old-folder."""
    old = folder.with_name(".old-" + folder.name)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    os.rename(tmp, folder)
    _fsync_dir(folder.parent)  # the renames survive a power cut too, not only a killed process
    shutil.rmtree(old, ignore_errors=True)


def _save_failed(folder: Path, tmp: Path, err: OSError) -> CheckpointError:
    shutil.rmtree(tmp, ignore_errors=True)
    intact = (f"the previous {folder.name} is intact" if folder.exists()
              else f"no {folder.name} was written")
    return CheckpointError(f"could not save checkpoint {folder} ({err}); {intact}, and the other checkpoints "
                           f"in {folder.parent} are untouched. Free disk space or fix permissions of "
                           f"{folder.parent}, then run again to resume")


OPTIMIZER_KEY_SEPARATOR = "|"


def portable_optimizer_state(model: paddle.nn.Layer, optimizer) -> dict:
    """optimizer.state_dict() keyed by the model's structured parameter names.

    Paddle keys optimizer state by generated parameter names (conv2d_3.w_0_moment1_0) that
    count the layers the process built before; a checkpoint keyed that way fails to load
    ("Optimizer set error ... should in state dict") in a process that built another model
    first. Here a key becomes `convs.0.0.weight|_moment1_0`; other keys stay as they are.
    """
    by_name = {param.name: structured for structured, param in model.named_parameters()}
    names = sorted(by_name, key=len, reverse=True)  # longest first: w_1 is not taken for w_10
    portable = {}
    for key, value in optimizer.state_dict().items():
        owner = next((name for name in names if key.startswith(name + "_")), None)
        portable[f"{by_name[owner]}{OPTIMIZER_KEY_SEPARATOR}{key[len(owner):]}" if owner else key] = value
    return portable


def load_optimizer_state(model: paddle.nn.Layer, optimizer, path: str | Path) -> None:
    """Load a portable_optimizer_state file (or an older one keyed by generated names)."""
    to_name = {structured: param.name for structured, param in model.named_parameters()}
    state = {}
    for key, value in load_tensors(Path(path)).items():
        structured, separator, suffix = key.partition(OPTIMIZER_KEY_SEPARATOR)
        if separator and structured not in to_name:
            raise CheckpointError(f"{path} holds optimizer state for '{structured}', which this model does not "
                                  f"have; the model config differs from the checkpoint's")
        state[to_name[structured] + suffix if separator else key] = value
    optimizer.set_state_dict(state)


def save_checkpoint(folder: str | Path, model: paddle.nn.Layer, optimizer, state: TrainState, cfg: Config,
                    vocabulary: Vocabulary, mean_std_path: str | Path) -> Path:
    """Write a complete model folder atomically; on failure the previous folder stays intact."""
    folder = Path(folder)
    tmp = folder.with_name(".tmp-" + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        paddle.save(model.state_dict(), str(tmp / MODEL_FILE))
        if optimizer is not None:
            paddle.save(portable_optimizer_state(model, optimizer), str(tmp / OPTIMIZER_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        save_config(cfg, tmp / CONFIG_FILE)
        vocabulary.save(tmp / VOCAB_FILE)
        shutil.copyfile(mean_std_path, tmp / NORMALIZER_FILE)
        _fsync_tree(tmp)
    except OSError as err:
        raise _save_failed(folder, tmp, err) from err
    swap_in(tmp, folder)
    return folder


def write_state(folder: str | Path, state: TrainState) -> None:
    """Replace the state.json of a complete model folder, its tensors unchanged (an epoch's test result
    goes into the folders saved at its end): a new file renamed over the old one, atomic on its own."""
    path = Path(folder) / STATE_FILE
    tmp = path.with_name(".tmp-" + STATE_FILE)
    try:
        tmp.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path} ({err}); the {path.parent.name} folder holds the state "
                              f"saved before. Free disk space or fix permissions of {path.parent}, then run "
                              f"again to resume") from err


def copy_checkpoint(source: Path, folder: Path) -> None:
    """Atomically make `folder` a copy of the complete folder `source` (best_model, epoch_N)."""
    tmp = folder.with_name(".tmp-" + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp)
        _fsync_tree(tmp)
    except OSError as err:
        raise _save_failed(folder, tmp, err) from err
    swap_in(tmp, folder)


def remove_checkpoint(folder: Path) -> None:
    """Delete a model folder so that a crash midway cannot leave it torn: rename to .tmp-X first."""
    tmp = folder.with_name(".tmp-" + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    os.rename(folder, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


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


def _progress(state: TrainState) -> tuple[int, int, int, int]:
    return state.epoch, state.batch_in_epoch, state.step, len(state.history)


def continues(earlier: TrainState, later: TrainState) -> bool:
    """Whether `later` was trained on from `earlier` (or is it): at or past its step, its test results a
    prefix, and its runs (lineage) the same up to where `later`'s next run started, at or past `earlier`'s
    step. A checkpoint saved before state.json held a lineage is judged by step and test results alone when
    it is `earlier`; as `later` it continues no checkpoint that has one (nothing saved with a lineage is
    ever followed by one without: it is of another, older branch)."""
    if earlier.step > later.step or later.history[:len(earlier.history)] != earlier.history:
        return False
    if not earlier.lineage:
        return True
    if not later.lineage:
        return False
    runs = len(earlier.lineage)
    if later.lineage[:runs] != earlier.lineage:
        return False
    return len(later.lineage) == runs or later.lineage[runs][1] >= earlier.step


def finish_epoch_end(model_root: str | Path) -> list[str]:
    """Finish an end of epoch that a crash cut short, so that no finished epoch is lost.

    An epoch ends by saving epoch_N, copying it to last_model, evaluating it, writing the test result
    into epoch_N's and then last_model's state.json and, if it was the best, copying it to best_model
    (a Ctrl-C during the evaluation saves last_model as it was; the next start evaluates it). A kill
    between these steps leaves epoch_N ahead of last_model, or last_model ahead of best_model: all of
    them are made to hold the newest. Only an epoch_N that continues last_model (`continues`) is taken,
    never one of another branch (a run resumed from an older epoch_N leaves the later ones of the first
    run behind). A missing last_model is made from epoch_N only in the one crash that leaves none: at
    the first end of epoch in this folder, epoch_N the only one and no best_model yet; otherwise it was
    moved away, to start fresh.
    """
    model_root, notes = Path(model_root), []
    last = model_root / "last_model"
    epochs = [p for p in model_root.glob("epoch_*") if p.name[6:].isdigit() and is_complete(p)
              and _readable_state(p)]  # a damaged one is reported if resumed
    if is_complete(last) and _readable_state(last):
        base = load_state(last)
        states = {last: base} | {p: load_state(p) for p in epochs if continues(base, load_state(p))}
    elif not last.exists() and not (model_root / "best_model").exists() and len(epochs) == 1:
        states = {epochs[0]: load_state(epochs[0])}
    else:
        return notes  # a partial or damaged last_model: pick_resume_folder says what to do
    newest = max(states, key=lambda folder: _progress(states[folder]))
    state = states[newest]
    if state.epoch == 0 or state.batch_in_epoch != 0:
        return notes
    targets = [model_root / f"epoch_{state.epoch}", last]
    if state.best_epoch == state.epoch - 1:
        targets.append(model_root / "best_model")
    for target in targets:
        if target != newest and not holds(target, state):
            copy_checkpoint(newest, target)
            notes.append(f"copied {newest.name} to {target.name} (the previous run stopped before it did)")
    return notes


def holds(folder: Path, state: TrainState) -> bool:
    """Whether the folder holds the checkpoint that `state` describes: the same step and results, from
    the same runs (`state` may have a run more, started from this checkpoint)."""
    if not is_complete(folder) or not _readable_state(folder):
        return False
    saved = load_state(folder)
    return _progress(saved) == _progress(state) and continues(saved, state)


def _readable_state(folder: Path) -> bool:
    try:
        load_state(folder)
    except CheckpointError:
        return False
    return True


def missing_files(folder: str | Path) -> list[str]:
    """The files of a model folder that are not there."""
    return [name for name in (MODEL_FILE, STATE_FILE, CONFIG_FILE, VOCAB_FILE, NORMALIZER_FILE)
            if not (Path(folder) / name).is_file()]


def is_complete(folder: str | Path) -> bool:
    return not missing_files(folder)


def load_state(folder: str | Path) -> TrainState:
    path = Path(folder) / STATE_FILE
    try:
        return TrainState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:  # torn, edited, or from another program
        raise damaged(path, err) from None


def damaged(path: Path, err: Exception) -> CheckpointError:
    """The error for a checkpoint file that does not read: which file, why, and what to do."""
    folder = path.parent
    return CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}); {folder.name} is damaged. Resume "
                           f"from another folder with --resume_model={folder.parent}/epoch_N, or move {folder} "
                           f"away to start without it")


def load_tensors(path: Path) -> dict:
    """paddle.load of a checkpoint's model or optimizer file; CheckpointError when it does not read."""
    try:
        return paddle.load(str(path))
    except Exception as err:  # noqa: BLE001 - paddle.load raises ValueError, EOFError, pickle errors...
        raise damaged(path, err) from None


def load_config(folder: str | Path) -> Config:
    import yaml

    path = Path(folder) / CONFIG_FILE
    return from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path), check_ranges=False)


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+")
        except OSError as err:
            raise CheckpointError(f"cannot write the model folder {self.path.parent} ({err}); pass a writable "
                                  f"--save_model_path") from None
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

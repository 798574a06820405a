"""Where a training run starts from: a folder it resumes (checked against this run's config,
vocabulary and feature statistics, then restored: weights, optimizer, AMP scaler, progress), or
another model's weights it fine-tunes from (the output layer matched token by token)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle

from utils.checkpoint import (MODEL_FILE, NORMALIZER_FILE, OPTIMIZER_FILE, TrainState, is_complete, load_config,
                              load_optimizer_state, load_state, load_tensors, missing_files)
from utils.config import Config
from utils.features import load_mean_std
from utils.text import Vocabulary


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


HEAD = ("head.weight", "head.bias")  # the output layer: weight [hidden, vocabulary], bias [vocabulary]


def load_pretrained(model: paddle.nn.Layer, folder: str, tokens: list[str]) -> tuple[list[str], str]:
    """Load weights whose name and shape match, and the output layer token by token (`tokens`: this
    model's vocabulary); returns the names left as initialised and a line on the output layer.

    Vocabularies are sorted by frequency, so another corpus orders even the same tokens otherwise: the
    output layer's columns follow the pretrained folder's vocabulary.txt, and a token it lacks keeps
    its initial weights. The normalizer buffers (feat_mean, feat_istd) always come from this dataset's
    mean_std, not from the pretrained model; they are not listed as skipped.
    """
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise TrainingError(f"--pretrained_model {folder} has no {MODEL_FILE}; pass a model folder")
    loaded, own = paddle.load(str(path)), model.state_dict()
    keep_own = {"feat_mean", "feat_istd"}  # this dataset's normalizer, not the pretrained one's
    matching = {k: v for k, v in loaded.items() if k in own and k not in keep_own and k not in HEAD
                and list(v.shape) == list(own[k].shape)}
    head, note = _head_by_token(loaded, own, Path(folder), tokens)
    matching.update(head)
    model.set_state_dict(matching)
    return sorted(k for k in own if k not in matching and k not in keep_own), note


def _head_by_token(loaded: dict, own: dict, folder: Path, tokens: list[str]) -> tuple[dict, str]:
    """The output layer's weight and bias with the pretrained columns moved to this vocabulary's ids."""
    vocab_path = folder / "vocabulary.txt"
    if not all(name in loaded for name in HEAD):
        return {}, f"output layer: not loaded ({folder / MODEL_FILE} has none)"
    if not vocab_path.is_file():
        return {}, f"output layer: not loaded ({folder} has no vocabulary.txt to match its columns to tokens)"
    old_tokens = Vocabulary.load(vocab_path).tokens
    old_weight, old_bias = (np.asarray(loaded[name].numpy() if hasattr(loaded[name], "numpy") else loaded[name])
                            for name in HEAD)
    weight, bias = (own[name].numpy().copy() for name in HEAD)
    if old_weight.shape != (weight.shape[0], len(old_tokens)) or old_bias.shape != (len(old_tokens),):
        return {}, (f"output layer: not loaded (its shape {list(old_weight.shape)} does not fit this model's "
                    f"{list(weight.shape)} and the {len(old_tokens)} tokens of {vocab_path})")
    old_id = {token: i for i, token in enumerate(old_tokens)}
    pairs = [(i, old_id[token]) for i, token in enumerate(tokens) if token in old_id]
    new_ids, old_ids = [i for i, _ in pairs], [j for _, j in pairs]
    weight[:, new_ids], bias[new_ids] = old_weight[:, old_ids], old_bias[old_ids]
    moved = sum(i != j for i, j in pairs)
    new = [token for token in tokens if token not in old_id]
    listed = f": {' '.join(new[:20])}" if new else ""
    return dict(zip(HEAD, (weight, bias))), (
        f"output layer: {len(pairs)} of {len(tokens)} tokens loaded by token from {vocab_path} ({moved} at "
        f"another id there); {len(new)} not in it keep their initial weights{listed}")


def scaler_state(scaler) -> dict:
    """The AMP scaler's state as JSON values: its loss scale, a one-element tensor, as a float."""
    if scaler is None:
        return {}
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in scaler.state_dict().items()}


def restore_scaler(scaler, saved: dict) -> None:
    """Give back what scaler_state saved: GradScaler.load_state_dict reads scale[0]."""
    scaler.load_state_dict(dict(saved, scale=np.array([saved["scale"]], np.float32)))


def restore(folder: Path, model, optimizer, scaler) -> TrainState:
    model.set_state_dict(load_tensors(folder / MODEL_FILE))
    if (folder / OPTIMIZER_FILE).is_file():
        load_optimizer_state(model, optimizer, folder / OPTIMIZER_FILE)
    state = load_state(folder)
    if scaler is not None and state.scaler:
        restore_scaler(scaler, state.scaler)
    return state


def pick_resume_folder(cfg: Config, model_root: Path) -> Path | None:
    if cfg.train.resume_model:
        folder = Path(cfg.train.resume_model)
        if not is_complete(folder):
            raise TrainingError(f"--resume_model {folder} is not a complete model folder")
        return folder
    last = model_root / "last_model"
    if last.is_dir() and not is_complete(last):  # not left by our saves, which swap in whole folders
        raise TrainingError(f"{last} lacks {', '.join(missing_files(last))}, so training cannot continue from it; "
                            f"pass --resume_model={model_root}/epoch_N to continue from an epoch, or move {last} "
                            f"away to start fresh")
    return last if is_complete(last) else None


RESUME_MUST_MATCH = ("model", "features")  # config sections a resumed run cannot change


def check_resumable(folder: Path, cfg: Config) -> list[str]:
    """TrainingError where the model or the features differ from the folder's config (its weights would
    not fit, or would see other inputs); notes on what else changed that a resumed run should know."""
    saved = load_config(folder)
    changed = [f"{section}.{key}={value!r} (now {getattr(getattr(cfg, section), key)!r})"
               for section in RESUME_MUST_MATCH for key, value in vars(getattr(saved, section)).items()
               if getattr(getattr(cfg, section), key) != value
               and not (key == "n_mels" and saved.features.feature_method != "fbank")]
    if changed:
        raise TrainingError(f"{folder} was trained with {', '.join(changed)}; set them back to continue it, pass "
                            f"--pretrained_model={folder} to fine-tune what still fits, or another --use_model "
                            f"to start fresh")
    notes = []
    if saved.train.batch_size != cfg.train.batch_size and load_state(folder).batch_in_epoch > 0:
        notes.append(f"note: {folder} stopped mid-epoch with batch_size {saved.train.batch_size}, now "
                     f"{cfg.train.batch_size}: the rest of that epoch is cut into other batches, so some of its "
                     f"utterances are seen twice and others not at all")
    return notes


def check_vocabulary(folder: Path, vocabulary: Vocabulary) -> None:
    saved = Vocabulary.load(folder / "vocabulary.txt")
    if saved.tokens != vocabulary.tokens:
        raise TrainingError(f"{folder}/vocabulary.txt differs from the dataset vocabulary; resuming would "
                            f"mislabel every token. Use --pretrained_model to fine-tune on a new vocabulary, "
                            f"or another --use_model to start fresh")


def check_normalizer(folder: Path, mean_std_path: str) -> None:
    """TrainingError where the config's mean_std differs from the one the folder was trained with.

    A resumed model keeps its own normalizer (feat_mean, feat_istd come with its weights, which were
    trained on features so scaled), while every save copies the config's mean_std.npz: going on would
    leave a folder whose statistics file disagrees with its model. Refused rather than repaired, because
    a changed file means the user meant other statistics, which only fine-tuning can take.
    """
    saved, now = load_mean_std(folder / NORMALIZER_FILE), load_mean_std(mean_std_path)
    if not all(np.array_equal(saved[key], now[key]) for key in ("mean", "std")):
        raise TrainingError(f"{mean_std_path} differs from {folder / NORMALIZER_FILE}, the feature statistics "
                            f"{folder} was trained with; resuming would go on with the old ones and save the new "
                            f"file beside them. Pass --mean_std_path={folder / NORMALIZER_FILE} to continue it, "
                            f"--pretrained_model={folder} to fine-tune with the new statistics, or another "
                            f"--use_model to start fresh")

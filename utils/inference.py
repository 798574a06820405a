"""Load a trained model for decoding: a checkpoint folder (dynamic graph) or an exported one
(ONNX Runtime session, or a Paddle Inference predictor). All give log_probs [B, T', V] for feats
[B, T, D].
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import paddle

from utils.checkpoint import (CONFIG_FILE, MODEL_FILE, NORMALIZER_FILE, VOCAB_FILE, check_model_folder,
                              is_complete, load_config, load_tensors, swap_in)
from utils.config import Config, save_config
from utils.features import feature_dim
from utils.model import build_model, log_softmax
from utils.text import Vocabulary

EXPORT_PREFIX = "model"  # paddle.jit.save writes model.json (Paddle 3) or model.pdmodel (2.x) + model.pdiparams
ONNX_FILE = "model.onnx"
RUNTIMES = ("onnx", "paddle")
# the checkpoint an export was made from: its folder (relative to the export) and the size, mtime and
# sha256 of its model.pdparams, so that an export older than a retrained checkpoint is noticed
EXPORT_SOURCE_FILE = "source.json"


class ModelLoadError(RuntimeError):
    pass


def _threads(num_threads: int) -> int:
    """num_threads, or when 0 OMP_NUM_THREADS (utils/__init__.py sets it to the usable cores)."""
    return num_threads or int(os.environ.get("OMP_NUM_THREADS", "1"))


def is_exported(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / f"{EXPORT_PREFIX}.pdiparams").is_file() and (folder / CONFIG_FILE).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_record(checkpoint: Path) -> dict:
    stat = (checkpoint / MODEL_FILE).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(checkpoint / MODEL_FILE)}


def write_export_source(checkpoint: Path, export_dir: Path, write_to: Path) -> None:
    """EXPORT_SOURCE_FILE in write_to (the export's temporary folder) for an export that will live at export_dir."""
    record = {"checkpoint": os.path.relpath(checkpoint.resolve(), export_dir.resolve()), **_weights_record(checkpoint)}
    (write_to / EXPORT_SOURCE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def export_source(export: Path) -> tuple[str, Path | None]:
    """How an export stands against the checkpoint it was made from: ("current", checkpoint),
    ("changed", checkpoint) when that checkpoint's model.pdparams changed since (retrained),
    ("gone", checkpoint) when it no longer exists, ("unrecorded", None) for an export made before
    exports recorded their source. The weights are hashed only when their size or mtime differ."""
    try:
        record = json.loads((export / EXPORT_SOURCE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # missing, or cut short: as good as no record
        return "unrecorded", None
    if not isinstance(record, dict) or not {"checkpoint", "size", "mtime_ns", "sha256"} <= record.keys():
        return "unrecorded", None
    checkpoint = Path(os.path.normpath(export / record["checkpoint"]))
    if not (checkpoint / MODEL_FILE).is_file():
        return "gone", checkpoint
    stat = (checkpoint / MODEL_FILE).stat()
    if (stat.st_size, stat.st_mtime_ns) == (record["size"], record["mtime_ns"]):
        return "current", checkpoint
    unchanged = stat.st_size == record["size"] and _sha256(checkpoint / MODEL_FILE) == record["sha256"]
    return ("current" if unchanged else "changed"), checkpoint  # same bytes, new mtime: copied without -p


def _export_command(checkpoint: Path, export: Path) -> str:
    """The command that writes `export` (models/<use_model>/infer) again from `checkpoint`."""
    command = f"python tools/export_model.py --resume_model {checkpoint}"
    if export.name != "infer":  # moved or renamed: tools/export_model.py writes <save_model_path>/<use_model>/infer
        return command
    return f"{command} --save_model_path {export.parent.parent} --use_model {export.parent.name}"


def default_model_folder(cfg: Config, messages: list[str] | None = None, flag: str = "--resume_model") -> Path:
    """models/<use_model>/infer when exported from the weights best_model still holds, else
    models/<use_model>/best_model. An export whose checkpoint was retrained since gives way to that
    checkpoint, with a warning that says how to export again; an export of another checkpoint
    (epoch_N) gives way to best_model, with a note naming `flag` to use it; an export that records
    no source is used, with a note. Warnings and notes go to `messages` when given, else to stderr."""
    out = [] if messages is None else messages
    root = Path(cfg.train.save_model_path) / cfg.train.use_model
    export, folder = root / "infer", root / "best_model"
    if is_exported(export):
        state, checkpoint = export_source(export)
        folder = checkpoint if state == "changed" else export
        if checkpoint is not None and checkpoint.resolve() != (root / "best_model").resolve() \
                and is_complete(root / "best_model"):  # an export of epoch_N, kept or pruned since
            folder = root / "best_model"
            out.append(f"note: {export} was exported from {checkpoint}, not from {folder}; using {folder}. Pass "
                       f"{flag} {export} to use the export, or export {folder}: {_export_command(folder, export)}")
        elif state == "changed":
            out.append(f"warning: {export} was exported from {checkpoint} before that checkpoint changed (retrained "
                       f"since); using the checkpoint {checkpoint} instead of the stale export. To use an export "
                       f"again: {_export_command(checkpoint, export)}")
        elif state == "unrecorded":
            out.append(f"note: {export} records no source checkpoint (exported by an older version), so whether it "
                       f"is older than {root / 'best_model'} cannot be checked; using it as it is. Export again to "
                       f"have it checked: {_export_command(root / 'best_model', export)}")
        elif state == "gone":
            out.append(f"note: {export} was exported from {checkpoint}, which no longer exists; using the export")
    if messages is None:
        _print_messages(out)
    return folder


def _stale_export_warning(export: Path, flag: str) -> list[str]:
    """A warning for an export asked for by name (it is used) whose checkpoint changed since."""
    state, checkpoint = export_source(export)
    if state != "changed":
        return []
    return [f"warning: {export} was exported from {checkpoint} before that checkpoint changed (retrained since); "
            f"using the export as asked. For the retrained model pass {flag} {checkpoint}, or export again: "
            f"{_export_command(checkpoint, export)}"]


def _print_messages(messages: list[str]) -> None:
    sys.stdout.flush()  # after what the script printed before them
    for message in messages:
        print(message, file=sys.stderr, flush=True)


def folder_config(folder: str | Path) -> Config | None:
    """The config saved with a model folder, or None when the folder does not exist."""
    folder = Path(folder)
    return load_config(folder) if (folder / CONFIG_FILE).is_file() else None


def load_checkpoint_model(folder: str | Path) -> tuple[paddle.nn.Layer, Config, Vocabulary]:
    """(model in eval mode, its config, its vocabulary) from a model folder."""
    folder = check_model_folder(folder)
    cfg = load_config(folder)
    vocabulary = Vocabulary.load(folder / VOCAB_FILE)
    dim = feature_dim(cfg.features.feature_method, cfg.features.sample_rate, cfg.features.n_mels)
    model = build_model(cfg.model, dim, len(vocabulary))
    weights = load_tensors(folder / MODEL_FILE)
    check_weights_fit(folder, weights, model.state_dict(), len(vocabulary))
    model.set_state_dict(weights)
    model.eval()
    return model, cfg, vocabulary


def check_weights_fit(folder: Path, weights: dict, expected: dict, vocab_size: int) -> None:
    """ModelLoadError when model.pdparams does not fit the model that config.yml and vocabulary.txt
    describe (Paddle's set_state_dict would only warn and decode with random weights there)."""
    missing = sorted(set(expected) - set(weights))
    misfit = [(name, list(weights[name].shape), list(tensor.shape)) for name, tensor in expected.items()
              if name in weights and list(weights[name].shape) != list(tensor.shape)]
    if not missing and not misfit:
        return
    heads = [saved[-1] for _, saved, built in misfit if built[-1:] == [vocab_size] and saved[:-1] == built[:-1]]
    if heads and len(heads) == len(misfit) and not missing:
        raise ModelLoadError(f"{folder / MODEL_FILE} has an output layer of {heads[0]} tokens but "
                             f"{folder / VOCAB_FILE} holds {vocab_size}: put back the vocabulary.txt the model "
                             f"was trained with (the one create_data wrote for its training data)")
    shown = [f"{name} {saved} (config.yml builds {built})" for name, saved, built in misfit[:3]]
    shown += [f"{name} missing" for name in missing[:3]]
    raise ModelLoadError(f"{folder / MODEL_FILE} does not fit the model {folder / CONFIG_FILE} describes: "
                         f"{'; '.join(shown)}: put back the config.yml and vocabulary.txt the model was trained "
                         f"with")


class CheckpointRunner:
    """log_probs from the dynamic-graph model."""

    kind = "checkpoint"

    def __init__(self, folder: str | Path):
        self.model, self.cfg, self.vocabulary = load_checkpoint_model(folder)

    @paddle.no_grad()
    def __call__(self, feats: np.ndarray, feat_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, out_lens = self.model(paddle.to_tensor(feats), paddle.to_tensor(feat_lens))
        return log_softmax(logits).numpy(), out_lens.numpy()


# Paddle Inference caches oneDNN kernels per input shape; every utterance length is a new
# shape, so the cache is bounded to keep a long eval from growing without end.
ONEDNN_SHAPE_CACHE = 16


class ExportedRunner:
    """log_probs from the exported static model through a Paddle Inference predictor.

    num_threads: 0 takes OMP_NUM_THREADS (set by utils/__init__.py to the cores this process
    may use). onednn: oneDNN kernels (8 s of audio, forward only: 50.5 -> 38 ms on 2 threads,
    log-probs within 2e-5 of the plain kernels).
    """

    kind = "exported model (Paddle Inference)"

    def __init__(self, folder: str | Path, num_threads: int = 0, onednn: bool = True):
        from paddle import inference

        folder = Path(folder)
        self.cfg = load_config(folder)
        self.vocabulary = Vocabulary.load(folder / VOCAB_FILE)
        program = next((folder / f"{EXPORT_PREFIX}{ext}" for ext in (".json", ".pdmodel")
                        if (folder / f"{EXPORT_PREFIX}{ext}").is_file()), None)
        if program is None:
            raise ModelLoadError(f"{folder} holds no {EXPORT_PREFIX}.json or {EXPORT_PREFIX}.pdmodel; "
                                 f"export again with python tools/export_model.py")
        config = inference.Config(str(program), str(folder / f"{EXPORT_PREFIX}.pdiparams"))
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(_threads(num_threads))
        if onednn:
            config.enable_mkldnn()
            config.set_mkldnn_cache_capacity(ONEDNN_SHAPE_CACHE)
        elif hasattr(config, "disable_mkldnn"):
            config.disable_mkldnn()
        try:
            self.predictor = inference.create_predictor(config)
        except (RuntimeError, ValueError, OSError) as err:  # Paddle's parse and read errors, all RuntimeError
            detail = str(err).strip().splitlines()[0][:200]
            raise ModelLoadError(f"{program} or {folder / (EXPORT_PREFIX + '.pdiparams')} cannot be loaded "
                                 f"(damaged or cut short: {detail}); export again with python "
                                 f"tools/export_model.py, or use ONNX Runtime with --runtime=onnx") from None

    def __call__(self, feats: np.ndarray, feat_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        names = self.predictor.get_input_names()
        for name, value in zip(names, (feats.astype(np.float32), feat_lens.astype(np.int64))):
            handle = self.predictor.get_input_handle(name)
            handle.reshape(value.shape)
            handle.copy_from_cpu(value)
        self.predictor.run()
        outputs = [self.predictor.get_output_handle(n).copy_to_cpu() for n in self.predictor.get_output_names()]
        return outputs[0], outputs[1]


class OnnxRunner:
    """log_probs from the exported ONNX graph through ONNX Runtime.

    make bench (2 cores): an 8 s file in about 23 ms against 37 with Paddle Inference and oneDNN.
    Log-probs within 1e-4 of the checkpoint's (tests/test_inference.py; 1.5e-5 measured on the
    demo model).
    """

    kind = "exported model (ONNX Runtime)"

    def __init__(self, folder: str | Path, num_threads: int = 0):
        import onnxruntime

        folder = Path(folder)
        self.cfg = load_config(folder)
        self.vocabulary = Vocabulary.load(folder / VOCAB_FILE)
        if not (folder / ONNX_FILE).is_file():
            raise ModelLoadError(f"{folder} holds no {ONNX_FILE} (exported before ONNX support); export again with "
                                 f"python tools/export_model.py, or use Paddle Inference with --runtime=paddle")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = _threads(num_threads)
        options.inter_op_num_threads = 1
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        try:
            self.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options,
                                                        providers=["CPUExecutionProvider"])
        except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NotImplemented) as err:
            raise ModelLoadError(f"{folder / ONNX_FILE} cannot be loaded (damaged or cut short: "
                                 f"{type(err).__name__}); export again with python tools/export_model.py, "
                                 f"or use Paddle Inference with --runtime=paddle") from None
        output_tokens = self.session.get_outputs()[0].shape[-1]  # an int, or a name for a dynamic axis
        if isinstance(output_tokens, int) and output_tokens != len(self.vocabulary):
            raise ModelLoadError(f"{folder / ONNX_FILE} has an output layer of {output_tokens} tokens but "
                                 f"{folder / VOCAB_FILE} holds {len(self.vocabulary)}: put back the vocabulary.txt "
                                 f"it was exported with, or export again with python tools/export_model.py")

    def __call__(self, feats: np.ndarray, feat_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_probs, out_lens = self.session.run(None, {"feats": feats.astype(np.float32),
                                                      "feat_lens": feat_lens.astype(np.int64)})
        return log_probs, out_lens


def load_runner(folder: str | Path, runtime: str = "onnx"):
    """For an exported folder an OnnxRunner (runtime "onnx") or an ExportedRunner ("paddle"),
    else a CheckpointRunner."""
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)} (--runtime)")
    if not is_exported(folder):
        return CheckpointRunner(folder)
    return OnnxRunner(folder) if runtime == "onnx" else ExportedRunner(folder)


class _LogProbModel(paddle.nn.Layer):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, feats, feat_lens):
        logits, out_lens = self.model(feats, feat_lens)
        return log_softmax(logits), out_lens


def export_model(folder: str | Path, out_dir: str | Path) -> Path:
    """paddle.jit.save the model (normalizer inside, log_softmax on top) and the same as an ONNX
    graph, with its config and vocabulary."""
    from utils.onnx_export import save_onnx

    folder, out_dir = Path(folder), Path(out_dir)
    model, cfg, _ = load_checkpoint_model(folder)
    dim = model.feat_dim
    specs = [paddle.static.InputSpec([None, None, dim], "float32", "feats"),
             paddle.static.InputSpec([None], "int64", "feat_lens")]
    tmp = out_dir.with_name(".tmp-" + out_dir.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    static = paddle.jit.to_static(_LogProbModel(model), input_spec=specs, full_graph=True)
    paddle.jit.save(static, str(tmp / EXPORT_PREFIX))
    save_onnx(model, tmp / ONNX_FILE)
    for name in (VOCAB_FILE, NORMALIZER_FILE):
        shutil.copyfile(folder / name, tmp / name)
    save_config(cfg, tmp / CONFIG_FILE)
    write_export_source(folder, out_dir, tmp)
    swap_in(tmp, out_dir)  # the earlier export stays whole until the new one takes its name
    return out_dir



MODEL_FOLDER_KEYS = ("train.resume_model", "infer.model_path")  # either names the model eval, infer, tune use
FIXED_BY_THE_MODEL = ("model", "features")  # config sections the model folder's config.yml decides


def parse_model_args(description: str, script: str, folder_key: str, default_folder=None) -> tuple[Config, Path]:
    """Config and model folder for a script that uses a trained model (eval, infer, tune).

    The folder is the value of `folder_key` ("train.resume_model" or "infer.model_path"; the other one
    is taken too, as every script accepts every key) or default_model_folder. It is picked once, before
    the config saved in it applies (that config's resume_model is the training's, not ours); the
    command line then applies on top, except the model and feature keys, which are the folder's.
    default_folder(cfg) replaces default_model_folder (tools/export_model.py: best_model).
    """
    from utils.config import ConfigError, parse_args, print_config

    chosen: list[Path] = []
    messages: list[str] = []  # about the folder picked: printed after the config, where they are seen

    def base_config(cfg: Config) -> Config | None:
        given = {dotted: _get(cfg, dotted) for dotted in MODEL_FOLDER_KEYS if _get(cfg, dotted)}
        if len(set(given.values())) > 1:
            raise ConfigError("command line: " + " and ".join(f"--{k.split('.')[1]}={v}" for k, v in given.items())
                              + f" name different models; give one (for {script}: --{folder_key.split('.')[1]})")
        explicit = given.get(folder_key) or next(iter(given.values()), None)
        flag = "--" + folder_key.split(".")[1]
        if explicit:
            chosen.append(Path(explicit))
        else:
            chosen.append(default_folder(cfg) if default_folder else default_model_folder(cfg, messages, flag))
        if explicit and is_exported(explicit):
            messages.extend(_stale_export_warning(Path(explicit), flag))
        return folder_config(chosen[-1])

    def keep_the_models_own(cfg: Config) -> None:
        saved = folder_config(chosen[-1])
        for section in FIXED_BY_THE_MODEL if saved is not None else ():
            for key, value in vars(getattr(saved, section)).items():
                if getattr(getattr(cfg, section), key) != value:
                    messages.append(f"note: {section}.{key}={getattr(getattr(cfg, section), key)!r} ignored: "
                                    f"{chosen[-1]} was trained with {value!r} ({chosen[-1] / CONFIG_FILE})")
                    setattr(getattr(cfg, section), key, value)

    cfg = parse_args(description, default_config=None, base_config=base_config, settle=keep_the_models_own)
    print_config(cfg, script)
    _print_messages(messages)
    return cfg, chosen[0]


def _get(cfg: Config, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


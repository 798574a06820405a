"""Load a trained model for decoding: a checkpoint folder (dynamic graph) or an exported one
(ONNX Runtime session, or a Paddle Inference predictor). All give log_probs [B, T', V] for feats
[B, T, D].
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import paddle

from utils.checkpoint import (CONFIG_FILE, MODEL_FILE, NORMALIZER_FILE, VOCAB_FILE, check_model_folder,
                              load_config)
from utils.config import Config, save_config
from utils.features import feature_dim
from utils.model import build_model, log_softmax
from utils.text import Vocabulary

EXPORT_PREFIX = "model"  # paddle.jit.save writes model.json (Paddle 3) or model.pdmodel (2.x) + model.pdiparams
ONNX_FILE = "model.onnx"
RUNTIMES = ("onnx", "paddle")


class ModelLoadError(RuntimeError):
    pass


def _threads(num_threads: int) -> int:
    """num_threads, or when 0 OMP_NUM_THREADS (utils/__init__.py sets it to the usable cores)."""
    return num_threads or int(os.environ.get("OMP_NUM_THREADS", "1"))


def is_exported(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / f"{EXPORT_PREFIX}.pdiparams").is_file() and (folder / CONFIG_FILE).is_file()


def default_model_folder(cfg: Config) -> Path:
    """models/<use_model>/infer when exported, else models/<use_model>/best_model."""
    root = Path(cfg.train.save_model_path) / cfg.train.use_model
    return root / "infer" if is_exported(root / "infer") else root / "best_model"


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
    model.set_state_dict(paddle.load(str(folder / MODEL_FILE)))
    model.eval()
    return model, cfg, vocabulary


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
        self.predictor = inference.create_predictor(config)

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
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir



def parse_model_args(description: str, script: str, folder_key: str) -> tuple[Config, Path]:
    """Config and model folder for a script that uses a trained model (eval, infer, tune).

    The folder is the value of `folder_key` ("train.resume_model" or "infer.model_path") or
    default_model_folder. It is picked once, before the config saved in it applies (that
    config's resume_model is the training's, not ours); the command line then applies on top.
    """
    from utils.config import parse_args, print_config

    chosen: list[Path] = []

    def base_config(cfg: Config) -> Config | None:
        section, key = folder_key.split(".")
        explicit = getattr(getattr(cfg, section), key)
        chosen.append(Path(explicit) if explicit else default_model_folder(cfg))
        return folder_config(chosen[-1])

    cfg = parse_args(description, default_config=None, base_config=base_config)
    print_config(cfg, script)
    return cfg, chosen[0]

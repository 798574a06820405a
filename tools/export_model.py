"""Export a trained model for ONNX Runtime and Paddle Inference: python tools/export_model.py
[--resume_model models/deepspeech2/best_model] [--save_model_path models --use_model deepspeech2]

Writes models/<use_model>/infer/ (model.onnx and Paddle's static graph, each with the normalizer
inside, plus config, vocabulary, normalizer and source.json: the checkpoint exported and its
weights' size, mtime and sha256). infer.py and eval.py without a model use it (ONNX Runtime
unless --runtime=paddle) when it was exported from best_model and that has not changed since;
else best_model, with a note or a warning that says how to export again. use_model and
save_model_path come from the exported folder's own config unless given here.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.config import ConfigError  # noqa: E402


def best_model(cfg) -> Path:
    return Path(cfg.train.save_model_path) / cfg.train.use_model / "best_model"


def main() -> int:
    try:
        from utils.inference import export_model, parse_model_args

        # --resume_model or --model_path names the folder (best_model without either); its config decides
        cfg, source = parse_model_args(__doc__, "export_model.py", "train.resume_model", default_folder=best_model)
        out = export_model(source, Path(cfg.train.save_model_path) / cfg.train.use_model / "infer")
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {source} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

from utils.config import ConfigError, parse_args, print_config  # noqa: E402


def source_folder(cfg) -> Path:
    root = Path(cfg.train.save_model_path) / cfg.train.use_model
    return Path(cfg.train.resume_model) if cfg.train.resume_model else root / "best_model"


def main() -> int:
    from utils.inference import folder_config

    chosen = []  # picked once, before the folder's saved config (whose resume_model is training's) applies

    def base_config(c):
        chosen.append(source_folder(c))
        return folder_config(chosen[-1])

    try:
        cfg = parse_args(__doc__, default_config=None, base_config=base_config)
        print_config(cfg, "export_model.py")
        from utils.inference import export_model

        source = chosen[-1]
        out = export_model(source, Path(cfg.train.save_model_path) / cfg.train.use_model / "infer")
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {source} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

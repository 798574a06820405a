"""Export a trained model for Paddle Inference: python tools/export_model.py
[--resume_model models/deepspeech2/best_model] [--save_model_path models --use_model deepspeech2]

Writes models/<use_model>/infer/ (static graph with the normalizer inside, plus config,
vocabulary and normalizer); infer.py and eval.py use it when it is there.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.config import ConfigError, parse_args  # noqa: E402


def main() -> int:
    try:
        cfg = parse_args(__doc__, default_config=None)
        from utils.inference import export_model

        root = Path(cfg.train.save_model_path) / cfg.train.use_model
        source = Path(cfg.train.resume_model) if cfg.train.resume_model else root / "best_model"
        out = export_model(source, root / "infer")
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {source} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

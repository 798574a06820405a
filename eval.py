"""Evaluate a trained model: python eval.py [--resume_model models/deepspeech2/best_model]
[--decoder ctc_beam_search --lang_model_path lm/x.arpa --alpha 1.0 --beta 2.0]

The model folder brings its own config, vocabulary and normalizer; command-line keys
(decoder settings, --test_manifest) are applied on top. The last line holds cer= or wer=.
"""
import sys
from pathlib import Path

from utils.config import ConfigError, parse_args, print_config


def model_folder(cfg) -> Path:
    from utils.inference import default_model_folder

    return Path(cfg.train.resume_model) if cfg.train.resume_model else default_model_folder(cfg)


def main() -> int:
    from utils.inference import folder_config

    chosen = []  # the folder is picked once, before its saved config (whose resume_model is training's) applies

    def base_config(c):
        chosen.append(model_folder(c))
        return folder_config(chosen[-1])

    try:
        cfg = parse_args(__doc__, default_config=None, base_config=base_config)
        print_config(cfg, "eval.py")
        from utils.evaluate import run_eval

        print(run_eval(cfg, chosen[-1]), flush=True)
    except (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

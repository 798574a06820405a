"""Evaluate a trained model: python eval.py [--resume_model models/deepspeech2/best_model]
[--decoder ctc_beam_search --lang_model_path lm/x.arpa --alpha 1.0 --beta 2.0]

The model folder brings its own config, vocabulary and normalizer; command-line keys
(decoder settings, --test_manifest) are applied on top. The last line holds cer= or wer=.
"""
import sys

from utils.config import ConfigError


def main() -> int:
    try:
        from utils.inference import parse_model_args

        cfg, folder = parse_model_args(__doc__, "eval.py", "train.resume_model")
        from utils.evaluate import run_eval

        print(run_eval(cfg, folder), flush=True)
    except (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

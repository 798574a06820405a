"""Transcribe audio: python infer.py --wav_path dataset/test.wav [--decoder ctc_beam_search]
[--model_path models/deepspeech2/infer] [--is_long_audio] [--timestamps]

--wav_path takes one file, a folder, or a list file (one path per line). The model
folder (exported or checkpoint) brings its config, vocabulary and normalizer.
"""
import sys
from pathlib import Path

from utils.config import ConfigError, parse_args, print_config


def model_folder(cfg) -> Path:
    from utils.inference import default_model_folder

    return Path(cfg.infer.model_path) if cfg.infer.model_path else default_model_folder(cfg)


def main() -> int:
    from utils.inference import folder_config

    chosen = []  # the folder is picked once, before its saved config applies

    def base_config(c):
        chosen.append(model_folder(c))
        return folder_config(chosen[-1])

    try:
        cfg = parse_args(__doc__, default_config=None, base_config=base_config)
        print_config(cfg, "infer.py")
        from utils.transcribe import run_infer

        summary, failed = run_infer(cfg, chosen[-1])
    except (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

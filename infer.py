"""Transcribe audio: python infer.py --wav_path dataset/test.wav [--decoder ctc_beam_search]
[--model_path models/deepspeech2/infer] [--is_long_audio] [--timestamps]

--wav_path takes one file, a folder, or a list file (one path per line). The model
folder (exported or checkpoint) brings its config, vocabulary and normalizer.
"""
import sys

from utils.config import ConfigError


def main() -> int:
    try:
        from utils.inference import parse_model_args

        cfg, folder = parse_model_args(__doc__, "infer.py", "infer.model_path")
        from utils.transcribe import run_infer

        summary, failed = run_infer(cfg, folder)
    except (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Train DeepSpeech2 with CTC: python train.py [--configs conf/deepspeech2.yml] [--key=value ...]

Multi-GPU (batch_size is per device):
  CUDA_VISIBLE_DEVICES=0,1 python -m paddle.distributed.launch train.py
"""
import sys

from utils.config import ConfigError, parse_args


def main() -> int:
    try:
        cfg = parse_args(__doc__, default_config="conf/deepspeech2.yml")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from utils.checkpoint import CheckpointError
    from utils.training import TrainingError, train

    try:
        summary = train(cfg)
    except KeyboardInterrupt:
        return 130
    except (TrainingError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary:
        print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

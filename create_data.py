"""Build the manifests, vocabulary and feature mean/std from transcript lists (MASR create_data.py).

Reads MASR lists (path<TAB>text in dataset/annotation/*.txt; test.txt is the test set),
JSON-lines manifests or DeepSpeech CSV, and writes dataset/manifest.{train,test,noise},
dataset/vocabulary.txt, dataset/mean_std.npz and dataset/skipped.txt (lines left out, why).
"""
import errno
import os
import sys

# The work runs in numpy worker processes: one BLAS thread each (set before numpy loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from utils.config import ConfigError, parse_args, print_config  # noqa: E402
from utils.data_prep import DataPrepError, create_data  # noqa: E402


def main() -> None:
    try:
        cfg = parse_args(__doc__, default_config=None)
    except ConfigError as err:
        sys.exit(f"create_data.py: error: {err}")
    print_config(cfg, "create_data.py")
    try:
        summary = create_data(cfg)
    except DataPrepError as err:
        sys.exit(f"create_data.py: error: {err}")
    except KeyboardInterrupt:
        print("\ncreate_data.py: interrupted; the outputs (manifests, vocabulary, mean/std, skipped.txt) are "
              "unchanged, as the last run left them", file=sys.stderr)
        sys.exit(130)
    except OSError as err:  # the disk full, a folder made read-only meanwhile
        where = f" with {err.filename}" if err.filename else ""
        hint = ("free space on the disk of the manifests (kept lines wait there in unnamed temporary files until "
                "they are written) and rerun" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix it and rerun")
        sys.exit(f"create_data.py: error{where}: {err.strerror or err}. The outputs (manifests, vocabulary, "
                 f"mean/std) take their names only once all are written, so the last run's set is still whole; "
                 f"{hint}.")
    print(summary.line())


if __name__ == "__main__":
    main()

"""Build an n-gram language model (ARPA, Kneser-Ney) for ctc_beam_search.

    python tools/build_lm.py              # from dataset/manifest.train, minus dataset/manifest.test
    python tools/build_lm.py --text corpus.txt --exclude dataset/manifest.test --name my_lm
    python eval.py --decoder ctc_beam_search --lang_model_path lm/my_lm.arpa

Writes lm/<name>.arpa (and lm/<name>.klm when KenLM's build_binary is on PATH).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.lm import (DEFAULT_ORDERS, DEFAULT_UNK_LOG10_PROB, MAX_ORDER, MIN_ORDER,  # noqa: E402
                      UNITS, build_lm)

DEFAULT_MANIFEST = "dataset/manifest.train"
TEST_MANIFEST_NAME = "manifest.test"  # create_data's test manifest, next to manifest.train
DEFAULT_LM_DIR = "lm"
DEFAULT_NAME = "train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest_path", default=DEFAULT_MANIFEST,
                        help="manifest whose \"text\" fields are the corpus (used when --text is not given)")
    parser.add_argument("--text", nargs="+", metavar="FILE",
                        help="corpus files instead: plain text (one sentence per line), manifests or "
                             "MASR annotation lists (path<TAB>text)")
    parser.add_argument("--exclude", nargs="*", metavar="FILE", default=None,
                        help=f"sentences to leave out, same formats (default: {TEST_MANIFEST_NAME} in the "
                             f"folder of --manifest_path when it exists, so test sentences never leak into "
                             f"the LM; --exclude alone: none)")
    parser.add_argument("--unit", choices=UNITS, default="auto",
                        help="word (English), char (Chinese) or auto (char when most characters are CJK)")
    parser.add_argument("--order", type=int, default=None,
                        help=f"n-gram order, {MIN_ORDER}..{MAX_ORDER} (default: {DEFAULT_ORDERS['word']} "
                             f"for words, {DEFAULT_ORDERS['char']} for characters)")
    parser.add_argument("--to_simplified", action="store_true",
                        help="convert traditional Chinese to simplified (needs OpenCC), as create_data "
                             "--to_simplified does for the transcripts")
    parser.add_argument("--unk_log10_prob", type=float, default=DEFAULT_UNK_LOG10_PROB,
                        help="log10 probability of the <unk> unigram added to the model")
    parser.add_argument("--lm_dir", default=DEFAULT_LM_DIR, help="output folder")
    parser.add_argument("--name", default=DEFAULT_NAME, help="output file name without suffix")
    parser.add_argument("--no_binary", action="store_true",
                        help="do not write a KenLM binary even when build_binary is on PATH")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.exclude is None:
        test_manifest = Path(args.manifest_path).with_name(TEST_MANIFEST_NAME)
        args.exclude = [str(test_manifest)] if test_manifest.is_file() else []
    print("build_lm configuration:")
    for key, value in vars(args).items():
        print(f"  {key}: {value}")
    if not args.text and not Path(args.manifest_path).is_file():
        raise FileNotFoundError(f"manifest {args.manifest_path} does not exist: run python create_data.py "
                                f"first, or give the corpus with --text FILE")
    sources = args.text or [args.manifest_path]
    result = build_lm(sources, Path(args.lm_dir) / f"{args.name}.arpa", order=args.order, unit=args.unit,
                      exclude_paths=args.exclude, unk_log10_prob=args.unk_log10_prob,
                      make_binary=not args.no_binary, to_simplified=args.to_simplified)
    print(result.summary())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"build_lm: error: {err}")

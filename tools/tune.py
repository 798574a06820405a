"""Tune the beam search's alpha (LM weight) and beta (word bonus) for a model and an LM.

python tools/tune.py --resume_model models/demo_en/best_model --test_manifest dataset/manifest.dev \
    --lang_model_path lm/demo_en.arpa --alphas "[0.5,1,1.5,2]" --betas "[0,1,2,3]"

The acoustic model runs once over the manifest; every (alpha, beta) point then only
re-runs the beam search. Tune on a dev set, not on the test set you report.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.config import ConfigError  # noqa: E402


def tune(cfg, folder: Path) -> str:
    import numpy as np
    from tqdm import tqdm

    from utils.data import SpeechDataset
    from utils.decoders import check_beam_params, load_scorer
    from utils.evaluate import make_eval_loader, runner_forward
    from utils.inference import load_runner
    from utils.manifest import read_manifest
    from utils.text import reference_text
    from utils.tuning import grid_search_alpha_beta, save_heatmap

    runner = load_runner(folder, cfg.infer.runtime)
    f = runner.cfg.features
    utterances = read_manifest(cfg.data.test_manifest, cfg.data.data_dir)
    utterances = utterances[:cfg.tune.num_utterances] if cfg.tune.num_utterances > 0 else utterances
    if not utterances:
        raise ValueError(f"{cfg.data.test_manifest} holds no utterances; pass --test_manifest=a dev manifest "
                         f"written by create_data.py")
    # the beam parameters and the LM are checked before the acoustic pass, the long part
    check_beam_params(cfg.decode.beam_size, cfg.decode.cutoff_prob, cfg.decode.cutoff_top_n,
                      cfg.decode.num_proc_bsearch)
    if not cfg.tune.alphas or not cfg.tune.betas:
        raise ValueError("--alphas and --betas must each hold at least one value, e.g. --alphas \"[0.5,1,1.5]\"")
    scorer = load_scorer(cfg.decode.lang_model_path, cfg.tune.alphas[0], cfg.tune.betas[0],
                         runner.vocabulary.tokens)
    dataset = SpeechDataset(utterances, runner.vocabulary, f.feature_method, f.sample_rate, f.n_mels)
    forward, probs = runner_forward(runner), {}
    for feats, feat_lens, labels, label_lens, indices in tqdm(make_eval_loader(dataset, cfg.train.batch_size),
                                                              desc="acoustic model", unit="batch"):
        log_probs, out_lens, _ = forward(feats, feat_lens, labels, label_lens)
        for row, index in enumerate(np.asarray(indices)):
            probs[int(index)] = np.exp(log_probs[row, :out_lens[row]])
    alpha, beta, error, grid = grid_search_alpha_beta(
        [probs[i] for i in range(len(utterances))], [reference_text(u.text) for u in utterances], runner.vocabulary.tokens,
        cfg.decode.lang_model_path, cfg.tune.alphas, cfg.tune.betas, cfg.decode.beam_size,
        cfg.decode.cutoff_prob, cfg.decode.cutoff_top_n, cfg.decode.num_proc_bsearch, cfg.train.metrics_type, scorer)
    heatmap = Path(cfg.tune.heatmap_path or folder.parent / f"tune_{folder.name}.png")
    result = (f"best alpha={alpha:g} beta={beta:g} {cfg.train.metrics_type}={error:.6f} on {len(utterances)} "
              f"utterances of {cfg.data.test_manifest}")
    try:
        heatmap.parent.mkdir(parents=True, exist_ok=True)
        save_heatmap(grid, cfg.tune.alphas, cfg.tune.betas, str(heatmap), cfg.train.metrics_type)
    except OSError as err:  # the grid's result is not lost with the picture
        return (f"{result}; no heat map ({heatmap}: {err.strerror}; pass --heatmap_path elsewhere); use "
                f"--alpha={alpha:g} --beta={beta:g}")
    return f"{result}; heat map {heatmap}; use --alpha={alpha:g} --beta={beta:g}"


def main() -> int:
    try:
        from utils.inference import parse_model_args

        cfg, folder = parse_model_args(__doc__, "tune.py", "train.resume_model")
        print(tune(cfg, folder), flush=True)
    except (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

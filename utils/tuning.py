"""Grid search of the beam-search LM weight (alpha) and word bonus (beta), and its heat map.

alpha/beta depend on the acoustic model and the LM together (PPASR's defaults 2.2/4.3 made
a weak model worse here), so tune them on held-out data: compute the posteriors once, then
decode them again for every (alpha, beta) with one scorer whose parameters are reset.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from utils.decoders import (DEFAULT_CUTOFF_PROB, DEFAULT_CUTOFF_TOP_N, DEFAULT_NUM_PROCESSES,
                            beam_search_decode, load_scorer)
from utils.metrics import corpus_error_rate

HEATMAP_CMAP = "viridis_r"  # bright yellow = low error, dark purple = high
HEATMAP_DPI = 120


def grid_search_alpha_beta(probs_list: Sequence[np.ndarray], references: Sequence[str],
                           vocabulary: Sequence[str], lang_model_path: str,
                           alphas: Sequence[float], betas: Sequence[float], beam_size: int,
                           cutoff_prob: float = DEFAULT_CUTOFF_PROB,
                           cutoff_top_n: int = DEFAULT_CUTOFF_TOP_N,
                           num_processes: int = DEFAULT_NUM_PROCESSES,
                           metric: str = "cer", scorer=None) -> tuple[float, float, float, np.ndarray]:
    """Decode probs_list for every (alpha, beta) and score it against references.

    probs_list: one [T_i, V] probability array per utterance; references: their texts.
    Returns (best_alpha, best_beta, best_error, grid [len(alphas), len(betas)]) where the
    grid holds the corpus-level error (metric 'cer' or 'wer'); ties go to the first point.
    scorer: one load_scorer made already (tune.py loads it before the acoustic pass, so a bad
    LM is reported before the long part); else lang_model_path is loaded here.
    """
    if len(probs_list) != len(references):
        raise ValueError(f"{len(probs_list)} posteriors but {len(references)} references")
    if not alphas or not betas:
        raise ValueError("alphas and betas must each hold at least one value")
    if scorer is None:
        scorer = load_scorer(lang_model_path, alphas[0], betas[0], vocabulary)
    grid = np.full((len(alphas), len(betas)), np.nan)  # [A, B]
    best: Optional[tuple[float, float, float]] = None
    progress = tqdm(total=grid.size, desc=f"tuning alpha/beta ({metric})", unit="point")
    for i, alpha in enumerate(alphas):
        for j, beta in enumerate(betas):
            scorer.reset_params(float(alpha), float(beta))
            hyps = beam_search_decode(probs_list, vocabulary, beam_size, cutoff_prob, cutoff_top_n,
                                      num_processes, scorer)
            grid[i, j] = corpus_error_rate(list(references), hyps, metric)
            if best is None or grid[i, j] < best[2]:
                best = (float(alpha), float(beta), float(grid[i, j]))
            progress.update(1)
            progress.set_postfix(best=f"a={best[0]:g} b={best[1]:g} {metric}={best[2]:.4f}")
    progress.close()
    assert best is not None
    return best[0], best[1], best[2], grid


def save_heatmap(grid: np.ndarray, alphas: Sequence[float], betas: Sequence[float],
                 path_png: str, metric: str = "cer") -> None:
    """Draw grid [len(alphas), len(betas)] as an annotated heat map (PNG), best point circled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.asarray(grid, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.8 * len(betas)), max(3.5, 1.5 + 0.6 * len(alphas))))
    image = ax.imshow(grid, cmap=HEATMAP_CMAP, aspect="auto", origin="lower")
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("beta (word bonus)")
    ax.set_ylabel("alpha (LM weight)")
    low, high = np.nanmin(grid), np.nanmax(grid)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            bright = high == low or (grid[i, j] - low) / (high - low) < 0.5  # viridis_r: low is bright
            ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7,
                    color="black" if bright else "white")
    best_i, best_j = np.unravel_index(np.nanargmin(grid), grid.shape)
    ax.scatter([best_j], [best_i], s=300, facecolors="none", edgecolors="red", linewidths=2)
    ax.set_title(f"{metric.upper()} by alpha/beta\nbest {grid[best_i, best_j]:.4f} at "
                 f"alpha={alphas[best_i]:g}, beta={betas[best_j]:g}", fontsize=9)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    partial = Path(str(path_png) + ".part")  # renamed over path_png once whole
    try:
        fig.savefig(partial, dpi=HEATMAP_DPI, format="png")
        os.replace(partial, path_png)
    finally:
        plt.close(fig)
        partial.unlink(missing_ok=True)

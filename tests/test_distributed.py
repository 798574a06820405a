"""Two CPU processes (paddle.distributed.launch, gloo) against one process.

The launched worker is tests/train_fixtures.py: train.py's main() plus a dump of every
rank's final weights (rank 0 alone writes checkpoints) and an optional NaN injection.

Tolerance of "2 processes x batch B == 1 process x batch 2B": the two runs see the same
utterances in every optimizer step (the sampler cuts each global batch of 2B into two
halves), and DataParallel averages the two per-rank mean losses' gradients, which is
the gradient of the 2B mean. What differs is BatchNorm: in training mode it normalizes
with the statistics of the B utterances on its rank instead of all 2B, and each rank
keeps its own running statistics (so only the trainable weights and the normalizer are
compared across ranks). Measured here after 6 steps: the trainable weights of the two
runs differ by 3.3e-3 of their norm, while one process with batch B (other batches,
twice the steps) differs by 6.7e-2, so the bound is 1e-2.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import utils.training as training
from train_fixtures import ROOT, TINY_YAML, model_folder, read_params, relative_diff, spoken_corpus, tiny_config  # noqa
from utils.checkpoint import load_state

TOLERANCE = 1e-2  # relative L2 difference of the trainable weights, see the module docstring
LAUNCH_TIMEOUT_S = 150  # a rank waiting on a collective the other never joins hangs: fail instead
EPOCHS, BATCH = 3, 2  # 8 utterances: 2 steps an epoch with 2 x 2 (or 1 x 4)


def is_running_stat(name: str) -> bool:
    return name.endswith(("._mean", "._variance"))


def trainable(params: dict) -> list[str]:
    return sorted(k for k in params if not is_running_stat(k) and k not in ("feat_mean", "feat_istd"))


def launch(corpus: Path, out: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    args = [f"--configs={TINY_YAML}", f"--train_manifest={corpus / 'manifest.train'}",
            f"--test_manifest={corpus / 'manifest.test'}", f"--dataset_vocab={corpus / 'vocabulary.txt'}",
            f"--mean_std_path={corpus / 'mean_std.npz'}", f"--save_model_path={out / 'models'}",
            f"--log_dir={out / 'log'}", f"--augment_conf_path={ROOT / 'conf' / 'augmentation.json'}",
            f"--batch_size={BATCH}", f"--num_epoch={EPOCHS}", "--log_interval=1000"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    env.update(extra_env or {})
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
               "--log_dir", str(out / "launch_log"), str(ROOT / "tests" / "train_fixtures.py"), str(out / "dump")]
    return subprocess.run(command + args, cwd=out, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def worker_logs(out: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted((out / "launch_log").glob("workerlog.*")))


@pytest.fixture(scope="module")
def two_process_run(spoken_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    done = launch(spoken_corpus, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + worker_logs(out)
    return out


def test_both_ranks_hold_identical_weights(two_process_run):
    out = two_process_run
    rank0, rank1 = (read_params_file(out / "dump" / f"rank{r}.pdparams") for r in (0, 1))
    assert sorted(rank0) == sorted(rank1)
    for name in trainable(rank0) + ["feat_mean", "feat_istd"]:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    # rank 0 wrote the checkpoint, and it holds rank 0's weights
    saved = read_params(out / "models" / "tiny" / "last_model")
    for name in rank0:
        np.testing.assert_array_equal(saved[name], rank0[name], err_msg=name)
    state = load_state(out / "models" / "tiny" / "last_model")
    assert (state.epoch, state.step) == (EPOCHS, EPOCHS * 2)
    log = (out / "models" / "tiny" / "train.log").read_text()
    assert "2 process(es)" in log and f"batch {BATCH} per process" in log
    assert "epoch 3 test:" in (out / "launch_log" / "workerlog.0").read_text()
    assert "test:" not in (out / "launch_log" / "workerlog.1").read_text()  # rank 1 neither logs nor evaluates


def read_params_file(path: Path) -> dict:
    import paddle

    return {k: np.asarray(v.numpy()) for k, v in paddle.load(str(path)).items()}


def test_two_processes_match_one_process_with_double_batch(two_process_run, spoken_corpus, tmp_path):
    two = read_params(two_process_run / "models" / "tiny" / "last_model")
    augmentation = str(ROOT / "conf" / "augmentation.json")
    single = tiny_config(spoken_corpus, tmp_path / "single", data__augment_conf_path=augmentation,
                         train__batch_size=2 * BATCH, train__num_epoch=EPOCHS, train__log_interval=1000)
    training.train(single)
    one = read_params(model_folder(single))
    assert load_state(model_folder(single)).step == EPOCHS * 2
    # control: one process with batch B takes other steps; the tolerance must tell the two apart
    control = tiny_config(spoken_corpus, tmp_path / "control", data__augment_conf_path=augmentation,
                          train__batch_size=BATCH, train__num_epoch=EPOCHS, train__log_interval=1000)
    training.train(control)
    other = read_params(model_folder(control))
    keys = trainable(one)
    difference, control_difference = relative_diff(one, two, keys), relative_diff(one, other, keys)
    print(f"relative difference: 2 x {BATCH} vs 1 x {2 * BATCH}: {difference:.2e}; "
          f"1 x {BATCH} vs 1 x {2 * BATCH}: {control_difference:.2e}")
    assert difference < TOLERANCE < control_difference
    np.testing.assert_array_equal(one["feat_mean"], two["feat_mean"])


def test_a_nan_on_one_rank_is_skipped_on_both(spoken_corpus, tmp_path):
    """Rank 1 alone sees a NaN loss in its second batch: both ranks must skip that step together
    (a rank skipping alone would pair mismatched gradient all-reduces and hang or corrupt)."""
    done = launch(spoken_corpus, tmp_path, {"NAN_RANK": "1", "NAN_CALLS": "2"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + worker_logs(tmp_path)
    state = load_state(tmp_path / "models" / "tiny" / "last_model")
    assert (state.nan_skipped, state.step, state.epoch) == (1, EPOCHS * 2 - 1, EPOCHS)
    rank0, rank1 = (read_params_file(tmp_path / "dump" / f"rank{r}.pdparams") for r in (0, 1))
    for name in trainable(rank0):
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)

"""Training that survives crashes: SIGKILL chaos, the model-folder lock, full disks, interrupted saves."""
from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import paddle
import pytest

from conftest import ROOT
from tools.chaos_train import load_folder, make_synthetic_corpus
from utils import checkpoint
from utils.checkpoint import (CheckpointError, FolderLock, TrainState, copy_checkpoint, finish_epoch_end,
                              is_complete, load_state, recover, remove_checkpoint, save_checkpoint)
from utils.config import parse_args
from utils.model import build_model
from utils.text import Vocabulary

TINY = str(ROOT / "conf" / "tiny.yml")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A synthetic corpus (12 training, 3 test utterances) as train.py overrides."""
    return make_synthetic_corpus(tmp_path_factory.mktemp("corpus"), 12, 3, "fbank", 40)


def train_args(corpus: dict, tmp_path: Path, *extra: str) -> list[str]:
    return (["--configs", TINY, f"--save_model_path={tmp_path / 'models'}", f"--log_dir={tmp_path / 'log'}"]
            + [f"--{k}={v}" for k, v in corpus.items()] + list(extra))


def run_train(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "train.py")] + args, capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, **kwargs)


# ------------------------------------------------------------------ the chaos harness

def test_chaos_kills_lose_nothing_and_end_with_the_uninterrupted_weights(tmp_path):
    """Four SIGKILLs aimed at a save, a folder swap, an evaluation and a step; then the checks."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "chaos_train.py"), "--configs", TINY,
                           "--kills", "4", "--phases", "save,swap,eval,step", "--seed", "3", "--synthetic", "12",
                           "--work_dir", str(tmp_path / "chaos")], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["kills"] == 4 and report["lives"] == 5
    assert report["kills_aimed"] == {"startup": 0, "step": 1, "eval": 1, "save": 1, "swap": 1}
    assert report["corrupt_checkpoints"] == 0, report["corrupt_details"]
    assert report["last_model_torn"] == 0
    assert report["resumed_behind_checkpoint"] == 0 and report["epochs_lost"] == 0
    assert report["final_weights_equal"] is True and report["max_abs_diff"] == 0.0
    assert report["final_state_equal"] and report["best_model_equal"] and report["epoch_folders_equal"]
    # save_step=2: a kill costs at most the batches since the last save, plus the one being saved
    assert len(report["work_lost_batches"]["per_kill"]) == 4
    assert report["work_lost_batches"]["max"] <= 2
    assert report["leftovers_at_end"] == 0
    assert report["curve_points_duplicated"] == 0 and report["curves_equal"]  # VisualDL shows each step once
    print(f"chaos: {time.perf_counter() - started:.1f} s, kills landed in {report['kills_by_phase']}")


# ------------------------------------------------------------------ two trainings, one folder

def _wait_for_lock(lock_file: Path, pid: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_file.is_file() and f"pid {pid}" in lock_file.read_text():
            return
        assert proc.poll() is None, "the first train.py ended before taking the lock"
        time.sleep(0.05)
    raise AssertionError("the first train.py never took the lock")


def test_second_train_py_on_the_same_model_folder_stops_with_a_clear_message(corpus, tmp_path):
    args = train_args(corpus, tmp_path, "--num_epoch=10000", "--save_step=2")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py")] + args, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        model_root = tmp_path / "models" / "tiny"
        _wait_for_lock(model_root / ".lock", first.pid, first)
        second = run_train(args)
        assert second.returncode == 1
        assert f"{model_root} is in use by train.py pid {first.pid}" in second.stderr
        assert "two trainings must not write the same model folder" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first one trains on, undisturbed
        deadline = time.monotonic() + 60
        while not is_complete(model_root / "last_model") and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)  # Ctrl-C / SIGTERM: last_model saved, exit code 130
        assert first.wait(60) == 130
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    state = load_folder(model_root / "last_model")["state"]
    assert state.step >= 2
    third = run_train(args[:-2] + [f"--num_epoch={state.epoch + 1}"])  # the lock died with the first
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"resumed from {model_root / 'last_model'}: epoch {state.epoch}, batch {state.batch_in_epoch}" \
        in third.stdout


def test_folder_lock_in_process(tmp_path):
    with FolderLock(tmp_path / "m"):
        with pytest.raises(CheckpointError, match="is in use by train.py pid"):
            with FolderLock(tmp_path / "m"):
                pass
    with FolderLock(tmp_path / "m"):  # released on exit
        pass


# ------------------------------------------------------------------ full disk, unwritable folder

@pytest.fixture(scope="module")
def parts(tmp_path_factory, corpus):
    """What save_checkpoint needs, for a tiny model."""
    cfg = parse_args("test", None, ["--configs", TINY] + [f"--{k}={v}" for k, v in corpus.items()])
    vocabulary = Vocabulary.load(cfg.data.dataset_vocab)
    paddle.seed(0)
    model = build_model(cfg.model, 40, len(vocabulary))
    optimizer = paddle.optimizer.Adam(parameters=model.parameters())
    loss = model(paddle.randn([2, 30, 40]), paddle.to_tensor([30, 20], dtype="int64"))[0].mean()
    loss.backward()
    optimizer.step()  # so the optimizer has state to save
    return {"model": model, "optimizer": optimizer, "cfg": cfg, "vocabulary": vocabulary,
            "mean_std_path": cfg.data.mean_std_path}


def save(parts: dict, folder: Path, step: int, epoch: int = 0, batch: int = 0, best_epoch: int = -1,
         history: list = (), lineage: list = ()) -> Path:
    state = TrainState(epoch=epoch, batch_in_epoch=batch, step=step, best_epoch=best_epoch, history=list(history),
                       lineage=[list(run) for run in lineage])
    return save_checkpoint(folder, parts["model"], parts["optimizer"], state, parts["cfg"], parts["vocabulary"],
                           parts["mean_std_path"])


def test_disk_full_while_writing_weights_keeps_the_previous_checkpoint(parts, tmp_path, monkeypatch):
    folder = save(parts, tmp_path / "last_model", step=1)
    real_save = paddle.save

    def full_disk(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as handle:  # half the file made it to disk
            handle.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(paddle, "save", full_disk)
    with pytest.raises(CheckpointError) as caught:
        save(parts, folder, step=2)
    message = str(caught.value)
    assert "No space left on device" in message and "the previous last_model is intact" in message
    assert "Free disk space" in message
    assert load_folder(folder)["state"].step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_model"]  # no .tmp- left behind
    with pytest.raises(CheckpointError, match="no epoch_2 was written, and the other checkpoints"):
        save(parts, tmp_path / "epoch_2", step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_model"]


def test_disk_full_while_copying_to_best_model_keeps_the_previous_one(parts, tmp_path, monkeypatch):
    source = save(parts, tmp_path / "epoch_2", step=2)
    best = save(parts, tmp_path / "best_model", step=1)
    real_copy = shutil.copyfile

    def full_disk(src, dst, *args, **kwargs):
        if str(dst).endswith(checkpoint.OPTIMIZER_FILE):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_copy(src, dst, *args, **kwargs)
    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*the previous best_model is intact"):
        copy_checkpoint(source, best)
    assert load_folder(best)["state"].step == 1
    assert not (tmp_path / ".tmp-best_model").exists()


def test_train_py_on_a_full_disk_stops_and_the_last_checkpoint_survives(corpus, tmp_path):
    """A real write error from the kernel (file size limit: EFBIG) in the middle of model.pdparams."""
    first = run_train(train_args(corpus, tmp_path, "--num_epoch=1"))
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "models" / "tiny" / "last_model"
    before = load_folder(last)
    limit = os.path.getsize(last / checkpoint.MODEL_FILE) // 2

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    second = run_train(train_args(corpus, tmp_path, "--num_epoch=2", "--save_step=2"), preexec_fn=small_disk)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    assert "error: could not save checkpoint" in second.stderr and "File too large" in second.stderr
    assert "the previous last_model is intact" in second.stderr and "Traceback" not in second.stderr
    after = load_folder(last)
    assert after["state"] == before["state"] and after["state"].epoch == 1
    assert not list(last.parent.glob(".tmp-*"))
    third = run_train(train_args(corpus, tmp_path, "--num_epoch=2", "--save_step=2"))
    assert third.returncode == 0, third.stderr[-2000:]
    assert "resumed from" in third.stdout and load_state(last).epoch == 2


def test_train_py_with_an_unwritable_models_folder_says_so(corpus, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file where models/ should be\n")
    proc = run_train(train_args(corpus, tmp_path, f"--save_model_path={blocker}"))
    assert proc.returncode == 1
    assert f"error: cannot write the model folder {blocker / 'tiny'}" in proc.stderr
    assert "pass a writable --save_model_path" in proc.stderr and "Traceback" not in proc.stderr


def test_save_into_a_path_under_a_regular_file_is_a_checkpoint_error(parts, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="no last_model was written"):
        save(parts, tmp_path / "file" / "last_model", step=1)


# ------------------------------------------------------------------ a save killed at any point

class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no except OSError catches it."""


def _kill_at(monkeypatch, point: int) -> list:
    """Make the point-th file-system operation of a save die (a partial rmtree deletes one file first)."""
    calls = []

    def counted(name, real):
        def operation(*args, **kwargs):
            calls.append(name)
            if len(calls) == point:
                if name == "rmtree" and Path(args[0]).is_dir() and any(Path(args[0]).iterdir()):
                    next(Path(args[0]).iterdir()).unlink()
                raise Killed(name)
            return real(*args, **kwargs)
        return operation
    monkeypatch.setattr(paddle, "save", counted("paddle.save", paddle.save))
    monkeypatch.setattr(os, "rename", counted("rename", os.rename))
    monkeypatch.setattr(shutil, "rmtree", counted("rmtree", shutil.rmtree))
    monkeypatch.setattr(shutil, "copyfile", counted("copyfile", shutil.copyfile))
    monkeypatch.setattr(checkpoint, "_fsync_dir", counted("fsync_dir", checkpoint._fsync_dir))
    return calls


@pytest.mark.parametrize("operation", ["save", "copy", "prune"])
def test_a_save_killed_at_every_point_recovers_to_old_or_new(parts, tmp_path, operation):
    point, outcomes = 0, set()
    while True:
        point += 1
        root = tmp_path / str(point)
        source = save(parts, root / "epoch_2", step=2)
        save(parts, root / "last_model", step=1)
        with pytest.MonkeyPatch.context() as patch:
            calls = _kill_at(patch, point)
            try:
                if operation == "save":
                    save(parts, root / "last_model", step=2)
                elif operation == "copy":
                    copy_checkpoint(source, root / "last_model")
                else:
                    remove_checkpoint(root / "last_model")
                finished = True
            except Killed:
                finished = False
        for name in os.listdir(root):  # right after the kill: no committed folder is torn
            if not name.startswith(".tmp-") and not (name.startswith(".old-") and (root / name[5:]).exists()):
                load_folder(root / name)
        recover(root)
        assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        if operation == "prune":
            outcomes.add("kept" if (root / "last_model").exists() else "removed")
            if (root / "last_model").exists():
                assert load_folder(root / "last_model")["state"].step == 1
        else:
            outcomes.add(load_folder(root / "last_model")["state"].step)
        assert load_folder(root / "epoch_2")["state"].step == 2
        if finished:
            break
    assert point >= 3 and len(calls) == point - 1
    assert outcomes == ({"kept", "removed"} if operation == "prune" else {1, 2})


def test_train_py_recovers_leftovers_of_a_killed_save(corpus, tmp_path):
    """.old-last_model with last_model missing is put back; .tmp- folders are dropped; training resumes."""
    first = run_train(train_args(corpus, tmp_path, "--num_epoch=1"))
    assert first.returncode == 0, first.stderr[-2000:]
    root = tmp_path / "models" / "tiny"
    os.rename(root / "last_model", root / ".old-last_model")  # killed between the two renames of a swap
    shutil.copytree(root / ".old-last_model", root / ".tmp-last_model")
    (root / ".tmp-last_model" / checkpoint.MODEL_FILE).write_bytes(b"torn")
    (root / ".tmp-epoch_2").mkdir()
    second = run_train(train_args(corpus, tmp_path, "--num_epoch=2"))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "restored last_model from an interrupted save" in second.stdout
    assert "removed unfinished .tmp-last_model" in second.stdout
    assert "removed unfinished .tmp-epoch_2" in second.stdout
    assert f"resumed from {root / 'last_model'}: epoch 1, batch 0" in second.stdout
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["best_model", "epoch_1", "epoch_2",
                                                                       "last_model"]
    assert load_state(root / "last_model").epoch == 2


# ------------------------------------------------------------------ an end of epoch cut short

def test_epoch_end_cut_short_after_epoch_n_is_finished_on_the_next_start(parts, tmp_path):
    """Killed after epoch_2 was written but before last_model and best_model were copied from it."""
    save(parts, tmp_path / "best_model", step=2, epoch=1, best_epoch=0)
    save(parts, tmp_path / "last_model", step=6, epoch=1, batch=2, best_epoch=0)
    save(parts, tmp_path / "epoch_2", step=8, epoch=2, best_epoch=1)
    notes = finish_epoch_end(tmp_path)
    assert notes == ["copied epoch_2 to last_model (the previous run stopped before it did)",
                     "copied epoch_2 to best_model (the previous run stopped before it did)"]
    assert load_state(tmp_path / "last_model").step == 8 and load_state(tmp_path / "best_model").step == 8
    assert finish_epoch_end(tmp_path) == []  # nothing left to do


def test_epoch_end_with_a_worse_epoch_leaves_best_model_alone(parts, tmp_path):
    save(parts, tmp_path / "best_model", step=4, epoch=1, best_epoch=0)
    save(parts, tmp_path / "last_model", step=4, epoch=1, best_epoch=0)
    save(parts, tmp_path / "epoch_2", step=8, epoch=2, best_epoch=0)
    assert finish_epoch_end(tmp_path) == ["copied epoch_2 to last_model (the previous run stopped before it did)"]
    assert load_state(tmp_path / "best_model").step == 4


def test_interrupt_saved_last_model_at_an_epoch_boundary_completes_epoch_and_best(parts, tmp_path):
    """SIGTERM after the evaluation but before epoch_2 was written: last_model already holds epoch 2."""
    save(parts, tmp_path / "epoch_1", step=4, epoch=1, best_epoch=0)
    save(parts, tmp_path / "best_model", step=4, epoch=1, best_epoch=0)
    save(parts, tmp_path / "last_model", step=8, epoch=2, best_epoch=1)
    assert len(finish_epoch_end(tmp_path)) == 2
    assert load_state(tmp_path / "epoch_2").step == 8 and load_state(tmp_path / "best_model").step == 8


def test_mid_epoch_last_model_needs_no_repair(parts, tmp_path):
    save(parts, tmp_path / "epoch_1", step=4, epoch=1, best_epoch=0)
    save(parts, tmp_path / "last_model", step=6, epoch=1, batch=2, best_epoch=0)
    assert finish_epoch_end(tmp_path) == [] and not (tmp_path / "best_model").exists()


def results(*epochs: int, loss: float = 50.0) -> list[dict]:
    """state.history entries of the given (0-based) epochs."""
    return [{"epoch": e, "step": 4 * (e + 1), "test_loss": loss - e, "test_cer": 0.9 - 0.1 * e} for e in epochs]


def test_an_epoch_n_of_another_branch_is_not_taken_even_with_the_same_test_results(parts, tmp_path):
    """Trained 3 epochs (run a), then resumed from epoch_1 (run b, at step 4) and stopped at step 6: the first
    run's epoch_3 is further on and its results start with last_model's, but run b did not come from it."""
    save(parts, tmp_path / "epoch_3", step=12, epoch=3, best_epoch=2, history=results(0, 1, 2), lineage=[["a", 0]])
    save(parts, tmp_path / "best_model", step=12, epoch=3, best_epoch=2, history=results(0, 1, 2),
         lineage=[["a", 0]])
    save(parts, tmp_path / "last_model", step=6, epoch=1, batch=2, best_epoch=0, history=results(0),
         lineage=[["a", 0], ["b", 4]])
    assert finish_epoch_end(tmp_path) == []
    assert load_state(tmp_path / "last_model").step == 6 and load_state(tmp_path / "best_model").step == 12


def test_without_a_lineage_the_test_results_tell_another_branch(parts, tmp_path):
    """The review's case in a folder saved before state.json held a lineage: branched from epoch_1 at another
    learning rate, stopped at step 10 in epoch 3; the old epoch_3 (step 12) has other results for epoch 2."""
    save(parts, tmp_path / "epoch_3", step=12, epoch=3, best_epoch=2, history=results(0, 1, 2))
    save(parts, tmp_path / "last_model", step=10, epoch=2, batch=2, best_epoch=1,
         history=results(0) + results(1, loss=60.0))
    assert finish_epoch_end(tmp_path) == [] and load_state(tmp_path / "last_model").step == 10


def test_an_epoch_n_saved_before_lineages_does_not_continue_a_last_model_with_one(parts, tmp_path):
    """Upgraded, then resumed from the old epoch_3 and stopped mid-epoch before any evaluation: the old
    epoch_5 has the same results so far, but a folder without a lineage never follows one that has it."""
    save(parts, tmp_path / "epoch_3", step=12, epoch=3, best_epoch=2, history=results(0, 1, 2))
    save(parts, tmp_path / "epoch_5", step=20, epoch=5, best_epoch=2, history=results(0, 1, 2))
    save(parts, tmp_path / "last_model", step=14, epoch=3, batch=2, best_epoch=2, history=results(0, 1, 2),
         lineage=[["b", 12]])
    assert finish_epoch_end(tmp_path) == [] and load_state(tmp_path / "last_model").step == 14


def test_an_epoch_n_of_a_run_resumed_from_last_model_is_taken(parts, tmp_path):
    """Run b resumed from last_model (step 6), ended epoch 2 and was killed before copying it: taken. Run c
    resumed from an older checkpoint (step 4) of run a: not, though it is further on."""
    save(parts, tmp_path / "last_model", step=6, epoch=1, batch=2, best_epoch=0, history=results(0),
         lineage=[["a", 0]])
    save(parts, tmp_path / "epoch_2", step=8, epoch=2, best_epoch=0, history=results(0, 1),
         lineage=[["a", 0], ["c", 4]])
    assert finish_epoch_end(tmp_path) == []
    save(parts, tmp_path / "epoch_2", step=8, epoch=2, best_epoch=0, history=results(0, 1),
         lineage=[["a", 0], ["b", 6]])
    assert finish_epoch_end(tmp_path) == ["copied epoch_2 to last_model (the previous run stopped before it did)"]
    assert load_state(tmp_path / "last_model").lineage == [["a", 0], ["b", 6]]


def test_a_last_model_moved_away_is_not_made_again_from_epoch_n(parts, tmp_path):
    save(parts, tmp_path / "epoch_2", step=8, epoch=2, best_epoch=1, history=results(0, 1), lineage=[["a", 0]])
    save(parts, tmp_path / "epoch_3", step=12, epoch=3, best_epoch=1, history=results(0, 1, 2), lineage=[["a", 0]])
    save(parts, tmp_path / "best_model", step=8, epoch=2, best_epoch=1, history=results(0, 1), lineage=[["a", 0]])
    assert finish_epoch_end(tmp_path) == [] and not (tmp_path / "last_model").exists()


def test_killed_at_the_first_epoch_end_before_last_model_existed(parts, tmp_path):
    """The one crash that leaves no last_model: epoch_1 saved, the copy to last_model not made."""
    save(parts, tmp_path / "epoch_1", step=4, epoch=1, best_epoch=-1, lineage=[["a", 0]])
    assert finish_epoch_end(tmp_path) == ["copied epoch_1 to last_model (the previous run stopped before it did)"]
    assert load_state(tmp_path / "last_model").step == 4 and not (tmp_path / "best_model").exists()


def test_an_evaluation_written_to_epoch_n_only_goes_to_last_model_and_best_model(parts, tmp_path):
    """Killed after epoch_2's state.json got the epoch's test result, before last_model's did."""
    save(parts, tmp_path / "best_model", step=4, epoch=1, best_epoch=0, history=results(0), lineage=[["a", 0]])
    save(parts, tmp_path / "last_model", step=8, epoch=2, best_epoch=0, history=results(0), lineage=[["a", 0]])
    save(parts, tmp_path / "epoch_2", step=8, epoch=2, best_epoch=1, history=results(0, 1), lineage=[["a", 0]])
    assert finish_epoch_end(tmp_path) == ["copied epoch_2 to last_model (the previous run stopped before it did)",
                                          "copied epoch_2 to best_model (the previous run stopped before it did)"]
    assert load_state(tmp_path / "last_model").history == results(0, 1)

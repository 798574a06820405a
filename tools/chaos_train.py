"""Chaos test for training: SIGKILL train.py at random moments, restart it, check that nothing is lost.

    python tools/chaos_train.py --configs conf/tiny.yml --kills 10 [--seed 0] [--work_dir DIR]
        [--synthetic 16] [--save_step 2] [--phases save,swap] [--key=value ...]   # the rest goes to train.py
    python tools/chaos_train.py --kills 50      # about 3-4 minutes on 2 CPU cores

First an uninterrupted reference run, then the chaos run in its own model/log folders:
train.py is started, its process group killed with SIGKILL at a seeded random moment,
restarted, and so on until `--kills` kills are done and a last run finishes. Each kill
aims at one phase: `step` (forward/backward/optimizer), `eval` (the per-epoch test
pass), `save` (writing a checkpoint folder, copying one, pruning old ones), `swap` (the
renames that put a written folder in place) or `startup` (imports, recovery, set-up),
and waits a random delay up to that phase's mean duration in the reference run. Where
it actually landed is read back from phase markers: the harness runs train.py's main
through `--child`, which wraps those training functions with markers written to a pipe
and changes nothing else. Aiming: a kill waits until the run has completed one save,
so every restart makes progress.

After every kill: every committed checkpoint folder (epoch_N, last_model, best_model,
or .old-X where a swap was cut short) must load (paddle.load of model.pdparams and
optimizer.pdopt, state.json parses); last_model, once written, is never torn; and the
next run must resume at or after the newest committed checkpoint (no finished epoch,
no saved batch lost). At the end the chaos run's last_model, best_model and epoch_N
folders must equal the reference run's: weights, optimizer state and training state
(CPU, fixed seed, deterministic data order; both runs use OMP_NUM_THREADS=1).

Work lost per kill: the training batches done before the kill that the resumed run
does again (those since the last committed save: at most --save_step, more without it),
and whether an evaluation is redone. The VisualDL curves must show every (tag, step) point
of the reference run once. Without --train_manifest a synthetic corpus (tones
spelling random words, numpy only) is written under the work folder; without
--num_epoch, enough epochs are set for the kills asked. Prints one JSON object (with a
kill_log, one entry per kill); exits 1 when a check failed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.runlog import read_points  # noqa: E402  (after the sys.path line above)

PHASES = ("startup", "step", "eval", "save", "swap")  # swap: the renames that put a written folder in place
PHASE_WEIGHTS = (0.1, 0.3, 0.2, 0.25, 0.15)
CHECKPOINT_NAME = re.compile(r"^(epoch_\d+|last_model|best_model)$")
EVENT_FD_ENV = "CHAOS_EVENT_FD"


# ------------------------------------------------------------------ child: train.py with phase markers

def _install_markers(emit) -> None:
    """Wrap the training functions so that each phase writes `B phase detail` and `E phase detail`."""
    import utils.checkpoint as checkpoint
    import utils.training as training

    def wrap(module, name: str, phase: str, describe) -> None:
        original = getattr(module, name)  # AttributeError if it was renamed: fail loudly, not silently

        def hooked(*args, **kwargs):
            detail = describe(*args)
            emit(f"B {phase} {detail}")
            result = original(*args, **kwargs)
            emit(f"E {phase} {detail}")
            return result
        setattr(module, name, hooked)

    wrap(training, "_train_step", "step", lambda run, *_: f"{run.state.epoch} {run.state.batch_in_epoch} "
                                                          f"{run.state.step}")
    wrap(training, "evaluate", "eval", lambda *_: "test")
    wrap(training, "save_checkpoint", "save", lambda folder, *_: Path(folder).name)
    wrap(training, "copy_checkpoint", "save", lambda source, folder, *_: Path(folder).name)
    wrap(training, "_prune_epochs", "save", lambda *_: "prune")
    wrap(checkpoint, "swap_in", "swap", lambda tmp, folder: Path(folder).name)  # inside a save
    start_from = training._start_from

    def hooked_start(run):
        start_from(run)
        s = run.state
        emit(f"R {s.epoch} {s.batch_in_epoch} {s.step} {len(run.sampler)} {len(s.history)}")
    training._start_from = hooked_start


def _child_main(train_args: list[str]) -> int:
    """Run train.py's main with phase markers written to the harness's pipe."""
    fd = int(os.environ[EVENT_FD_ENV])
    _install_markers(lambda text: os.write(fd, (text + "\n").encode()))
    sys.argv = [str(ROOT / "train.py")] + train_args
    import train

    code = train.main()
    if code == 0:
        os.write(fd, b"DONE\n")
    return code


# ------------------------------------------------------------------ a synthetic corpus

def make_synthetic_corpus(out_dir: Path, num_train: int, num_test: int, feature_method: str, n_mels: int,
                          seed: int = 0) -> dict:
    """Tones spelling random words over 'abcde', 16 kHz; returns train.py overrides for its files."""
    import numpy as np
    import soundfile

    from utils.features import FeatureStats, compute_features, feature_dim, save_mean_std
    from utils.manifest import Utterance, write_manifest
    from utils.text import Vocabulary

    rng, rate, letters = np.random.default_rng(seed), 16000, "abcde"
    tone_t = np.arange(int(0.08 * rate)) / rate
    utterances, stats = [], FeatureStats(feature_dim(feature_method, rate, n_mels))
    for i in range(num_train + num_test):
        words = ["".join(rng.choice(list(letters), rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
        text = " ".join(words)
        pieces = [np.zeros_like(tone_t) if c == " " else 0.3 * np.sin(2 * np.pi * (300 + 150 * letters.index(c))
                                                                         * tone_t) for c in text]
        samples = np.concatenate(pieces + [np.zeros(rate // 10)])
        samples = (samples + 0.01 * rng.standard_normal(len(samples))).astype(np.float32)
        path = out_dir / "audio" / f"{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), samples, rate, subtype="PCM_16")
        utterances.append(Utterance(str(path), len(samples) / rate, text))
        if i < num_train:
            stats.add(compute_features(samples, feature_method, rate, n_mels))
    write_manifest(out_dir / "manifest.train", utterances[:num_train])
    write_manifest(out_dir / "manifest.test", utterances[num_train:])
    Vocabulary.build(u.text for u in utterances[:num_train]).save(out_dir / "vocabulary.txt")
    mean, std = stats.mean_std()
    save_mean_std(out_dir / "mean_std.npz", mean, std, feature_method, rate, n_mels)
    return {"train_manifest": str(out_dir / "manifest.train"), "test_manifest": str(out_dir / "manifest.test"),
            "dataset_vocab": str(out_dir / "vocabulary.txt"), "mean_std_path": str(out_dir / "mean_std.npz"),
            "noise_manifest": str(out_dir / "manifest.noise"), "min_duration": 0.0}


# ------------------------------------------------------------------ one life of train.py

class Life:
    """One train.py process: its phase events (time, words) as they arrive on the pipe."""

    def __init__(self, train_args: list[str], output, threads: int):
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, **{EVENT_FD_ENV: str(write_fd), "OMP_NUM_THREADS": str(threads),
                                  "PYTHONUNBUFFERED": "1"})
        self.start = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child"] + train_args,
                                     stdout=output, stderr=subprocess.STDOUT, env=env, pass_fds=(write_fd,),
                                     start_new_session=True)
        os.close(write_fd)
        self.fd, self.buffer, self.events = read_fd, b"", []
        self.resumed_at = None  # (epoch, batch_in_epoch, step, batches_per_epoch, history_len)
        self.last_step = None  # (epoch, batch_in_epoch, finished)
        self.saves_done, self.done = 0, False
        self.eval_epoch = None  # epoch of the last evaluation begun
        self.stack, self.last_closed = [], ""  # open phases [(phase, detail)], innermost last

    def poll(self, timeout: float) -> list[tuple[float, list[str]]]:
        """Events that arrived within timeout seconds ([] on timeout); [] and closed at EOF."""
        if self.fd is None:
            return []
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return []
        chunk, now = os.read(self.fd, 65536), time.perf_counter()
        if not chunk:
            os.close(self.fd)
            self.fd = None
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        new = [(now - self.start, line.decode().split()) for line in lines if line]
        for _, words in new:
            self._track(words)
        self.events.extend(new)
        return new

    def _track(self, words: list[str]) -> None:
        if words[0] == "R":
            self.resumed_at = tuple(int(w) for w in words[1:6])
        elif words[0] == "B":
            self.stack.append((words[1], " ".join(words[2:])))
            if words[1] == "step":
                self.last_step = (int(words[2]), int(words[3]), False)
            if words[1] == "eval":
                self.eval_epoch = self.last_step[0] if self.last_step else self.resumed_at[0]
        elif words[0] == "E":
            phase, detail = self.stack.pop()
            self.last_closed = f"after {phase} {detail}".strip()
            if phase == "step":
                self.last_step = self.last_step[:2] + (True,)
            if phase == "save" and detail != "prune":
                self.saves_done += 1
        elif words[0] == "DONE":
            self.done = True

    @property
    def open_phase(self) -> str:
        if self.stack:
            return self.stack[-1][0]
        return "done" if self.done else "loop" if self.resumed_at else "startup"

    @property
    def open_detail(self) -> str:
        return " ".join(self.stack[-1]) if self.stack else self.last_closed

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: train.py and any loader workers
        except ProcessLookupError:
            pass

    def finish(self, timeout: float) -> int:
        """Wait for exit and read every marker it wrote; returns the exit code."""
        code = self.proc.wait(timeout)
        while self.fd is not None:
            self.poll(1.0)
        return code

    def completed_batches(self, batches_per_epoch: int) -> int | None:
        """Absolute batches trained when the process died (None: no step ran in this life)."""
        if self.last_step is None:
            return None
        epoch, batch, finished = self.last_step
        return epoch * batches_per_epoch + batch + (1 if finished else 0)


# ------------------------------------------------------------------ checking the model folder

def load_folder(folder: Path) -> dict:
    """Load everything a resume would load; raises on anything torn or unreadable."""
    import paddle

    from utils.checkpoint import MODEL_FILE, OPTIMIZER_FILE, is_complete, load_state

    if not folder.is_dir():
        raise ValueError(f"{folder} is missing")
    if not is_complete(folder) or not (folder / OPTIMIZER_FILE).is_file():
        raise ValueError(f"{folder.name} is incomplete: {sorted(p.name for p in folder.iterdir())}")
    return {"model": paddle.load(str(folder / MODEL_FILE)), "optimizer": paddle.load(str(folder / OPTIMIZER_FILE)),
            "state": load_state(folder)}


def inspect_model_root(model_root: Path) -> dict:
    """Committed checkpoints (what a restart will see after recovery) and the leftovers of a cut save."""
    found = {"folders": {}, "corrupt": [], "tmp_left": 0, "old_left": 0}
    if not model_root.is_dir():
        return found
    names = {p.name for p in model_root.iterdir()}
    for name in sorted(names):
        if name.startswith(".tmp-"):
            found["tmp_left"] += 1
            continue
        committed = name
        if name.startswith(".old-"):
            found["old_left"] += 1
            committed = name[len(".old-"):]
            if committed in names:
                continue  # the new one is in place; recovery drops the old one
        if not CHECKPOINT_NAME.match(committed):
            continue
        try:
            state = load_folder(model_root / name)["state"]
            found["folders"][committed] = (state.epoch, state.batch_in_epoch, state.step)
        except Exception as err:  # noqa: BLE001 - any failure to load is what we count
            found["corrupt"].append(f"{name}: {type(err).__name__}: {err}")
    return found


def flatten(value, prefix: str = "") -> dict:
    """Nested state dicts -> {"a/b": leaf}, tensors as numpy arrays."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/"): value.numpy() if hasattr(value, "numpy") else value}


def compare_folders(a: Path, b: Path) -> dict:
    """Max abs difference of weights and optimizer state, and whether the training states agree."""
    import numpy as np

    try:
        left, right = load_folder(a), load_folder(b)
    except ValueError as err:
        return {"equal": False, "max_abs_diff": None, "state_equal": False, "error": str(err)}
    diff, same_keys = 0.0, True
    for part in ("model", "optimizer"):
        fa, fb = flatten(left[part]), flatten(right[part])
        same_keys &= fa.keys() == fb.keys()
        for key in fa.keys() & fb.keys():
            x, y = fa[key], fb[key]
            if not isinstance(x, np.ndarray) and not isinstance(y, np.ndarray):
                same_keys &= x == y
                continue
            x, y = np.asarray(x), np.asarray(y)
            if x.shape == y.shape and x.dtype.kind in "fiub" and y.dtype.kind in "fiub":
                diff = max(diff, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
            else:
                same_keys &= bool(np.array_equal(x, y))
    keys = ("epoch", "batch_in_epoch", "step", "best_metric", "best_epoch", "history", "nan_skipped")
    state_equal = all(getattr(left["state"], k) == getattr(right["state"], k) for k in keys)
    return {"equal": same_keys and diff == 0.0 and state_equal, "max_abs_diff": diff, "state_equal": state_equal}


# ------------------------------------------------------------------ the runs

def run_reference(train_args: list[str], output, threads: int, timeout: float) -> dict:
    """One uninterrupted run; returns the mean duration of each phase and the batches per epoch."""
    life = Life(train_args, output, threads)
    deadline = time.perf_counter() + timeout
    while life.fd is not None and time.perf_counter() < deadline:
        life.poll(1.0)
    if life.fd is not None:
        life.kill()
    code = life.finish(30)
    if code != 0 or life.resumed_at is None:
        raise RuntimeError(f"the reference run failed (exit code {code}); see {output.name}")
    durations: dict[str, list[float]] = {phase: [] for phase in PHASES}
    opened: dict[str, float] = {}
    for at, words in life.events:
        if words[0] == "R":
            durations["startup"].append(at)
        elif words[0] == "B":
            opened[words[1]] = at
        elif words[0] == "E" and words[1] in opened:
            durations[words[1]].append(at - opened.pop(words[1]))
    mean = {p: (sum(d) / len(d) if d else 0.01) for p, d in durations.items()}
    return {"mean_seconds": mean, "batches_per_epoch": life.resumed_at[3], "counts": {p: len(d) for p, d in
                                                                                     durations.items()}}


class KillPlan:
    """Where to kill the next life: a phase, which occurrence of it, and a delay into it."""

    def __init__(self, rng: random.Random, mean_seconds: dict, phase: str | None = None):
        self.phase = phase or rng.choices(PHASES, PHASE_WEIGHTS)[0]
        self.skip = rng.randint(0, 2) if self.phase in ("step", "save", "swap") else 0
        self.delay = rng.uniform(0.0, mean_seconds[self.phase])
        self.seen, self.fire_at = 0, None

    def update(self, life: Life, new_events: list) -> None:
        """Arm the kill once its phase begins (for phases after start-up: after one save of this life)."""
        if self.fire_at is not None:
            return
        if self.phase == "startup":
            self.fire_at = life.start + self.delay
            return
        for _, words in new_events:
            if words[0] == "B" and words[1] == self.phase and life.saves_done >= 1:
                self.seen += 1
                if self.seen > self.skip:
                    self.fire_at = time.perf_counter() + self.delay
                    return


def wait_exact(moment: float) -> None:
    remaining = moment - time.perf_counter()
    if remaining > 0.002:
        time.sleep(remaining - 0.001)
    while time.perf_counter() < moment:
        pass


def run_life(train_args: list[str], output, threads: int, plan: KillPlan | None, timeout: float) -> tuple:
    """Start train.py, kill it as planned; returns (life, exit code, killed)."""
    life = Life(train_args, output, threads)
    deadline = life.start + timeout
    while life.fd is not None:
        now = time.perf_counter()
        if now > deadline:
            life.kill()
            raise RuntimeError(f"train.py ran past {timeout:.0f} s; killed it")
        if plan is not None and plan.fire_at is not None and plan.fire_at - now < 0.05:
            wait_exact(plan.fire_at)
            life.kill()
            return life, life.finish(30), True
        wait = 0.5 if plan is None or plan.fire_at is None else max(0.0, plan.fire_at - now - 0.02)
        new = life.poll(min(wait, 0.5))
        if plan is not None:
            plan.update(life, new)
    return life, life.finish(30), False


def check_after_kill(model_root: Path, report: dict, history: dict) -> None:
    """Integrity right after a kill: every committed folder loads, last_model is whole once written."""
    found = inspect_model_root(model_root)
    report["corrupt_checkpoints"] += len(found["corrupt"])
    report["corrupt_details"].extend(found["corrupt"])
    report["leftovers_after_kill"]["tmp"] += found["tmp_left"]
    report["leftovers_after_kill"]["old"] += found["old_left"]
    if history["last_model_written"] and "last_model" not in found["folders"]:
        report["last_model_torn"] += 1
    history["last_model_written"] |= "last_model" in found["folders"]
    nb = history["batches_per_epoch"]
    committed = max([e * nb + b for e, b, _ in found["folders"].values()], default=0)
    report["checkpoints_went_back"] += committed < history["committed"]  # a committed save vanished
    history["committed"] = max(committed, history["committed"])
    history["committed_epochs"] = max([e for e, _, _ in found["folders"].values()] + [history["committed_epochs"]])


def new_report(kills: int) -> dict:
    return {"kills": 0, "kills_requested": kills, "lives": 0, "resumes": 0,
            "kills_by_phase": {p: 0 for p in PHASES + ("loop",)}, "kills_aimed": {p: 0 for p in PHASES},
            "leftovers_after_kill": {"tmp": 0, "old": 0}, "corrupt_checkpoints": 0, "corrupt_details": [],
            "last_model_torn": 0, "checkpoints_went_back": 0, "resumed_behind_checkpoint": 0, "epochs_lost": 0,
            "kill_log": []}


def check_resume(life: Life, report: dict, history: dict, pending: dict | None) -> None:
    """The run must resume at or after the newest committed checkpoint; settles the last kill's lost work."""
    nb = history["batches_per_epoch"]
    epoch, batch, step = life.resumed_at[:3]
    report["resumes"] += (epoch, batch, step) != (0, 0, 0)
    resumed = epoch * nb + batch
    report["resumed_behind_checkpoint"] += resumed < history["committed"]
    report["epochs_lost"] += epoch < history["committed_epochs"]
    if pending is not None:
        pending.update(resumed_at=resumed, lost=max(0, pending["batches_done"] - resumed))
        eval_epoch = pending.pop("eval_epoch", None)
        pending["eval_redone"] = eval_epoch is not None and epoch <= eval_epoch


def chaos_run(args, train_args: list[str], reference: dict, output) -> dict:
    rng, report = random.Random(args.seed), new_report(args.kills)
    nb = reference["batches_per_epoch"]
    history = {"last_model_written": False, "batches_per_epoch": nb, "committed": 0, "committed_epochs": 0}
    pending = None  # the kill whose lost work the next resume tells
    while True:
        aim = args.phases[report["kills"] % len(args.phases)] if args.phases else None
        plan = KillPlan(rng, reference["mean_seconds"], aim) if report["kills"] < args.kills else None
        life, code, killed = run_life(train_args, output, args.threads, plan, args.life_timeout)
        report["lives"] += 1
        if life.resumed_at is not None:
            check_resume(life, report, history, pending)
            pending = None
        if not killed:
            if code != 0:
                raise RuntimeError(f"train.py exited with code {code} without being killed; see {output.name}")
            return report
        report["kills"] += 1
        report["kills_aimed"][plan.phase] += 1
        report["kills_by_phase"][life.open_phase if life.open_phase in report["kills_by_phase"] else "loop"] += 1
        entry = {"aimed": plan.phase, "landed": life.open_phase, "in": life.open_detail}
        if life.resumed_at is None:  # killed before training began: no batch of this life to lose
            entry["lost"] = 0
        else:
            done = life.completed_batches(nb)
            entry["batches_done"] = done if done is not None else life.resumed_at[0] * nb + life.resumed_at[1]
            entry["eval_epoch"] = life.eval_epoch
            pending = entry
        report["kill_log"].append(entry)
        check_after_kill(Path(args.chaos_root), report, history)


def final_checks(args, report: dict) -> None:
    ref_root, chaos_root = Path(args.reference_root), Path(args.chaos_root)
    found = inspect_model_root(chaos_root)
    report["corrupt_checkpoints"] += len(found["corrupt"])
    report["corrupt_details"].extend(found["corrupt"])
    report["leftovers_at_end"] = found["tmp_left"] + found["old_left"]
    last = compare_folders(ref_root / "last_model", chaos_root / "last_model")
    best = compare_folders(ref_root / "best_model", chaos_root / "best_model")
    report["final_weights_equal"] = last["equal"]
    report["max_abs_diff"] = last["max_abs_diff"]
    report["final_state_equal"] = last["state_equal"]
    report["best_model_equal"] = best["equal"]
    ref_epochs = sorted(p.name for p in ref_root.glob("epoch_*"))
    report["epoch_folders_equal"] = ref_epochs == sorted(p.name for p in chaos_root.glob("epoch_*")) and all(
        compare_folders(ref_root / n, chaos_root / n)["equal"] for n in ref_epochs)
    ref_points, chaos_points = read_points(args.reference_log), read_points(args.chaos_log)
    report["curve_points_duplicated"] = len(chaos_points) - len(set(chaos_points))
    report["curves_equal"] = sorted(set(chaos_points)) == sorted(ref_points)  # same (tag, step) points
    lost = [entry.get("lost", 0) for entry in report["kill_log"]]
    report["work_lost_batches"] = {"per_kill": lost, "mean": round(sum(lost) / len(lost), 2) if lost else 0.0,
                                   "max": max(lost, default=0), "total": sum(lost)}
    report["work_lost_evals"] = sum(bool(entry.get("eval_redone")) for entry in report["kill_log"])
    report["ok"] = (report["corrupt_checkpoints"] == 0 and report["last_model_torn"] == 0
                    and report["checkpoints_went_back"] == 0
                    and report["resumed_behind_checkpoint"] == 0 and report["epochs_lost"] == 0
                    and report["final_weights_equal"] and report["best_model_equal"]
                    and report["epoch_folders_equal"] and report["kills"] == args.kills
                    and report["curve_points_duplicated"] == 0 and report["curves_equal"])


# ------------------------------------------------------------------ command line

def parse(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="conf/tiny.yml", help="train.py config")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs to deliver")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--work_dir", default=None, help="folder for corpus, models and logs (default: a temp dir)")
    parser.add_argument("--synthetic", type=int, default=16, help="training utterances of the synthetic corpus")
    parser.add_argument("--save_step", type=int, default=2, help="train.py --save_step unless given")
    parser.add_argument("--phases", type=lambda text: text.split(","), default=None,
                        help=f"aim the kills at these phases in turn, e.g. save,swap (of {','.join(PHASES)}; "
                             f"default: seeded random)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of train.py")
    parser.add_argument("--life_timeout", type=float, default=600.0, help="seconds one train.py run may take")
    return parser.parse_known_args(argv)


def build_train_args(args, overrides: list[str], work: Path) -> tuple[list[str], list[str]]:
    """train.py arguments for the reference and the chaos run (same except the folders)."""
    from utils.config import parse_args

    given = {a[2:].split("=", 1)[0].split(".")[-1] for a in overrides if a.startswith("--")}
    extra = [] if "save_step" in given else [f"--save_step={args.save_step}"]
    cfg = parse_args("chaos", "conf/deepspeech2.yml", ["--configs", args.configs] + overrides + extra)
    if "train_manifest" not in given:
        corpus = make_synthetic_corpus(work / "corpus", args.synthetic, max(2, args.synthetic // 4),
                                       cfg.features.feature_method, cfg.features.n_mels)
        extra += [f"--{k}={v}" for k, v in corpus.items()]
        cfg = parse_args("chaos", "conf/deepspeech2.yml", ["--configs", args.configs] + overrides + extra)
    if "num_epoch" not in given:  # enough saves that every kill still leaves training to do
        with open(cfg.data.train_manifest, encoding="utf-8") as handle:
            batches = math.ceil(sum(1 for line in handle if line.strip()) / cfg.train.batch_size)
        batches = min(batches, cfg.train.num_iters_per_epoch or batches)
        saves_per_epoch = batches // max(1, cfg.train.save_step) + 1 if cfg.train.save_step else 1
        extra.append(f"--num_epoch={max(cfg.train.num_epoch, math.ceil(2.5 * args.kills / saves_per_epoch))}")
    base = ["--configs", args.configs] + overrides + extra
    ref = base + [f"--save_model_path={work / 'reference' / 'models'}", f"--log_dir={work / 'reference' / 'log'}"]
    chaos = base + [f"--save_model_path={work / 'chaos' / 'models'}", f"--log_dir={work / 'chaos' / 'log'}"]
    args.reference_root = str(work / "reference" / "models" / cfg.train.use_model)
    args.chaos_root = str(work / "chaos" / "models" / cfg.train.use_model)
    args.reference_log = str(work / "reference" / "log" / cfg.train.use_model)
    args.chaos_log = str(work / "chaos" / "log" / cfg.train.use_model)
    return ref, chaos


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    args, overrides = parse(argv)
    if set(args.phases or []) - set(PHASES):
        raise SystemExit(f"error: --phases takes {','.join(PHASES)}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="chaos_train_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ref_args, chaos_args = build_train_args(args, overrides, work)
    for root in (args.reference_root, args.chaos_root):
        if Path(root).exists():
            raise SystemExit(f"error: {root} exists; pass an empty --work_dir")
    started = time.perf_counter()
    with open(work / "reference.log", "ab") as output:
        reference = run_reference(ref_args, output, args.threads, args.life_timeout)
    reference_seconds = time.perf_counter() - started
    with open(work / "chaos.log", "ab") as output:
        report = chaos_run(args, chaos_args, reference, output)
    final_checks(args, report)
    report.update(reference_seconds=round(reference_seconds, 1),
                  chaos_seconds=round(time.perf_counter() - started - reference_seconds, 1),
                  phase_mean_seconds={k: round(v, 4) for k, v in reference["mean_seconds"].items()},
                  batches_per_epoch=reference["batches_per_epoch"], work_dir=str(work))
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

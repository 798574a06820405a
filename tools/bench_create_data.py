"""Benchmark create_data: throughput and peak memory, against bare soundfile reading. Prints JSON.

On a generated corpus (numpy noise and tones written with soundfile; utterances are
symlinks to a few hundred distinct files) it measures, in one run:
- create_data's throughput in audio-hours per wall-hour per core (target >= 500) and per
  CPU-hour, run in a fresh process like `python create_data.py`;
- the bare cost of reading every utterance with soundfile.read in one process, and the
  ratio of the two walls;
- peak memory (ru_maxrss of the process and of its largest worker) with 1k, 10k and 100k
  manifest lines (audio repeats, statistics sample fixed), to show memory does not grow
  with the manifest beyond the manifest itself.

    python tools/bench_create_data.py [--utterances 3000] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as create_data.py does
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 1.0, 4.0
WORDS = "the quick brown fox jumps over a lazy dog while seven pale kings sing of rain".split()
TARGET_HOURS_PER_CORE = 500.0
MEMORY_LINES = (1000, 10000, 100000)  # --memory_lines changes them (the tests use fewer)
MEMORY_NUM_SAMPLES = 200  # the statistics sample is bounded; both memory runs decode the same amount
KIB = 1024.0


def write_unique_audio(folder: Path, count: int, seed: int) -> list[tuple[Path, float]]:
    """`count` wav files of noise plus a tone, 1-4 s; returns (path, seconds)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        seconds = round(float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), 3)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        samples = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        path = folder / f"u{index:05d}.wav"
        soundfile.write(str(path), samples.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        files.append((path, seconds))
    return files


def write_corpus(folder: Path, unique: list[tuple[Path, float]], lines: int, link: bool,
                 seed: int) -> tuple[Path, list[Path], float]:
    """A MASR list of `lines` utterances over the unique files (symlinks when `link`, else repeats)."""
    rng = np.random.default_rng(seed)
    links = folder / "links"
    links.mkdir(parents=True, exist_ok=True)
    paths, rows, seconds = [], [], 0.0
    for index in range(lines):
        source, duration = unique[index % len(unique)]
        path = source
        if link:
            path = links / f"l{index:06d}.wav"
            if not path.exists():
                path.symlink_to(source)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))
        rows.append(f"{path}\t{text}\n")
        paths.append(path)
        seconds += duration
    listing = folder / f"list_{lines}.txt"
    listing.write_text("".join(rows), encoding="utf-8")
    return listing, paths, seconds / 3600.0


def bare_read(paths: list[Path]) -> float:
    """Seconds to read every file with soundfile in this process."""
    start = time.perf_counter()
    for path in paths:
        soundfile.read(str(path), dtype="float32")
    return time.perf_counter() - start


def measure(listing: Path, out: Path, workers: int, num_samples: int) -> dict:
    """Run create_data in a fresh process; its wall, CPU and peak memory."""
    args = [sys.executable, __file__, "--_measure", str(listing), str(out), str(workers), str(num_samples)]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"create_data failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["process_wall_s"] = round(wall, 3)
    return report


def measured_run(listing: str, out: str, workers: int, num_samples: int) -> None:
    """Inside the fresh process: create_data on `listing`, then one JSON line of figures."""
    from utils.config import Config
    from utils.data_prep import create_data

    cfg = Config()
    cfg.prep.annotation_path, cfg.prep.manifest_prefix = listing, f"{out}/manifest"
    cfg.prep.noise_dir, cfg.prep.resampled_dir = f"{out}/no_noise", f"{out}/resampled"
    cfg.prep.num_samples, cfg.data.num_workers = num_samples, workers
    cfg.data.dataset_vocab, cfg.data.mean_std_path = f"{out}/vocabulary.txt", f"{out}/mean_std.npz"
    start = time.perf_counter()
    summary = create_data(cfg)
    call = time.perf_counter() - start
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"call_wall_s": round(call, 3), "summary": summary.line(),
                      "cpu_s": round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 3),
                      "maxrss_mb_process": round(own.ru_maxrss / KIB, 1),
                      "maxrss_mb_largest_worker": round(kids.ru_maxrss / KIB, 1),
                      "manifest_mb": round(Path(f"{out}/manifest.train").stat().st_size / KIB / KIB, 2)}))


def throughput(tmp: Path, unique: list, utterances: int, workers: int) -> dict:
    listing, paths, hours = write_corpus(tmp / "speed", unique, utterances, link=True, seed=1)
    bare_read(paths[: len(unique)])  # warm the page cache for both contestants
    bare_s = bare_read(paths)
    run = measure(listing, tmp / "speed_out", workers, num_samples=-1)
    per_wall_hour = hours / (run["process_wall_s"] / 3600.0)
    return {
        "audio_hours": round(hours, 3), "utterances": utterances, "workers": workers,
        "create_data": {**run, "audio_hours_per_wall_hour": round(per_wall_hour, 1),
                        "audio_hours_per_wall_hour_per_core": round(per_wall_hour / workers, 1),
                        "audio_hours_per_cpu_hour": round(hours / (run["cpu_s"] / 3600.0), 1)},
        "bare_soundfile_read": {"wall_s": round(bare_s, 3),
                                "audio_hours_per_wall_hour": round(hours / (bare_s / 3600.0), 1)},
        "ratio_create_data_wall_to_bare_read": round(run["process_wall_s"] / bare_s, 2),
        "target_met": per_wall_hour / workers >= TARGET_HOURS_PER_CORE,
    }


def memory(tmp: Path, unique: list, workers: int, counts: tuple = MEMORY_LINES) -> dict:
    runs = {}
    for lines in counts:
        listing, _, _ = write_corpus(tmp / "memory", unique, lines, link=False, seed=2)
        run = measure(listing, tmp / f"memory_out_{lines}", workers, MEMORY_NUM_SAMPLES)
        runs[f"lines_{lines}"] = {k: run[k] for k in ("maxrss_mb_process", "maxrss_mb_largest_worker",
                                                       "manifest_mb", "process_wall_s")}
    small, large = runs[f"lines_{counts[0]}"], runs[f"lines_{counts[-1]}"]
    runs["growth_mb_process"] = round(large["maxrss_mb_process"] - small["maxrss_mb_process"], 1)
    runs["growth_mb_largest_worker"] = round(large["maxrss_mb_largest_worker"] - small["maxrss_mb_largest_worker"], 1)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=3000, help="utterances in the throughput corpus")
    parser.add_argument("--unique", type=int, default=300, help="distinct audio files behind them")
    parser.add_argument("--memory_lines", type=lambda text: tuple(int(n) for n in text.split(",")),
                        default=MEMORY_LINES, help="manifest sizes of the memory runs, comma-separated")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="create_data workers")
    parser.add_argument("--_measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        listing, out, workers, num_samples = args._measure
        measured_run(listing, out, int(workers), int(num_samples))
        return
    with tempfile.TemporaryDirectory(prefix="bench_create_data_") as tmp_name:
        tmp = Path(tmp_name)
        unique = write_unique_audio(tmp / "audio", args.unique, seed=0)
        report = {"throughput": throughput(tmp, unique, args.utterances, args.workers),
                  "memory": memory(tmp, unique, args.workers, args.memory_lines), "cpu_count": os.cpu_count()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

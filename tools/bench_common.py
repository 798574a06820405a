"""Shared helpers of the benchmarks in tools/ (bench_train, bench_decode, bench_all).

- Timing: `summarize` gives min/median/max/mean of repeats; `timed` runs a function with
  warm-up and repeats; `median_interval` bounds the median of repeats and `interval_says`
  tells whether that bound settles a "<= limit" target or leaves it to the host's noise.
- Machine: CPU model (/proc/cpuinfo), usable cores, load average, thread settings
  (OMP_NUM_THREADS, MKL_DEBUG_CPU_TYPE, OPENBLAS_NUM_THREADS), versions, date.
- Threads: `configure_threads` sets the thread variables of a worker process before numpy
  or Paddle load (both read them at load time, so each setting needs its own process);
  `run_json` starts such a worker and reads the JSON it prints.
- GEMM roof: float32 matmul GFLOP/s with numpy (OpenBLAS) and with paddle (MKL).
- Corpus: the benchmark corpus (reuse the demo corpus, generate one with espeak-ng, or a
  synthetic tone corpus for the tests) and a duration-filtered subset of it.

This module imports neither numpy nor Paddle nor the toolkit at load time, so a worker
can still choose its thread settings after importing it. Reports go to stdout as JSON;
progress goes to stderr.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BASE_ENV = dict(os.environ)  # before the toolkit sets its thread defaults: what children start from
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "OMP_WAIT_POLICY", "KMP_BLOCKTIME")
GEMM_SIZE = 2048
SAMPLE_RATE = 16000
FRAME_SECONDS = 0.01  # feature hop: frames * FRAME_SECONDS = audio seconds


# ----------------------------------------------------------------------------- output
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr():
    """Library prints (training log lines) go to stderr, so stdout holds only the JSON report."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def emit(report: dict) -> None:
    print(json.dumps(report, indent=2, default=_jsonable), flush=True)


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def rounded(value: float | None, digits: int = 4) -> float | None:
    """`digits` significant digits; None, NaN and infinities as they are."""
    if value is None:
        return None
    return float(f"{value:.{digits}g}") if value == value and abs(value) != float("inf") else value


# ----------------------------------------------------------------------------- timing
def summarize(values, digits: int = 4) -> dict:
    """min/median/max/mean and the count of a list of numbers."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0}
    return {"min": rounded(min(values), digits), "median": rounded(statistics.median(values), digits),
            "max": rounded(max(values), digits), "mean": rounded(statistics.fmean(values), digits),
            "n": len(values)}


MEDIAN_INTERVAL_LEVEL = 0.9


def median_interval(values, level: float = MEDIAN_INTERVAL_LEVEL) -> dict:
    """A distribution-free interval for the median of independent repeats: the k-th smallest and
    the k-th largest value, k the largest whose coverage 1 - 2 P(Binomial(n, 1/2) < k) is at least
    `level`. With too few repeats for that level, min and max; `coverage` says what it is."""
    values = sorted(float(v) for v in values)
    n = len(values)
    if not n:
        return {"n": 0}

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return {"low": rounded(values[k - 1]), "high": rounded(values[n - k]), "coverage": rounded(coverage(k), 3),
            "n": n}


def interval_says(interval: dict, limit: float) -> str:
    """For a "<= limit" target: "met" when all of the median's interval is at or below the limit,
    "not met" when all of it is above, else "undecided" (the repeats cannot tell on this host)."""
    if interval["high"] <= limit:
        return "met"
    return "not met" if interval["low"] > limit else "undecided"


def timed(function, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of `repeats` calls of function() after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def ratio(a: float, b: float) -> float:
    return rounded(a / b) if b else float("nan")


# ----------------------------------------------------------------------------- machine
def _cpuinfo(key: str) -> str | None:
    """The first value of `key` in /proc/cpuinfo (None when absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for GEMM speed."""
    flags = set((_cpuinfo("flags") or "").split())
    return sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile"})


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_settings() -> dict:
    """The thread variables of this process (None: unset)."""
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def machine_info() -> dict:
    info = {"cpu_model": cpu_model(), "cpu_vendor": _cpuinfo("vendor_id"),
            "cpu_family_model": f"{_cpuinfo('cpu family')}/{_cpuinfo('model')}", "cpu_flags": cpu_flags(),
            "logical_cpus": os.cpu_count(), "usable_cores": usable_cores(), "load_average_1_5_15": load_average(),
            "thread_settings": thread_settings(), "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    for name in ("numpy", "paddle"):
        module = sys.modules.get(name)
        if module is not None:
            info[f"{name}_version"] = getattr(module, "__version__", "?")
    return info


# ----------------------------------------------------------------------------- threads and workers
def configure_threads(mkl: str = "toolkit", threads: int | None = None, extra: dict | None = None) -> dict:
    """Set this process's thread variables before numpy and Paddle load; returns them.

    mkl: "toolkit" (whatever utils/__init__.py picks, MKL_DEBUG_CPU_TYPE=5 unless set),
    "5" (set it) or "stock" (unset: Paddle's bundled MKL as shipped). threads: OpenMP and
    OpenBLAS threads (None: the toolkit's default, the usable cores). extra: more variables.
    """
    if "paddle" in sys.modules or "numpy" in sys.modules:
        raise RuntimeError("configure_threads must run before numpy or paddle is imported")
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    os.environ.update(extra or {})
    if mkl == "5":
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
    import utils  # noqa: F401  the toolkit's defaults for everything not set above

    if mkl == "stock":
        os.environ.pop("MKL_DEBUG_CPU_TYPE", None)
    return thread_settings()


def run_json(args: list[str], env: dict | None = None, timeout: float = 600) -> dict:
    """Run `python args...` from the repository root with BASE_ENV (+ env); its stdout is one JSON
    object, its stderr streams through. On failure: {"error": ..., "returncode": ...}."""
    start = time.perf_counter()
    child_env = dict(BASE_ENV, **(env or {}))
    try:
        result = subprocess.run([sys.executable, *args], cwd=ROOT, env=child_env, stdout=subprocess.PIPE,
                                stderr=None, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s: {' '.join(args)}", "returncode": None}
    wall = round(time.perf_counter() - start, 2)
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}: {' '.join(args)} (its stderr is above)",
                "returncode": result.returncode, "process_wall_s": wall}
    try:
        report = json.loads(result.stdout[result.stdout.index("{"):])
    except ValueError as err:
        return {"error": f"no JSON on stdout of {' '.join(args)} ({err}): {result.stdout[-500:]!r}",
                "returncode": 0, "process_wall_s": wall}
    report["process_wall_s"] = wall
    return report


# ----------------------------------------------------------------------------- GEMM roof
@contextlib.contextmanager
def blas_threads(threads: int | None):
    """numpy's BLAS limited to (or raised to) `threads` inside the block, when threadpoolctl is
    there (requirements-dev.txt installs it); yields the thread count in effect."""
    import numpy  # noqa: F401  threadpoolctl finds only the BLAS libraries already loaded

    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        yield None
        return
    with (threadpool_limits(limits=threads, user_api="blas") if threads else contextlib.nullcontext()):
        yield max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=None)


def gemm_numpy(repeats: int = 5, size: int = GEMM_SIZE) -> list[float]:
    """GFLOP/s of float32 [size x size] @ [size x size] with numpy (OpenBLAS threads)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size ** 3
    return [flops / s / 1e9 for s in timed(lambda: a @ b, repeats)]


def gemm_paddle(repeats: int = 5, size: int = GEMM_SIZE) -> list[float]:
    """GFLOP/s of the same matmul through paddle.matmul (MKL, OMP_NUM_THREADS threads)."""
    import numpy as np
    import paddle

    rng = np.random.default_rng(0)
    a = paddle.to_tensor(rng.standard_normal((size, size), dtype=np.float32))
    b = paddle.to_tensor(rng.standard_normal((size, size), dtype=np.float32))
    flops = 2.0 * size ** 3
    return [flops / s / 1e9 for s in timed(lambda: paddle.matmul(a, b).numpy(), repeats)]


def gemm_roof(repeats: int = 5, size: int = GEMM_SIZE, numpy_threads: int | None = None) -> dict:
    """Both GEMMs; `roof_gflops` is the better median (the machine's float32 GEMM rate here).
    numpy runs on `numpy_threads` BLAS threads (None: as the environment set them), paddle on
    OMP_NUM_THREADS."""
    with blas_threads(numpy_threads) as threads_in_effect:
        numpy_rates = gemm_numpy(repeats, size)
    paddle_rates = gemm_paddle(repeats, size)
    result = {"size": size, "numpy_gflops": summarize(numpy_rates), "paddle_gflops": summarize(paddle_rates),
              "numpy_blas_threads": threads_in_effect, "threads": thread_settings()}
    result["roof_gflops"] = max(result["numpy_gflops"]["median"], result["paddle_gflops"]["median"])
    return result


def merge_roofs(first: dict, second: dict) -> dict:
    """Roof measured before and after a benchmark: keep both, roof = the better of the two."""
    return {"before": first, "after": second,
            "roof_gflops": max(first["roof_gflops"], second["roof_gflops"])}


# ----------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    train_manifest: str
    test_manifest: str
    vocabulary: str
    mean_std: str
    noise_manifest: str
    source: str  # where it came from, for the report

    def as_dict(self) -> dict:
        return asdict(self)


DEMO_CORPUS_DIRS = ("dataset/demo_en", "dataset")  # make demo writes the first; older demos the second
CORPUS_FILES = ("manifest.train", "manifest.test", "vocabulary.txt", "mean_std.npz")


def corpus_in(folder: Path, source: str) -> Corpus | None:
    """The corpus create_data.py wrote into folder, if complete and with 80-dim fbank statistics."""
    if not all((folder / name).is_file() for name in CORPUS_FILES):
        return None
    import numpy as np

    with np.load(folder / "mean_std.npz") as data:
        if str(data["feature_method"]) != "fbank" or len(data["mean"]) != 80:
            return None
    return Corpus(str(folder / "manifest.train"), str(folder / "manifest.test"), str(folder / "vocabulary.txt"),
                  str(folder / "mean_std.npz"), str(folder / "manifest.noise"), source)


def generate_demo_corpus(folder: Path, num_train: int, num_test: int) -> Corpus:
    """Synthesize a corpus with tools/make_demo_corpus.py (espeak-ng, flite), then create_data.py."""
    python = sys.executable
    log(f"generating a {num_train}-utterance espeak-ng corpus in {folder} (kept for later runs)")
    subprocess.run([python, "tools/make_demo_corpus.py", "--num_train", str(num_train), "--num_test",
                    str(num_test), "--out_dir", str(folder)], cwd=ROOT, check=True, stdout=sys.stderr)
    subprocess.run([python, "create_data.py", "--configs", "conf/demo.yml",
                    f"--annotation_path={folder}/annotation", f"--manifest_prefix={folder}/manifest",
                    f"--dataset_vocab={folder}/vocabulary.txt", f"--mean_std_path={folder}/mean_std.npz",
                    f"--noise_dir={folder}/noise", f"--resampled_dir={folder}/resampled"],
                   cwd=ROOT, check=True, stdout=sys.stderr, env=BASE_ENV)
    corpus = corpus_in(folder, f"generated by make_demo_corpus.py + create_data.py in {folder}")
    if corpus is None:
        raise RuntimeError(f"create_data.py did not write a complete fbank corpus into {folder}")
    return corpus


SYNTHETIC_WORDS = "the quick brown fox jumps over a lazy dog while seven pale kings sing of rain".split()


def make_synthetic_corpus(folder: Path, num_train: int, num_test: int, seed: int = 0,
                          min_s: float = 2.0, max_s: float = 4.0) -> Corpus:
    """Tone-and-noise wavs of min_s..max_s seconds with random word transcripts (for tests: no espeak-ng)."""
    import numpy as np
    import soundfile

    from utils.features import FeatureStats, compute_features, save_mean_std
    from utils.manifest import Utterance, write_manifest
    from utils.text import Vocabulary

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    splits, stats = {"train": [], "test": []}, FeatureStats(80)
    for index in range(num_train + num_test):
        split = "train" if index < num_train else "test"
        seconds = round(float(rng.uniform(min_s, max_s)), 3)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        samples = (0.05 * rng.standard_normal(t.size) +
                   0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)).astype(np.float32)
        path = folder / "audio" / f"{split}_{index:05d}.wav"
        soundfile.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
        text = " ".join(rng.choice(SYNTHETIC_WORDS, size=int(rng.integers(3, 9))))
        splits[split].append(Utterance(str(path), seconds, text))
        if split == "train":
            stats.add(compute_features(samples, "fbank", SAMPLE_RATE, 80))
    for split, utterances in splits.items():
        write_manifest(folder / f"manifest.{split}", utterances)
    Vocabulary.build(u.text for u in splits["train"] + splits["test"]).save(folder / "vocabulary.txt")
    mean, std = stats.mean_std()
    save_mean_std(folder / "mean_std.npz", mean, std, "fbank", SAMPLE_RATE, 80)
    return Corpus(str(folder / "manifest.train"), str(folder / "manifest.test"), str(folder / "vocabulary.txt"),
                  str(folder / "mean_std.npz"), str(folder / "manifest.noise"),
                  f"synthetic tones and noise in {folder}")


def find_corpus(spec: str, work_dir: Path, num_train: int = 400, num_test: int = 16) -> Corpus:
    """spec: "auto" (the demo corpus if built, else bench/corpus, generated once with espeak-ng),
    "synthetic" (tones, in work_dir) or a folder holding create_data.py's outputs."""
    if spec == "synthetic":
        return make_synthetic_corpus(work_dir / "synthetic_corpus", num_train, num_test)
    if spec != "auto":
        corpus = corpus_in(Path(spec), f"given: {spec}")
        if corpus is None:
            raise SystemExit(f"--corpus {spec}: needs {', '.join(CORPUS_FILES)} with 80-dim fbank statistics "
                             f"(create_data.py --configs conf/demo.yml writes them)")
        return corpus
    for folder in DEMO_CORPUS_DIRS:
        corpus = corpus_in(ROOT / folder, f"demo corpus in {folder}")
        if corpus is not None:
            return corpus
    cached = ROOT / "bench" / "corpus"
    return corpus_in(cached, f"bench corpus in {cached}") or generate_demo_corpus(cached, num_train, num_test)


def write_subset(manifest: str, out_path: Path, count: int, min_s: float, max_s: float, seed: int = 0) -> dict:
    """`count` utterances of min_s..max_s seconds from manifest (seeded sample) -> out_path."""
    lines = []
    with open(manifest, encoding="utf-8") as handle:
        for line in handle:
            if line.strip() and min_s <= float(json.loads(line)["duration"]) <= max_s:
                lines.append(line if line.endswith("\n") else line + "\n")
    if not lines:
        raise SystemExit(f"{manifest} holds no utterance of {min_s}-{max_s} s")
    chosen = random.Random(seed).sample(lines, min(count, len(lines)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(chosen), encoding="utf-8")
    seconds = sum(float(json.loads(line)["duration"]) for line in chosen)
    return {"manifest": str(out_path), "utterances": len(chosen), "available": len(lines),
            "audio_seconds": round(seconds, 1), "min_s": min_s, "max_s": max_s}

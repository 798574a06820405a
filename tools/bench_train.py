"""Benchmark training on this CPU; prints one JSON report (progress on stderr).

    python tools/bench_train.py [--quick] [--corpus auto|synthetic|FOLDER] [--batches 16] [--unit_pairs 120]

On a corpus of 2-4 s clips (the demo corpus when built, else one generated once with
espeak-ng into bench/corpus) it measures, each part in its own worker process so that the
thread variables can differ (numpy and Paddle read them at load time):

demo (conf/demo.yml, the toolkit's thread defaults and train.py's thread placement), all in one
process:
  - throughput through the real loader: utils/training.py's `_run_epoch` over the real
    loader (augmentation as configured), iterated once across all passes as train.py
    iterates it across epochs, audio seconds and utterances per wall second;
  - the share of the loop spent waiting for data (reader cost / batch cost; target < 10 %);
  - the pipeline ratio (target <= 1.05): after an unmeasured pass of the loader (its worker's
    start, paid once a run: first_pass_ratio), --unit_pairs pairs of 4-batch units in alternating
    order, one through the loader and one over the same batches pre-computed as tensors (the bare
    step) with the loader's workers stopped (unit_pairs); the ratio of a pair's walls, the median
    pair and the interval that holds the median (bench_common.median_interval), and whether it
    settles the target; the units joined into whole passes give the throughputs and
    pipeline_ratio_passes; the loader workers' CPU a batch through the units, read from /proc
    (worker_cpu_s_per_batch_beside_step);
  - achieved GFLOP/s from FLOPs counted from the batch shapes (forward: convolutions
    2*Cin*Cout*kh*kw*H'*W', RNN 2*(in+hidden)*hidden per gate per step and layer, head
    2*hidden*vocab per step; training = 3 x forward) against a float32 GEMM roof
    (2048^2, numpy and paddle.matmul) measured in the same process (target >= 50 %), and the
    ceiling of that fraction for this model shape: the frame-by-frame recurrent products
    ([16, hidden] x [hidden, gates*hidden], forward and input gradient) at their own measured rate,
    every other FLOP at the roof, nothing else costing time;
  - padding waste (padded / real frames) per epoch of the SortaGrad sampler, against
    random batches;
  - the loader's CPU per batch (features + augmentation, measured in-process) against the
    bare step's CPU: on saturated cores 1 + that share is the pipeline ratio to expect;
  - cpu_kernels: the bare step with Paddle's CPU kernels and with ours (utils/cpu_kernels.py),
    alternating passes, for the demo and the peer-equivalent config;
  - strided_views: the bare step with Paddle's strided views from transpose on and off
    (FLAGS_use_stride_kernel, off by utils/__init__.py), with our kernels and with Paddle's;
  - levers, each as twelve unit pairs (three passes' worth) after an unmeasured pass of the fresh loader:
    num_workers 0/1/2, thread placement off (utils/placement.py: OpenMP threads pinned, workers
    at idle priority on the other cores), workers at normal priority, numpy's feature path instead
    of our C++ front end (utils/feature_kernels.py), numpy's BLAS on one thread (its idle threads
    spin and take the core from the step), augmentation off, and every sample computed beforehand
    (the loader's own cost); and the loader started afresh every pass, as one pair of passes
    (restarting is that lever);
  - other_loader: the other data.loader (Paddle's DataLoader against our slots,
    utils/batch_workers.py), a third of the config's unit pairs, in the demo and in every peer run.
peer_equivalent: PPASR's small DS2 (2 conv 3x3 stride 2 x 32, 3 forward LSTM x 256, fbank
  80, batch 16) through the same loop, against
  PPASR's published 67.5 (stock) and 124 (MKL_DEBUG_CPU_TYPE=5) audio-s/s, measured on a 2-core
  AMD EPYC (target >= 2 x 67.5);
  once with the toolkit's thread defaults, and with a third of the unit pairs once with MKL as
  shipped on one thread and once with glibc returning freed tensors' memory to the system
  (train.keep_freed_memory=false, utils/allocator.py; a process of its own, since glibc's default
  cannot be restored in one).
threads: bare steps of the demo model, the loader's feature CPU and the GEMM roof with
  MKL_DEBUG_CPU_TYPE unset/5 x OMP_NUM_THREADS (and OPENBLAS_NUM_THREADS) 1/2, plus OpenMP
  threads that sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, KMP_BLOCKTIME=0), one
  process per setting.
memory: peak RSS of train.py's set-up plus a few steps of the demo config with 1k, 10k and
  100k manifest lines (clips repeated), three fresh processes each (the median), against the
  manifest's size.
reference: conf/deepspeech2.yml (161-dim spectrogram, 41x11/21x11 convolutions, 3 GRU x
  1024), a few bare steps with the kernels train.py would choose; on a GPU build with a GPU
  also the same steps under AMP O1 (gpu_amp: throughput and speedup over float32).

Ratios are measured inside one process, because this machine is shared and noisy; the
figures across processes (threads) are only as steady as the load (reported).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.bench_common import (FRAME_SECONDS, ROOT, blas_threads, configure_threads, emit,  # noqa: E402
                                find_corpus, gemm_roof, interval_says, load_average, log, machine_info,
                                median_interval, merge_roofs, ratio, rounded, run_json, stdout_to_stderr,
                                summarize, timed, usable_cores, write_subset)

PEER = {"name": "PPASR 2.4.8 small DeepSpeech2", "audio_s_per_s_stock": 67.5, "audio_s_per_s_mkl_fix": 124.0,
        "pipeline_ratio": [1.09, 1.19], "achieved_gflops": 26.0, "reference_audio_s_per_s": 4.0,
        "source": "../shared/facts.md and issue 6: measured on a 2-core AMD EPYC, not in this run; compare "
                  "machine.cpu_vendor before reading the ratios"}
PEER_MODEL = {"conv_channels": [32, 32], "conv_kernels": [[3, 3], [3, 3]], "conv_strides": [[2, 2], [2, 2]],
              "rnn_type": "lstm", "num_rnn_layers": 3, "rnn_size": 256, "bidirectional": False}
TARGETS = {"reader_share_max": 0.10, "pipeline_ratio_max": 1.05, "roof_fraction_min": 0.5,
           "peer_speedup_min": 2.0}
CLIP_SECONDS = (2.0, 4.0)
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}  # OpenMP threads sleep instead of spinning
MEASURED_EPOCH = 1  # a shuffled epoch (epoch 0 is SortaGrad's sorted one)
PADDING_EPOCHS = 4


# ----------------------------------------------------------------------------- FLOPs
def forward_flops(model_cfg: dict, feat_dim: int, vocab_size: int, batch: int, frames: int) -> float:
    """Multiply-adds x 2 of one forward pass over a padded batch [batch, frames, feat_dim]."""
    from utils.model import conv_output_length

    height, width, channels_in, conv = feat_dim, frames, 1, 0.0
    for channels, kernel, stride in zip(model_cfg["conv_channels"], model_cfg["conv_kernels"],
                                        model_cfg["conv_strides"]):
        height = conv_output_length(height, kernel[0], stride[0])
        width = conv_output_length(width, kernel[1], stride[1])
        conv += 2.0 * channels_in * channels * kernel[0] * kernel[1] * height * width
        channels_in = channels
    gates = 3 if model_cfg["rnn_type"] == "gru" else 4
    directions = 2 if model_cfg["bidirectional"] else 1
    hidden, size_in, rnn = model_cfg["rnn_size"], channels_in * height, 0.0
    for _ in range(model_cfg["num_rnn_layers"]):
        rnn += directions * gates * 2.0 * (size_in + hidden) * hidden
        size_in = hidden * directions
    head = 2.0 * size_in * vocab_size
    return batch * (conv + width * (rnn + head))


def train_flops(model_cfg: dict, feat_dim: int, vocab_size: int, shapes: list) -> float:
    """Forward + backward (about 2x forward) over batches given as (batch, frames)."""
    return sum(3.0 * forward_flops(model_cfg, feat_dim, vocab_size, b, t) for b, t in shapes)


def recurrent_train_flops(model_cfg: dict, shapes: list) -> float:
    """The part of train_flops that must run frame by frame: per layer, direction and frame, the
    product h [batch, hidden] x [hidden, gates*hidden] forward and its input gradient backward (the
    weight gradient and the input projections can run as one large product over all frames)."""
    from utils.model import conv_output_lengths

    gates = 3 if model_cfg["rnn_type"] == "gru" else 4
    directions = 2 if model_cfg["bidirectional"] else 1
    hidden = model_cfg["rnn_size"]
    per_frame = model_cfg["num_rnn_layers"] * directions * gates * 2.0 * hidden * hidden
    return sum(2.0 * per_frame * b * conv_output_lengths(t, model_cfg["conv_kernels"], model_cfg["conv_strides"])
               for b, t in shapes)


RECURRENT_PRODUCT_CALLS = 400  # products per timed repeat: one takes 0.03-0.1 ms, too short to time alone


def recurrent_product_rate(model_cfg: dict, batch: int, repeats: int, numpy_threads: int) -> dict:
    """GFLOP/s of the frame-by-frame product [batch, hidden] x [hidden, gates*hidden], numpy (its
    BLAS on numpy_threads) and paddle.matmul (OMP_NUM_THREADS, with dygraph's per-call cost)."""
    import numpy as np
    import paddle

    gates = 3 if model_cfg["rnn_type"] == "gru" else 4
    hidden = model_cfg["rnn_size"]
    rng = np.random.default_rng(0)
    state = rng.standard_normal((batch, hidden), dtype=np.float32)
    weight = rng.standard_normal((hidden, gates * hidden), dtype=np.float32)
    out = np.empty((batch, gates * hidden), np.float32)
    flops = 2.0 * batch * hidden * gates * hidden * RECURRENT_PRODUCT_CALLS

    def numpy_products():
        for _ in range(RECURRENT_PRODUCT_CALLS):
            np.matmul(state, weight, out=out)

    state_t, weight_t = paddle.to_tensor(state), paddle.to_tensor(weight)

    def paddle_products():
        for _ in range(RECURRENT_PRODUCT_CALLS):
            paddle.matmul(state_t, weight_t)

    with blas_threads(numpy_threads):
        numpy_rates = [flops / s / 1e9 for s in timed(numpy_products, repeats)]
    paddle_rates = [flops / s / 1e9 for s in timed(paddle_products, repeats)]
    result = {"shape": [batch, hidden, gates * hidden], "numpy_gflops": summarize(numpy_rates),
              "paddle_gflops": summarize(paddle_rates)}
    result["rate_gflops"] = max(result["numpy_gflops"]["median"], result["paddle_gflops"]["median"])
    return result


def roof_ceiling(model_cfg: dict, feat_dim: int, vocab_size: int, shapes: list, roof: float,
                 recurrent_rate: float) -> dict:
    """The roof fraction a step could reach if its frame-by-frame products ran at their shape's measured
    rate and every other FLOP at the roof, with nothing else (convolution layout, gates, norms, CTC,
    the optimizer) costing any time: an upper bound for this model shape on this machine."""
    total = train_flops(model_cfg, feat_dim, vocab_size, shapes)
    recurrent = recurrent_train_flops(model_cfg, shapes)
    seconds = recurrent / (recurrent_rate * 1e9) + (total - recurrent) / (roof * 1e9)
    ceiling = total / seconds / 1e9
    return {"recurrent_share_of_flops": rounded(recurrent / total), "recurrent_rate_gflops": rounded(recurrent_rate),
            "ceiling_gflops": rounded(ceiling), "ceiling_roof_fraction": rounded(ceiling / roof)}


# ----------------------------------------------------------------------------- padding
def epoch_padding(durations: list[float], batch_size: int, seed: int, epochs: int) -> dict:
    """Padded / real frames per epoch of the training sampler, and of random batches for contrast."""
    import numpy as np

    from utils.data import epoch_batches
    from utils.features import num_frames

    frames = np.array([num_frames(int(d * 16000), "fbank") for d in durations], dtype=np.int64)

    def waste(batches) -> float:
        real = sum(int(frames[b].sum()) for b in batches)
        return rounded(sum(int(frames[b].max()) * len(b) for b in batches) / max(1, real) - 1.0)

    rng = np.random.default_rng(seed)
    sampler = [waste(epoch_batches(np.asarray(durations), batch_size, epoch, seed)) for epoch in range(epochs)]
    random = [waste(np.array_split(rng.permutation(len(frames)), max(1, len(frames) // batch_size)))
              for _ in range(epochs)]
    return {"utterances": len(durations), "batch_size": batch_size, "sampler_per_epoch": sampler,
            "random_batches_per_epoch": random}


# ----------------------------------------------------------------------------- worker: passes
class TimedLoader:
    """Wraps a loader (or a list of batches): time waiting in next() (reader cost) and between
    batches (the step), and the batch shapes."""

    def __init__(self, source):
        self.source, self.waits, self.steps, self.feat_lens, self.shapes = source, [], [], [], []

    def __iter__(self):
        import numpy as np

        start = time.perf_counter()
        iterator, last = iter(self.source), None
        while True:
            if last is not None:
                start = time.perf_counter()
                self.steps.append(start - last)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - start)
            lens = np.asarray(batch[1])
            self.feat_lens.append(lens)
            self.shapes.append((int(batch[0].shape[0]), int(batch[0].shape[1])))
            last = time.perf_counter()
            yield batch


def run_pass(run, source) -> dict:
    """One pass of utils.training._run_epoch over `source`; wall, waits, steps, shapes."""
    from utils import training

    timed = TimedLoader(source)
    run.batches = iter(timed)
    run.state.epoch, run.state.batch_in_epoch = MEASURED_EPOCH, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with stdout_to_stderr():
        training._run_epoch(run)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start
    if len(timed.steps) < len(timed.waits):  # the last batch's step: the rest of the pass
        timed.steps.append(max(0.0, wall - sum(timed.waits) - sum(timed.steps)))
    real_frames = sum(int(lens.sum()) for lens in timed.feat_lens)
    first = timed.waits[0] + (timed.steps[0] if timed.steps else 0.0)
    return {"wall_s": wall, "steady_wall_s": wall - first, "cpu_s": cpu, "waits": timed.waits, "steps": timed.steps,
            "page_faults_per_step": faults / max(1, len(timed.steps)),
            "shapes": timed.shapes, "audio_s": real_frames * FRAME_SECONDS,
            "utterances": sum(len(lens) for lens in timed.feat_lens),
            "padded_frames": sum(b * t for b, t in timed.shapes), "real_frames": real_frames}


def precompute(dataset, sampler) -> list:
    """The batches the loader would yield for this epoch, as tensors, computed here (one core).
    PIPELINE_CPU records the seconds per batch: what the loader workers spend per batch."""
    import paddle

    from utils.data import collate

    sampler.set_epoch(MEASURED_EPOCH, 0)
    dataset[next(iter(sampler))[0]]  # first-call costs (window, mel matrix) are not per batch
    # cpu_s: this thread's CPU, what a worker spends (numpy's BLAS runs on this thread with the
    # toolkit's OPENBLAS_NUM_THREADS=1); process_cpu_s adds every other thread of this process:
    # BLAS threads where there are more, and Paddle's OpenMP threads spinning after the set-up
    batches, start = [], time.perf_counter()
    cpu_start, process_cpu_start = time.thread_time(), time.process_time()
    for keys in sampler:
        batches.append(collate([dataset[key] for key in keys]))
    count = max(1, len(batches))
    PIPELINE_CPU.append({"cpu_s": (time.thread_time() - cpu_start) / count,
                         "process_cpu_s": (time.process_time() - process_cpu_start) / count,
                         "wall_s": (time.perf_counter() - start) / count})
    return [[paddle.to_tensor(a) for a in batch] for batch in batches]


PIPELINE_CPU: list[dict] = []  # per precompute() call: CPU and wall seconds per batch (features, collate)


def pair(run, loader, bare_batches, label: str) -> dict:
    """A loader pass, then a bare pass over the same batches (the lever that restarts the loader)."""
    log(f"  {label}: loader and bare passes")
    with_loader = run_pass(run, loader)
    bare = run_pass(run, bare_batches)
    log(f"  {label}: {with_loader['wall_s']:.2f} s with the loader, {bare['wall_s']:.2f} s bare")
    check_same_shapes(label, with_loader, bare)
    return {"loader": with_loader, "bare": bare}


def check_same_shapes(label: str, with_loader: dict, bare: dict) -> None:
    if with_loader["shapes"] != bare["shapes"]:
        raise RuntimeError(f"{label}: the loader's batch shapes {with_loader['shapes']} differ from the "
                           f"pre-computed ones {bare['shapes']}; the comparison would be unfair")


def lever_figures(run, loader, bare_batches, label: str, flops: float, roof: float, count: int) -> dict:
    """A lever's unit_figures: `count` unit pairs (spec["lever_unit_pairs"])."""
    return unit_figures(unit_pairs(run, loader, bare_batches, label, count), flops, roof)


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command's ")" (field 3 first), None for a process gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def child_pids() -> list[int]:
    """This process's child processes (the loader's workers), from /proc."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if (fields := stat_fields(pid)) and int(fields[1]) == os.getpid()]  # field 4: ppid


def processes_cpu_s(pids: list[int]) -> float:
    """User and system CPU seconds these processes have used so far, from /proc (none for one gone)."""
    ticks = sum(int(fields[11]) + int(fields[12]) for fields in map(stat_fields, pids) if fields)  # fields 14, 15
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def stopped(pids: list[int]):
    """Inside: the processes stopped (SIGSTOP), continued after (SIGCONT); one already gone is skipped."""
    def send(pid: int, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)

    for pid in pids:
        send(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            send(pid, signal.SIGCONT)


def unit_pairs(run, loader, bare_batches: list, label: str, count: int) -> dict:
    """The pipeline ratio in short units: `count` (loader unit, bare unit) pairs of UNIT_BATCHES batches
    (rounded up to whole passes over bare_batches, so that the loader ends where a pass would), in
    alternating order, after an unmeasured pass of the loader (a fresh loader's first pass pays its
    worker's start and the copy-on-write faults the fork leaves in this process).

    A pair of 16-batch passes moves by 0.1-0.3 on a noisy host, whose speed drifts within seconds; two
    units a second apart see nearly the same host. The loader's worker processes are stopped (SIGSTOP)
    through every bare unit: left running they would fill their slots there, so that the next loader
    unit would start with batches made on the bare unit's time. Stopped, a worker makes one batch per
    batch taken, as in a run, and resumes the batch it was making.

    Returns {"units": pairs, "passes": the units joined into pairs of whole passes, "first_pass",
    "worker_cpu_s_per_batch": the workers' CPU a batch through the units, beside the step (None without
    worker processes)}."""
    unit = min(UNIT_BATCHES, len(bare_batches))
    per_pass = len(bare_batches) // unit
    count = -(-count // per_pass) * per_pass
    log(f"  {label}: an unmeasured pass first, then {count} pairs of {unit}-batch units")
    first_pass = run_pass(run, loader)
    workers = child_pids()
    workers_cpu_start = processes_cpu_s(workers)
    units = []
    for i in range(count):
        part = bare_batches[(i % per_pass) * unit:(i % per_pass + 1) * unit]
        if i % 2:
            with stopped(workers):
                bare = run_pass(run, part)
            fed = run_pass(run, itertools.islice(loader, unit))
        else:
            fed = run_pass(run, itertools.islice(loader, unit))
            with stopped(workers):
                bare = run_pass(run, part)
        check_same_shapes(label, fed, bare)
        units.append({"loader": fed, "bare": bare})
    workers_cpu = (processes_cpu_s(workers) - workers_cpu_start) / (count * unit) if workers else None
    passes = [{side: joined([u[side] for u in units[start:start + per_pass]]) for side in ("loader", "bare")}
              for start in range(0, count, per_pass)]
    ratios = [u["loader"]["wall_s"] / u["bare"]["wall_s"] for u in units]
    interval = median_interval(ratios)
    log(f"  {label}: unit ratios median {statistics.median(ratios):.3f} "
        f"(interval {interval.get('low')}-{interval.get('high')})")
    return {"units": units, "passes": passes, "first_pass": first_pass, "worker_cpu_s_per_batch": workers_cpu}


def joined(parts: list[dict]) -> dict:
    """Consecutive run_pass results as one pass."""
    first = parts[0]
    return {"wall_s": sum(p["wall_s"] for p in parts),
            "steady_wall_s": sum(p["wall_s"] for p in parts) - (first["wall_s"] - first["steady_wall_s"]),
            "cpu_s": sum(p["cpu_s"] for p in parts),
            "waits": [w for p in parts for w in p["waits"]], "steps": [s for p in parts for s in p["steps"]],
            "page_faults_per_step": statistics.mean(p["page_faults_per_step"] for p in parts),
            "shapes": [s for p in parts for s in p["shapes"]],
            **{key: sum(p[key] for p in parts) for key in ("audio_s", "utterances", "padded_frames", "real_frames")}}


def pass_figures(passes: list[dict], flops: float, roof: float) -> dict:
    """Throughput, reader share and GFLOP/s of repeated passes over the same batches."""
    walls = [p["wall_s"] for p in passes]
    waits = [w for p in passes for w in p["waits"]]
    steady_waits = [w for p in passes for w in p["waits"][1:]]
    audio, utts = passes[0]["audio_s"], passes[0]["utterances"]
    steady_share = sum(steady_waits) / max(1e-9, sum(p["steady_wall_s"] for p in passes))
    return {"wall_s": summarize(walls), "main_process_cpu_s": summarize([p["cpu_s"] for p in passes]),
            "minor_page_faults_per_step": summarize([p["page_faults_per_step"] for p in passes]),
            "audio_s_per_pass": rounded(audio),
            "audio_s_per_s": summarize([audio / w for w in walls]),
            "utterances_per_s": summarize([utts / w for w in walls]),
            "batch_cost_s": summarize([w + s for p in passes for w, s in zip(p["waits"], p["steps"])]),
            "reader_cost_s": summarize(waits), "first_batch_wait_s": summarize([p["waits"][0] for p in passes]),
            "reader_share": rounded(sum(waits) / sum(walls)), "reader_share_steady": rounded(steady_share),
            "gflops": summarize([flops / w / 1e9 for w in walls]),
            "roof_fraction": rounded(flops / statistics.median(walls) / 1e9 / roof)}


def pipeline_cpu(features: dict, bare: dict) -> dict:
    """The loader's CPU per batch (measured here, in this process's thread settings, which forked
    workers inherit) against the bare step's CPU: on saturated cores the workers can only take
    their CPU from the step, so the pipeline ratio there is at least about 1 + share (the workers'
    memory traffic adds to it: peer config 1 + 0.034 against 1.043 measured in one run)."""
    batches_per_pass = bare["batch_cost_s"]["n"] // max(1, bare["wall_s"]["n"])
    step_cpu = bare["main_process_cpu_s"]["median"] / max(1, batches_per_pass)
    return {"features_cpu_s_per_batch": rounded(features["cpu_s"]),
            "features_wall_s_per_batch": rounded(features["wall_s"]),
            "bare_step_cpu_s_per_batch": rounded(step_cpu),
            "share": rounded(features["cpu_s"] / step_cpu) if step_cpu else None}


def pairs_figures(pairs: list[dict], flops: float, roof: float) -> dict:
    """Figures of (loader, bare) pairs of whole passes; the pipeline ratio is their walls' ratio."""
    loader = pass_figures([p["loader"] for p in pairs], flops, roof)
    bare = pass_figures([p["bare"] for p in pairs], flops, roof)
    ratios = [p["loader"]["wall_s"] / p["bare"]["wall_s"] for p in pairs]
    steady = [p["loader"]["steady_wall_s"] / max(1e-9, p["bare"]["steady_wall_s"]) for p in pairs]
    shapes = pairs[0]["bare"]["shapes"]
    return {"with_loader": loader, "bare_step": bare, "pipeline_ratio": summarize(ratios),
            "pipeline_ratio_interval": median_interval(ratios),
            "pipeline_ratio_steady": summarize(steady), "batches": len(shapes),
            "batch_shapes": [list(s) for s in shapes], "train_gflop_per_pass": rounded(flops / 1e9),
            "padding_measured": rounded(pairs[0]["bare"]["padded_frames"] / pairs[0]["bare"]["real_frames"] - 1)}


def unit_figures(measured: dict, flops: float, roof: float) -> dict:
    """pairs_figures of unit_pairs' joined passes (throughput, roof, reader share), with the pipeline
    ratio from the units: the median unit pair and its interval (pipeline_ratio_passes: the joined
    passes' ratios), the first pass's wall against the median bare pass (paid once a run), and the loader
    workers' CPU a batch beside the step (worker_cpu_s_per_batch_beside_step)."""
    figures = pairs_figures(measured["passes"], flops, roof)
    units = [u["loader"]["wall_s"] / u["bare"]["wall_s"] for u in measured["units"]]
    bare_pass = statistics.median(p["bare"]["wall_s"] for p in measured["passes"])
    return {**figures, "pipeline_ratio": summarize(units), "pipeline_ratio_interval": median_interval(units),
            "pipeline_ratio_passes": figures["pipeline_ratio"],
            "pipeline_ratio_passes_interval": figures["pipeline_ratio_interval"],
            "unit_batches": len(measured["units"][0]["bare"]["shapes"]), "unit_pairs": len(units),
            "first_pass_ratio": rounded(measured["first_pass"]["wall_s"] / bare_pass),
            "worker_cpu_s_per_batch_beside_step": rounded(measured["worker_cpu_s_per_batch"])}


# ----------------------------------------------------------------------------- worker: set-up
def worker_config(config_path: str, spec: dict, name: str, model_overrides: dict | None = None):
    from utils.config import Config, load_yaml

    cfg = Config()
    load_yaml(cfg, str(ROOT / config_path))
    d, t = cfg.data, cfg.train
    d.train_manifest, d.test_manifest = spec["subset"], spec["corpus"]["test_manifest"]
    d.dataset_vocab, d.mean_std_path = spec["corpus"]["vocabulary"], spec["corpus"]["mean_std"]
    d.noise_manifest = spec["corpus"]["noise_manifest"]
    d.min_duration, d.max_duration = 0.0, 1e9  # the subset is filtered already
    if d.augment_conf_path:
        d.augment_conf_path = str(ROOT / d.augment_conf_path)
    t.save_model_path, t.log_dir, t.use_model = spec["work"] + "/models", spec["work"] + "/log", name
    t.batch_size, t.num_iters_per_epoch = spec["batch_size"], spec["batches"]
    t.log_interval, t.save_step, t.max_steps = 10 ** 9, 0, 0
    t.keep_freed_memory = spec.get("keep_freed_memory", True)
    for key, value in (model_overrides or {}).items():
        setattr(cfg.model, key, value)
    return cfg


def setup_run(cfg):
    from utils import training

    model_root = Path(cfg.train.save_model_path) / cfg.train.use_model
    with stdout_to_stderr():
        return training._setup(cfg, 0, 1, model_root)


def model_dict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg.model)


def warm_up(run, batches: list) -> float:
    """One untimed step (allocations, first-call costs); returns its seconds."""
    start = time.perf_counter()
    run_pass(run, batches[:1])
    return time.perf_counter() - start


def roof_now(spec: dict) -> dict:
    """The GEMM roof with numpy on every usable core (a threads worker: on its own thread count)."""
    log("  GEMM roof")
    return gemm_roof(spec["gemm_repeats"], spec["gemm_size"], spec.get("threads") or usable_cores())


def loader_worker(spec: dict, config_path: str, name: str, model_overrides: dict | None, levers: bool) -> dict:
    """Demo or peer configuration: alternating loader/bare passes, levers, roof before and after."""
    from utils import placement

    roof_before = roof_now(spec)
    cfg = worker_config(config_path, spec, name, model_overrides)
    run = setup_run(cfg)
    loader = run_loader(run, cfg)
    feat_dim, vocab = run.model.feat_dim, len(run.vocabulary)
    log(f"{name}: pre-computing {spec['batches']} batches of {spec['batch_size']}")
    bare_batches = precompute(run.train_set, run.sampler)
    flops = train_flops(model_dict(cfg), feat_dim, vocab, [tuple(b[0].shape[:2]) for b in bare_batches])
    warm = warm_up(run, bare_batches)
    placement.apply(run.placement)  # as train.py's loop does
    try:
        measured = unit_pairs(run, loader, bare_batches, name, spec["unit_pairs"])
        kernels = kernels_lever(run, bare_batches, flops, roof_before["roof_gflops"])
        views = strided_views_lever(run, bare_batches, flops, roof_before["roof_gflops"])
        other_loader = other_loader_lever(run, cfg, bare_batches, flops, roof_before["roof_gflops"],
                                          max(1, spec["unit_pairs"] // 3))
        lever_figures = loader_levers(run, cfg, spec, bare_batches, flops, roof_before["roof_gflops"]) \
            if levers else None
    finally:
        placement.release(run.placement)  # numpy's threads for the roof may start here: not pinned
    roof_after = roof_now(spec)
    roof = merge_roofs(roof_before, roof_after)
    log("  recurrent product rate")
    product = recurrent_product_rate(model_dict(cfg), spec["batch_size"], spec["gemm_repeats"],
                                     spec.get("threads") or usable_cores())
    ceiling = roof_ceiling(model_dict(cfg), feat_dim, vocab, [tuple(b[0].shape[:2]) for b in bare_batches],
                           roof["roof_gflops"], product["rate_gflops"])
    report = {"config": config_path, "model": model_dict(cfg), "feature_method": cfg.features.feature_method,
              "feat_dim": feat_dim, "vocab_size": vocab, "batch_size": spec["batch_size"],
              "num_workers": cfg.data.num_workers, "augmentation": cfg.data.augment_conf_path,
              "warm_up_step_s": rounded(warm), "gemm": roof, "recurrent_product": product,
              "roof_ceiling": ceiling,
              **unit_figures(measured, flops, roof["roof_gflops"])}
    report["pipeline_cpu"] = pipeline_cpu(PIPELINE_CPU[0], report["bare_step"])
    report["thread_placement"] = run.placement.note
    report["malloc"] = run.malloc_note
    # the lever ran before roof_after existed: its roof fractions, like the others, on the merged roof
    report["cpu_kernels"] = {key: rounded(value * roof_before["roof_gflops"] / roof["roof_gflops"])
                             if key.endswith("_roof_fraction") else value for key, value in kernels.items()}
    report["strided_views"] = views
    report["other_loader"] = other_loader
    if levers:
        report["levers"] = lever_figures
    durations = run.train_set.durations
    report["padding_waste"] = {"subset": epoch_padding(durations, spec["batch_size"], cfg.train.seed,
                                                       PADDING_EPOCHS)}
    report["maxrss_mb"] = rounded(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


@contextlib.contextmanager
def unplaced(run, release: bool = True):
    """Inside: the OpenMP threads unpinned (utils/placement.py), when `release`."""
    from utils import placement

    if not (release and run.placement.thread_cores):
        yield
        return
    placement.release(run.placement)
    try:
        yield
    finally:
        placement.apply(run.placement)


def loader_levers(run, cfg, spec: dict, bare_batches: list, flops: float, roof: float) -> dict:
    """num_workers 0, 1 and 2 but the config's (the main figure), thread placement off, workers not
    niced, the loader restarted each pass, numpy's feature path instead of our C++ front end, numpy's
    BLAS on 1 thread (forked workers inherit it), augmentation off, and the loader with every sample
    computed beforehand (its own cost without the features), each as unit pairs on the same batches
    (the restarted loader as one pair of passes)."""
    from utils import feature_kernels
    from utils.data import SpeechDataset

    def measured(loader, label: str, batches: list = bare_batches, batches_flops: float = flops) -> dict:
        return lever_figures(run, loader, batches, label, batches_flops, roof, spec["lever_unit_pairs"])

    levers = {}
    for workers in [w for w in spec["lever_workers"] if w != cfg.data.num_workers]:
        with unplaced(run, workers <= 0):  # train.py does not place threads without loader workers
            loader = run_loader(run, cfg, num_workers=workers, placed=workers > 0)
            figures = measured(loader, f"num_workers={workers}")
        levers[f"num_workers_{workers}"] = _lever_summary(figures)
    if cfg.data.num_workers > 0:
        with unplaced(run):  # threads and workers where the OS puts them, workers niced
            loader = run_loader(run, cfg, placed=False)
            figures = measured(loader, "thread placement off")
        levers[f"thread_placement_off_num_workers_{cfg.data.num_workers}"] = _lever_summary(figures)
        with unplaced(run):  # and at normal priority
            loader = run_loader(run, cfg, niced=False, placed=False)
            figures = measured(loader, "worker not niced")
        levers[f"worker_not_niced_num_workers_{cfg.data.num_workers}"] = _lever_summary(figures)
        loader = RestartedEachPass(run, cfg)
        figures = pairs_figures([pair(run, loader, bare_batches, "loader restarted each pass")], flops, roof)
        levers[f"loader_restarted_each_pass_num_workers_{cfg.data.num_workers}"] = _lever_summary(figures)
    if feature_kernels.load() is not None:  # the same batches through numpy's feature path
        feature_kernels.disable()  # forked loader workers inherit it
        try:
            figures = measured(run_loader(run, cfg), "numpy features")
        finally:
            feature_kernels.disable(False)
        levers[f"numpy_features_num_workers_{cfg.data.num_workers}"] = _lever_summary(figures)
    with blas_threads(1) as blas:  # forked loader workers inherit the limit
        figures = measured(run_loader(run, cfg), "numpy BLAS 1 thread")
        levers[f"numpy_blas_1_thread_num_workers_{cfg.data.num_workers}"] = dict(_lever_summary(figures),
                                                                                 blas_threads=blas)
    plain = SpeechDataset(run.train_set.utterances, run.vocabulary, cfg.features.feature_method,
                          cfg.features.sample_rate, cfg.features.n_mels, None, cfg.train.seed)
    plain_batches = precompute(plain, run.sampler)
    plain_flops = train_flops(model_dict(cfg), run.model.feat_dim, len(run.vocabulary),
                              [tuple(b[0].shape[:2]) for b in plain_batches])
    loader = run_loader(run, cfg, dataset=plain)
    figures = measured(loader, "augmentation off", plain_batches, plain_flops)
    levers[f"augmentation_off_num_workers_{cfg.data.num_workers}"] = _lever_summary(figures)
    # the loader's own cost: the same worker and batches, samples computed beforehand
    run.sampler.set_epoch(MEASURED_EPOCH, 0)
    cached = CachedSamples(run.train_set, [key for keys in run.sampler for key in keys])
    loader = run_loader(run, cfg, dataset=cached)
    figures = measured(loader, "samples cached")
    levers[f"samples_cached_num_workers_{cfg.data.num_workers}"] = _lever_summary(figures)
    return levers


# Batches per unit of unit_pairs. On the noisy 2-core AMD host, 120 pairs of 4-batch units held the
# median of the peer config's pipeline ratio within 1.026-1.060 (90 % interval), where fifteen pairs of
# 16-batch passes had held it within 0.96-1.11, in less than twice the time.
UNIT_BATCHES = 4


def other_loader_lever(run, cfg, bare_batches: list, flops: float, roof: float, pairs_count: int) -> dict:
    """`pairs_count` unit pairs of the other loader's (data.loader: our slots or Paddle's DataLoader,
    utils/batch_workers.py) against the bare step, on the same batches."""
    from utils.data import LOADERS

    if cfg.data.num_workers <= 0:
        return {"used": False, "why": "data.num_workers=0: this process makes the batches with either loader"}
    other = next(name for name in LOADERS if name != cfg.data.loader)
    loader = run_loader(run, cfg, loader=other)
    measured = unit_pairs(run, loader, bare_batches, f"data.loader={other}", pairs_count)
    loader.close()
    return {"used": True, "loader": other, **_lever_summary(unit_figures(measured, flops, roof))}


def kernels_lever(run, bare_batches: list, flops: float, roof: float) -> dict:
    """The bare step with Paddle's kernels and with ours (utils/cpu_kernels.py), two passes each in
    the order paddle, ours, ours, paddle (to cancel drift): the lever on and off."""
    chosen = run.model.cpu_kernels
    if not chosen:
        return {"used": False, "why": "train.cpu_kernels chose Paddle's kernels (see the log)"}
    passes = {False: [], True: []}
    for fused in (False, True, True, False):
        label = "our" if fused else "Paddle's"
        log(f"  bare pass with {label} kernels")
        run.model.cpu_kernels = fused
        passes[fused].append(run_pass(run, bare_batches))
    run.model.cpu_kernels = chosen
    figures = {name: pass_figures(passes[fused], flops, roof) for name, fused in (("ours", True), ("paddle", False))}
    return {"used": True, **{f"{name}_audio_s_per_s": figures[name]["audio_s_per_s"]["median"] for name in figures},
            **{f"{name}_roof_fraction": figures[name]["roof_fraction"] for name in figures},
            "speedup": ratio(figures["ours"]["audio_s_per_s"]["median"], figures["paddle"]["audio_s_per_s"]["median"])}


def strided_views_lever(run, bare_batches: list, flops: float, roof: float) -> dict:
    """The bare step with Paddle's strided views from transpose (FLAGS_use_stride_kernel, which
    utils/__init__.py turns off) and without, two passes each in the order on, off, off, on, with
    the kernels train.py chose and with Paddle's (where the features' transpose is Paddle's)."""
    import paddle

    chosen_views = paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"]
    chosen_kernels = run.model.cpu_kernels
    report = {"chosen": "on" if chosen_views else "off"}
    try:
        for kernels in sorted({chosen_kernels, False}, reverse=True):
            run.model.cpu_kernels = kernels
            name = "our_kernels" if kernels else "paddle_kernels"
            passes = {False: [], True: []}
            for views in (True, False, False, True):
                log(f"  bare pass with {name.replace('_', ' ')}, strided views {'on' if views else 'off'}")
                paddle.set_flags({"FLAGS_use_stride_kernel": views})
                passes[views].append(run_pass(run, bare_batches))
            rates = {views: pass_figures(passes[views], flops, roof)["audio_s_per_s"]["median"] for views in passes}
            report[name] = {"views_on_audio_s_per_s": rates[True], "views_off_audio_s_per_s": rates[False],
                            "speedup_without_views": ratio(rates[False], rates[True])}
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": chosen_views})
        run.model.cpu_kernels = chosen_kernels
    return report


class RestartedEachPass:
    """One epoch's batches per iter() from a loader started afresh, its workers forked each time:
    what a loader not kept for the whole run would cost."""

    def __init__(self, run, cfg):
        self.run, self.cfg = run, cfg

    def __iter__(self):
        from utils.data import run_batches

        self.run.sampler.set_epoch(MEASURED_EPOCH, 0)
        batches = run_batches(self.run.train_set, self.run.sampler, self.cfg.data.num_workers, epochs=(),
                              worker_cores=self.run.placement.worker_cores, loader=self.cfg.data.loader)
        try:
            yield from batches
        finally:
            batches.close()


class CachedSamples:
    """dataset[key] -> the sample `dataset` made for key, computed once here (forked workers inherit it)."""

    def __init__(self, dataset, keys: list[int]):
        self.size, self.samples = len(dataset), {key: dataset[key] for key in keys}
        self.dataset = dataset

    def __getattr__(self, name: str):  # durations and feature settings (the loader sizes its slots by them)
        return getattr(self.__dict__["dataset"], name)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int):
        return self.samples[int(key)]


def run_loader(run, cfg, num_workers: int | None = None, niced: bool = True, dataset=None,
               epoch: int = MEASURED_EPOCH, placed: bool = True, loader: str | None = None):
    """train.py's run-long batch iterator, repeating `epoch` at every pass."""
    from utils.data import run_batches

    run.sampler.set_epoch(epoch, 0)
    return run_batches(dataset or run.train_set, run.sampler,
                       cfg.data.num_workers if num_workers is None else num_workers, niced,
                       epochs=itertools.repeat(epoch), worker_cores=run.placement.worker_cores if placed else None,
                       loader=loader or cfg.data.loader)


def _lever_summary(figures: dict) -> dict:
    return {"audio_s_per_s": figures["with_loader"]["audio_s_per_s"]["median"],
            "bare_audio_s_per_s": figures["bare_step"]["audio_s_per_s"]["median"],
            "pipeline_ratio": figures["pipeline_ratio"]["median"],
            "pipeline_ratio_interval": figures["pipeline_ratio_interval"],
            "pipeline_ratio_steady": figures["pipeline_ratio_steady"]["median"],
            "reader_share": figures["with_loader"]["reader_share"],
            "reader_share_steady": figures["with_loader"]["reader_share_steady"],
            "first_batch_wait_s": figures["with_loader"]["first_batch_wait_s"]["median"]}


def threads_worker(spec: dict) -> dict:
    """Bare demo steps and the GEMM roof under this process's thread settings."""
    roof = roof_now(spec)
    cfg = worker_config("conf/demo.yml", spec, "threads")
    cfg.data.augment_conf_path = None
    run = setup_run(cfg)
    batches = precompute(run.train_set, run.sampler)
    flops = train_flops(model_dict(cfg), run.model.feat_dim, len(run.vocabulary),
                        [tuple(b[0].shape[:2]) for b in batches])
    warm = warm_up(run, batches)
    passes = [run_pass(run, batches) for _ in range(spec["repeats"])]
    figures = pass_figures(passes, flops, roof["roof_gflops"])
    return {"warm_up_step_s": rounded(warm), "gemm": roof, "audio_s_per_s": figures["audio_s_per_s"],
            "features_no_augmentation_per_batch": {k: rounded(v) for k, v in PIPELINE_CPU[0].items()},
            "step_s": summarize([s + w for p in passes for w, s in zip(p["waits"], p["steps"])]),
            "gflops": figures["gflops"], "roof_fraction": figures["roof_fraction"]}


def reference_worker(spec: dict) -> dict:
    """A few bare steps of conf/deepspeech2.yml on real 161-dim spectrograms of 2-4 s clips."""
    import paddle

    from utils import cpu_kernels, optim, training
    from utils.checkpoint import TrainState
    from utils.config import Config, load_yaml
    from utils.data import SpeechDataset, collate
    from utils.features import feature_dim
    from utils.manifest import read_manifest
    from utils.model import build_model
    from utils.text import Vocabulary

    roof = roof_now(spec)
    cfg = Config()
    load_yaml(cfg, str(ROOT / "conf/deepspeech2.yml"))
    cfg.train.batch_size = spec["ref_batch_size"]
    f = cfg.features
    vocabulary = Vocabulary.load(spec["corpus"]["vocabulary"])
    utterances = read_manifest(spec["subset"])[:cfg.train.batch_size]
    dataset = SpeechDataset(utterances, vocabulary, f.feature_method, f.sample_rate, f.n_mels)
    dim = feature_dim(f.feature_method, f.sample_rate, f.n_mels)
    model = build_model(cfg.model, dim, len(vocabulary))
    gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    model.cpu_kernels, kernels = cpu_kernels.choose(cfg.train.cpu_kernels, on_cpu=not gpu)  # as train.py does
    run = training._Run(cfg=cfg, rank=0, world_size=1, model=model, parallel=model,
                        optimizer=optim.build_optimizer(cfg, model), scaler=None, train_set=dataset,
                        state=TrainState(), nan_in_row=0)
    batch = [paddle.to_tensor(a) for a in collate([dataset[i] for i in range(len(dataset))])]
    model.train()

    def time_steps(label: str) -> list:
        seconds = []
        for step in range(spec["ref_steps"]):
            start = time.perf_counter()
            training._train_step(run, batch, step)
            if gpu:
                paddle.device.synchronize()
            seconds.append(time.perf_counter() - start)
            log(f"  reference{label} step {step + 1}: {seconds[-1]:.3f} s")
        return seconds

    seconds = time_steps("")
    timed_steps = seconds[1:] or seconds
    audio = float(batch[1].numpy().sum()) * FRAME_SECONDS
    shape = tuple(batch[0].shape[:2])
    flops = train_flops(model_dict(cfg), dim, len(vocabulary), [shape])
    step = statistics.median(timed_steps)
    amp = {"skipped": "no GPU"}
    if gpu:  # the same steps under AMP O1 with a loss scaler, as train.py --use_amp=true runs them
        run.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15)
        amp_seconds = time_steps(" AMP")
        amp_step = statistics.median(amp_seconds[1:] or amp_seconds)
        amp = {"step_s": summarize(amp_seconds[1:] or amp_seconds), "audio_s_per_s": rounded(audio / amp_step),
               "speedup_vs_float32": ratio(step, amp_step)}
    return {"config": "conf/deepspeech2.yml", "model": model_dict(cfg), "feature_method": f.feature_method,
            "device": paddle.device.get_device(), "kernels": kernels, "feat_dim": dim, "batch_shape": list(shape),
            "first_step_s": rounded(seconds[0]), "step_s": summarize(timed_steps),
            "audio_s_per_s": rounded(audio / step), "gpu_amp": amp,
            "gflops": rounded(flops / step / 1e9), "roof_fraction": rounded(flops / step / 1e9 / roof["roof_gflops"]),
            "gemm": roof, "maxrss_mb": rounded(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def memory_worker(spec: dict) -> dict:
    """Peak memory of train.py's set-up and a few real steps with a manifest of spec["lines"]
    lines (the subset's clips repeated): the run as _setup builds it, then `batches` steps."""
    from utils import training

    lines = spec["lines"]
    subset = Path(spec["subset"]).read_text(encoding="utf-8").splitlines()
    manifest = Path(spec["work"]) / f"memory_{lines}.train"
    manifest.write_text("\n".join(subset[i % len(subset)] for i in range(lines)) + "\n", encoding="utf-8")
    cfg = worker_config("conf/demo.yml", dict(spec, subset=str(manifest)), f"memory_{lines}")
    run = setup_run(cfg)
    assert len(run.train_set) == lines  # (reading the manifest again here would double what is measured)
    batches = run_loader(run, cfg, epoch=0)  # SortaGrad's first batches: the same clips at every size
    for step in range(spec["memory_batches"]):
        training._train_step(run, next(batches), step)
    return {"lines": lines, "manifest_mb": rounded(manifest.stat().st_size / 2 ** 20),
            "maxrss_mb": rounded(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def memory_levels(spec: dict, timeout: float) -> dict:
    """memory_worker at each manifest size, spec["memory_repeats"] fresh processes each, sizes interleaved
    (one process's peak moves by 10-20 MB from run to run); growth from the first size's median peak
    to the last's."""
    sizes_ = spec["memory_lines"]
    peaks: dict[int, list] = {n: [] for n in sizes_}
    runs = {}
    for _ in range(spec["memory_repeats"]):
        for n in sizes_:
            runs[f"lines_{n}"] = worker("memory", dict(spec, lines=n), timeout)
            peaks[n].append(runs[f"lines_{n}"]["maxrss_mb"])
    for n in sizes_:
        runs[f"lines_{n}"].update(maxrss_mb=rounded(statistics.median(peaks[n])), maxrss_mb_runs=peaks[n])
    first, last = (runs[f"lines_{n}"] for n in (sizes_[0], sizes_[-1]))
    runs["growth_mb"] = rounded(last["maxrss_mb"] - first["maxrss_mb"])
    runs["manifest_growth_mb"] = rounded(last["manifest_mb"] - first["manifest_mb"])
    return runs


def worker_main(kind: str, spec: dict) -> None:
    threads = configure_threads(spec.get("mkl", "toolkit"), spec.get("threads"), spec.get("extra_env"))
    log(f"worker {kind}: {threads}, load {load_average()}")
    started, load_start = time.perf_counter(), load_average()
    if kind == "demo":
        report = loader_worker(spec, "conf/demo.yml", "demo", None, levers=True)
    elif kind == "peer":
        report = loader_worker(spec, "conf/demo.yml", "peer", PEER_MODEL, levers=False)
    elif kind == "threads":
        report = threads_worker(spec)
    elif kind == "reference":
        report = reference_worker(spec)
    elif kind == "memory":
        report = memory_worker(spec)
    else:
        raise SystemExit(f"unknown worker {kind}")
    report.update(thread_settings=threads, load_average_start=load_start, load_average_end=load_average(),
                  worker_wall_s=rounded(time.perf_counter() - started))
    emit(report)


# ----------------------------------------------------------------------------- parent
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs (tests)")
    parser.add_argument("--corpus", default="auto", help="auto, synthetic or a folder with create_data.py outputs")
    parser.add_argument("--work_dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--utterances", type=int, default=None, help="2-4 s clips in the benchmark subset")
    parser.add_argument("--batch_size", type=int, default=None, help="demo and peer batch size (16)")
    parser.add_argument("--batches", type=int, default=None, help="batches per pass (16)")
    parser.add_argument("--unit_pairs", type=int, default=None,
                        help="(loader, bare) pairs of 4-batch units for the pipeline ratio (120)")
    parser.add_argument("--ref_steps", type=int, default=None, help="steps of the reference config (3)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["demo", "peer", "threads", "reference", "memory"],
                        help="parts to leave out")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per worker process")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    parser.add_argument("--_spec", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def sizes(args) -> dict:
    quick = args.quick
    pick = lambda value, full, small: value if value is not None else (small if quick else full)  # noqa: E731
    return {"batch_size": pick(args.batch_size, 16, 4), "batches": pick(args.batches, 16, 2),
            "unit_pairs": pick(args.unit_pairs, 120, 2), "lever_unit_pairs": 1 if quick else 12,
            "ref_steps": pick(args.ref_steps, 3, 2),
            "ref_batch_size": 2 if quick else 16, "utterances": pick(args.utterances, 400, 16),
            "gemm_size": 1024 if quick else 2048, "gemm_repeats": 3 if quick else 5,
            "lever_workers": [0, 1, 2], "threads_batches": 1 if quick else 3,
            "memory_lines": [200, 2000] if quick else [1000, 10000, 100000], "memory_batches": 2 if quick else 3,
            "memory_repeats": 1 if quick else 3}


def worker(kind: str, spec: dict, timeout: float, env: dict | None = None) -> dict:
    log(f"starting worker {kind} {env or ''}")
    return run_json(["tools/bench_train.py", "--_worker", kind, "--_spec", json.dumps(spec)], env, timeout)


def thread_levers(spec: dict, timeout: float) -> dict:
    settings = {f"mkl_{mkl}_threads_{threads}": (mkl, threads, {}) for threads in (1, 2) for mkl in ("stock", "5")}
    settings["mkl_stock_threads_2_passive_wait"] = ("stock", 2, PASSIVE_WAIT)
    small = dict(spec, batches=spec["threads_batches"], repeats=1)
    results = {name: worker("threads", dict(small, mkl=mkl, threads=threads, extra_env=extra), timeout)
               for name, (mkl, threads, extra) in settings.items()}
    rate = lambda name: (results[name].get("audio_s_per_s") or {}).get("median", float("nan"))  # noqa: E731
    feature_cpu = lambda name: (results[name].get("features_no_augmentation_per_batch")  # noqa: E731
                                or {}).get("process_cpu_s", float("nan"))
    results["speedups_across_processes"] = {
        "mkl_5_vs_stock_1_thread": ratio(rate("mkl_5_threads_1"), rate("mkl_stock_threads_1")),
        "mkl_5_vs_stock_2_threads": ratio(rate("mkl_5_threads_2"), rate("mkl_stock_threads_2")),
        "2_vs_1_threads_mkl_5": ratio(rate("mkl_5_threads_2"), rate("mkl_5_threads_1")),
        "2_vs_1_threads_mkl_stock": ratio(rate("mkl_stock_threads_2"), rate("mkl_stock_threads_1")),
        "passive_vs_default_wait_mkl_stock_2_threads": ratio(rate("mkl_stock_threads_2_passive_wait"),
                                                             rate("mkl_stock_threads_2")),
        "features_cpu_per_batch_blas_2_vs_1_threads": ratio(feature_cpu("mkl_5_threads_2"),
                                                            feature_cpu("mkl_5_threads_1")),
        "note": "each setting ran in its own process, one after another; as noisy as the load average"}
    return results


def verdicts(report: dict) -> dict:
    demo, out = report.get("demo", {}), {}
    if "with_loader" in demo:
        out["demo_reader_share"] = {"value": demo["with_loader"]["reader_share"],
                                    "target": f"< {TARGETS['reader_share_max']}",
                                    "met": demo["with_loader"]["reader_share"] < TARGETS["reader_share_max"]}
        out["demo_pipeline_ratio"] = ratio_verdict(demo, "pipeline_ratio")
        value = demo["bare_step"]["roof_fraction"]
        out["demo_roof_fraction"] = {"value": value, "target": f">= {TARGETS['roof_fraction_min']}",
                                     "met": value >= TARGETS["roof_fraction_min"],
                                     "ceiling": demo["roof_ceiling"]["ceiling_roof_fraction"]}
    for name in ("peer_equivalent", "peer_equivalent_mkl_stock_1_thread", "peer_equivalent_freed_memory_returned"):
        peer = report.get(name, {})
        if "with_loader" not in peer:
            continue
        value = peer["with_loader"]["audio_s_per_s"]["median"]
        goal = TARGETS["peer_speedup_min"] * PEER["audio_s_per_s_stock"]
        out[f"{name}_audio_s_per_s"] = {"value": value, "target": f">= {goal}", "met": value >= goal,
                                        "vs_peer_stock": ratio(value, PEER["audio_s_per_s_stock"]),
                                        "vs_peer_mkl_fix": ratio(value, PEER["audio_s_per_s_mkl_fix"])}
        out[f"{name}_pipeline_ratio"] = ratio_verdict(peer, "pipeline_ratio")
        value = peer["bare_step"]["roof_fraction"]
        out[f"{name}_roof_fraction"] = {"value": value, "target": f">= {TARGETS['roof_fraction_min']}",
                                        "met": value >= TARGETS["roof_fraction_min"]}
    for key in [key for key in out if key.startswith("peer_equivalent_mkl_stock_1_thread_")]:
        # the peer's own thread settings, which train.py does not run with: a comparison, not a target
        out[key] = ({k: v for k, v in out[key].items() if k not in ("target", "met", "interval_says")}
                    | {"target": COMPARISON_ONLY})
    return out


def ratio_verdict(figures: dict, key: str) -> dict:
    """The pipeline ratio's verdict: its median pair against the target ("met"), and whether the
    interval for that median (MEDIAN_INTERVAL_LEVEL) settles it on this host ("interval_says")."""
    limit, value = TARGETS["pipeline_ratio_max"], figures[key]["median"]
    verdict = {"value": value, "target": f"<= {limit}", "met": value <= limit}
    interval = figures.get(f"{key}_interval")
    if interval:  # reports written before the interval have none
        verdict |= {"median_interval": interval, "interval_says": interval_says(interval, limit)}
    return verdict


COMPARISON_ONLY = ("none: the peer's thread settings (MKL as shipped, one thread), a comparison; train.py "
                   "chooses its own (thread_settings)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        worker_main(args._worker, json.loads(args._spec))
        return 0
    size = sizes(args)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = {"tool": "bench_train", "quick": args.quick, "machine": machine_info(), "sizes": size}
        # about 2/3 of the demo corpus's clips are 2-4 s long: generate enough for the subset
        corpus = find_corpus(args.corpus, work, num_train=int(size["utterances"] * 1.7) + 16)
        subset = write_subset(corpus.train_manifest, work / "bench.train", size["utterances"], *CLIP_SECONDS)
        report.update(corpus=corpus.as_dict(), subset=subset, peer=PEER, targets=TARGETS)
        spec = dict(size, corpus=corpus.as_dict(), subset=subset["manifest"], work=str(work))
        if "demo" not in args.skip:
            report["demo"] = worker("demo", spec, args.timeout)
            report["demo"].setdefault("padding_waste", {})["full_corpus"] = full_corpus_padding(corpus, size)
        if "peer" not in args.skip:
            report["peer_equivalent"] = worker("peer", spec, args.timeout)
            fewer = dict(spec, unit_pairs=max(1, spec["unit_pairs"] // 3))  # comparisons: a third of the pairs
            report["peer_equivalent_mkl_stock_1_thread"] = worker("peer", dict(fewer, mkl="stock", threads=1),
                                                                  args.timeout)
            report["peer_equivalent_freed_memory_returned"] = worker("peer", dict(fewer, keep_freed_memory=False),
                                                                     args.timeout)
        if "threads" not in args.skip:
            report["threads"] = thread_levers(spec, args.timeout)
        if "reference" not in args.skip:
            report["reference"] = worker("reference", spec, args.timeout)
        if "memory" not in args.skip:
            report["memory"] = memory_levels(spec, args.timeout)
        report["verdicts"] = verdicts(report)
        report["load_average_end"] = load_average()
    emit(report)
    return 0


def full_corpus_padding(corpus, size: dict) -> dict:
    """Padding per epoch over every training utterance the demo config keeps (0.5-20 s)."""
    from utils.manifest import read_manifest

    durations = [u.duration for u in read_manifest(corpus.train_manifest, None, 0.5, 20.0)]
    return epoch_padding(durations, size["batch_size"], 1000, PADDING_EPOCHS)


if __name__ == "__main__":
    sys.exit(main())

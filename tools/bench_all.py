"""Run every benchmark and write one JSON report; prints a short table (what `make bench` runs).

    python tools/bench_all.py --out bench/report.json [--quick] [--corpus auto] [--only train decode]

Runs tools/bench_create_data.py, tools/bench_train.py and tools/bench_decode.py, each in its
own process (their JSON goes into the report under "benchmarks"), and adds the CPU model,
thread settings, load average before and after, the date and the command. Figures are
min/median/max over repeats inside each benchmark; targets are ratios measured in one run.
The load average matters: on a shared machine every absolute figure moves with it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.bench_common import load_average, log, machine_info, run_json  # noqa: E402

BENCHMARKS = ("create_data", "train", "decode")


def commands(args) -> dict:
    quick = ["--quick"] if args.quick else []
    corpus = ["--corpus", args.corpus]
    create_quick = ["--utterances", "200", "--unique", "40", "--memory_lines", "500,2000"]
    return {"create_data": ["tools/bench_create_data.py"] + (create_quick if args.quick else []),
            "train": ["tools/bench_train.py", *quick, *corpus],
            "decode": ["tools/bench_decode.py", *quick, *corpus]}


def _get(report: dict, *keys, default=None):
    for key in keys:
        if not isinstance(report, dict) or key not in report:
            return default
        report = report[key]
    return report


def _ms(seconds) -> str:
    """Seconds as milliseconds to one decimal; '-' where the report has none."""
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def with_interval(target: str, verdict) -> str:
    """The target, and where its verdict's interval for the median lies and what that settles."""
    if not isinstance(verdict, dict) or "median_interval" not in verdict:
        return target
    interval = verdict["median_interval"]
    return (f"{target}; median in {interval['low']:.4g}-{interval['high']:.4g} "
            f"({interval['coverage']:.0%}): {verdict['interval_says']}")


def table_rows(benchmarks: dict) -> list[tuple[str, object, str]]:
    """(figure, value, target) for the short table."""
    c, t, d = (benchmarks.get(name, {}) for name in BENCHMARKS)
    workers = _get(t, "demo", "num_workers", default=0)
    rows = [
        ("create_data audio-h per wall-h per core", _get(c, "throughput", "create_data",
                                                         "audio_hours_per_wall_hour_per_core"), ">= 500"),
        ("create_data memory growth 1k->100k lines, MB", _get(c, "memory", "growth_mb_process"), "~0"),
        ("train peak memory growth 1k->100k lines, MB (manifest itself)",
         f"{_get(t, 'memory', 'growth_mb')} ({_get(t, 'memory', 'manifest_growth_mb')})", "~ manifest"),
        ("train demo audio-s/s (loader)", _get(t, "demo", "with_loader", "audio_s_per_s", "median"), ""),
        ("train demo audio-s/s (bare step)", _get(t, "demo", "bare_step", "audio_s_per_s", "median"), ""),
        ("train demo pipeline ratio", _get(t, "demo", "pipeline_ratio", "median"),
         with_interval("<= 1.05", _get(t, "verdicts", "demo_pipeline_ratio"))),
        ("train demo pipeline ratio, pairs of whole passes", _get(t, "demo", "pipeline_ratio_passes", "median"), ""),
        ("train demo loader's first pass / bare pass (once a run)", _get(t, "demo", "first_pass_ratio"), ""),
        ("train demo reader share", _get(t, "demo", "with_loader", "reader_share"), "< 0.10"),
        ("train demo GFLOP/s (bare)", _get(t, "demo", "bare_step", "gflops", "median"), ""),
        ("train demo GEMM roof GFLOP/s", _get(t, "demo", "gemm", "roof_gflops"), ""),
        ("train demo fraction of roof", _get(t, "demo", "bare_step", "roof_fraction"), ">= 0.5"),
        ("train demo fraction of roof, ceiling of the model shape", _get(t, "demo", "roof_ceiling",
                                                                         "ceiling_roof_fraction"), ""),
        ("train demo bare step, our CPU kernels / Paddle's (speedup)", _get(t, "demo", "cpu_kernels", "speedup"), ""),
        ("train demo fraction of roof with Paddle's kernels", _get(t, "demo", "cpu_kernels", "paddle_roof_fraction"),
         ""),
        ("train demo padding waste, epoch 2", (_get(t, "demo", "padding_waste", "full_corpus", "sampler_per_epoch")
                                               or [None, None])[1], "low"),
        ("train peer-equivalent audio-s/s (loader)", _get(t, "peer_equivalent", "with_loader", "audio_s_per_s",
                                                          "median"), ">= 135 (2 x 67.5)"),
        ("train peer-equivalent pipeline ratio", _get(t, "peer_equivalent", "pipeline_ratio", "median"),
         with_interval("<= 1.05", _get(t, "verdicts", "peer_equivalent_pipeline_ratio"))),
        ("train loader worker CPU ms/batch beside the step, demo / peer config",
         f"{_ms(_get(t, 'demo', 'worker_cpu_s_per_batch_beside_step'))} / "
         f"{_ms(_get(t, 'peer_equivalent', 'worker_cpu_s_per_batch_beside_step'))}", ""),
        ("train peer-equiv. MKL stock, 1 thread, audio-s/s", _get(t, "peer_equivalent_mkl_stock_1_thread",
                                                                  "with_loader", "audio_s_per_s", "median"),
         "(peer's settings)"),
        ("train demo pipeline ratio, numpy BLAS 1 thread", _get(t, "demo", "levers",
                                                                f"numpy_blas_1_thread_num_workers_{workers}",
                                                                "pipeline_ratio"), "<= 1.05"),
        ("train demo pipeline ratio, samples computed beforehand (the loader's own cost)",
         _get(t, "demo", "levers", f"samples_cached_num_workers_{workers}", "pipeline_ratio"), ""),
        ("train demo pipeline ratio, features in a thread (num_workers 0)",
         _get(t, "demo", "levers", "num_workers_0", "pipeline_ratio"), ""),
        ("train reference audio-s/s", _get(t, "reference", "audio_s_per_s"), "(peer 4.0)"),
        ("train reference AMP / float32 speedup (GPU only)", _get(t, "reference", "gpu_amp", "speedup_vs_float32",
                                                                  default="no GPU"), ""),
        ("train MKL_DEBUG_CPU_TYPE=5 speedup, 1 thread", _get(t, "threads", "speedups_across_processes",
                                                              "mkl_5_vs_stock_1_thread"), ""),
        ("train 2 vs 1 threads speedup (MKL stock)", _get(t, "threads", "speedups_across_processes",
                                                          "2_vs_1_threads_mkl_stock"), ""),
        ("train features CPU, BLAS 2 vs 1 thread", _get(t, "threads", "speedups_across_processes",
                                                        "features_cpu_per_batch_blas_2_vs_1_threads"), ""),
        ("decode greedy ms per audio-s (best runner)", _get(d, "verdicts", "greedy_ms_per_audio_s", "value"), "<= 7"),
        ("decode eval path ms per audio-s (ONNX Runtime)", _get(d, "eval_path", "onnx", "ms_per_audio_s", "median"),
         "(peer 14)"),
        ("decode eval path ms per audio-s (exported, oneDNN)", _get(d, "eval_path", "exported_onednn",
                                                                    "ms_per_audio_s", "median"), ""),
        ("decode eval path ms per audio-s (exported, plain, 1 thread)", _get(d, "eval_path", "exported_1_thread",
                                                                             "ms_per_audio_s", "median"), ""),
        ("decode beam 300 + LM RTF per core", _get(d, "verdicts", "beam_rtf_per_core", "value"), "<= 0.02"),
        ("infer 8 s file, exported, ms", _get(d, "verdicts", "infer_8s_exported_ms", "value"),
         with_interval("<= 30", _get(d, "verdicts", "infer_8s_exported_ms"))),
        ("infer 8 s file, ONNX Runtime / Paddle Inference oneDNN", _get(d, "infer_8s", "onnx_vs_onednn"), "keep < 1"),
        ("infer 8 s file, oneDNN / plain kernels (2 threads)", _get(d, "infer_8s", "onednn_vs_plain_2_threads"),
         "keep < 1"),
        ("infer 8 s file, checkpoint, ms", _get(d, "infer_8s", "checkpoint_ms", "median"), "(peer 75)"),
        ("infer 8 s file, Paddle Inference 1 thread, numpy BLAS 1 thread, ms",
         _get(d, "infer_8s", "exported_1_thread_blas_1_ms", "median"), ""),
        ("decode eval path, numpy BLAS 1 thread, ms/audio-s", _get(d, "eval_path", "exported_1_thread",
                                                                   "ms_per_audio_s_blas_1", "median"), ""),
    ]
    return rows


def print_table(report: dict) -> None:
    rows = table_rows(report["benchmarks"])
    width = max(len(r[0]) for r in rows)
    if report["quick"]:
        print("quick mode: tiny sizes, a check that everything runs; the figures are not representative")
    print(f"{'figure':<{width}}  {'value':>10}  target")
    for name, value, target in rows:
        shown = "n/a" if value is None else (f"{value:.4g}" if isinstance(value, (int, float)) else str(value))
        print(f"{name:<{width}}  {shown:>10}  {target}")
    for name, bench in report["benchmarks"].items():
        if "error" in bench:
            print(f"{name}: FAILED: {bench['error']}")
    print(f"load average before {report['load_average_start']}, after {report['load_average_end']} on "
          f"{report['machine']['usable_cores']} cores ({report['machine']['cpu_model']})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/report.json", help="report file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--corpus", default="auto", help="auto, synthetic or a folder (bench_train, bench_decode)")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = parser.parse_args(argv)
    report = {"tool": "bench_all", "command": " ".join(["python"] + [str(Path(sys.argv[0]))] + sys.argv[1:]),
              "quick": args.quick, "machine": machine_info(), "load_average_start": load_average(),
              "benchmarks": {}, "wall_s": {}}
    for name, command in commands(args).items():
        if name not in args.only:
            continue
        log(f"bench_all: {name}: {' '.join(command)}")
        start = time.perf_counter()
        report["benchmarks"][name] = run_json(command, timeout=args.timeout)
        report["wall_s"][name] = round(time.perf_counter() - start, 1)
    report["load_average_end"] = load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_table(report)
    print(f"report: {out}")
    return 1 if any("error" in bench for bench in report["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

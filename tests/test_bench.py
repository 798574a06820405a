"""The benchmarks run end to end in --quick mode and report the keys the README and issue 6 use.

Timings are never checked here (benchmarks print them; tests do not time anything); the
FLOP count and padding figures, which are arithmetic, are pinned.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.bench_all import _ms, with_interval
from tools.bench_common import interval_says, median_interval, summarize
from tools.bench_train import (epoch_padding, forward_flops, joined, processes_cpu_s, recurrent_train_flops,
                               roof_ceiling, train_flops)

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"min", "median", "max", "mean", "n"}


def test_summarize_pins_min_median_max():
    assert summarize([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "mean": 2.0, "n": 3}
    assert summarize([]) == {"n": 0}


def test_median_interval_takes_the_order_statistics_of_its_coverage():
    # 15 repeats: the 4th smallest and 4th largest cover the median with 1 - 2 * 576 / 2**15
    assert median_interval(range(15, 0, -1)) == {"low": 4.0, "high": 12.0, "coverage": 0.965, "n": 15}
    # 21 repeats: the 7th (0.922); 5 repeats: min and max, the most that five can give (0.938)
    assert median_interval(range(1, 22))["low"] == 7.0 and median_interval(range(1, 22))["coverage"] == 0.922
    assert median_interval([5, 1, 3, 2, 4]) == {"low": 1.0, "high": 5.0, "coverage": 0.938, "n": 5}
    assert median_interval([]) == {"n": 0}


def test_interval_says_settles_a_target_only_when_the_whole_interval_does():
    assert interval_says({"low": 0.95, "high": 1.04}, 1.05) == "met"
    assert interval_says({"low": 1.01, "high": 1.09}, 1.05) == "undecided"
    assert interval_says({"low": 1.06, "high": 1.09}, 1.05) == "not met"
    verdict = {"value": 1.03, "median_interval": {"low": 1.01, "high": 1.09, "coverage": 0.965},
               "interval_says": "undecided"}
    assert with_interval("<= 1.05", verdict) == "<= 1.05; median in 1.01-1.09 (96%): undecided"
    assert with_interval("<= 1.05", None) == "<= 1.05"


def test_processes_cpu_counts_a_busy_child_and_skips_one_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while processes_cpu_s([child.pid]) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.25 <= processes_cpu_s([child.pid]) < 5
    finally:
        child.kill()
        child.wait()
    assert processes_cpu_s([child.pid]) == 0  # reaped: no /proc entry
    assert processes_cpu_s([]) == 0 and processes_cpu_s([os.getpid()]) > 0
    assert _ms(0.0123) == "12.3" and _ms(None) == "-"


def test_joined_units_add_up_to_one_pass():
    def unit(wall, first_batch, shapes):
        return {"wall_s": wall, "steady_wall_s": wall - first_batch, "cpu_s": 2 * wall, "waits": [0.01] * len(shapes),
                "steps": [wall / len(shapes) - 0.01] * len(shapes), "page_faults_per_step": wall,
                "shapes": shapes, "audio_s": 10.0, "utterances": 16, "padded_frames": 400, "real_frames": 380}

    whole = joined([unit(1.0, 0.3, [(16, 100)] * 4), unit(2.0, 0.5, [(16, 200)] * 4)])
    assert whole["wall_s"] == 3.0 and whole["steady_wall_s"] == pytest.approx(2.7)  # without the pass's first batch
    assert whole["cpu_s"] == 6.0 and whole["page_faults_per_step"] == 1.5
    assert whole["shapes"] == [(16, 100)] * 4 + [(16, 200)] * 4 and len(whole["waits"]) == len(whole["steps"]) == 8
    assert (whole["audio_s"], whole["utterances"], whole["padded_frames"], whole["real_frames"]) == (20.0, 32, 800, 760)


def test_flops_counted_from_shapes():
    # feats [2, 10, 8]; conv 1->4 channels, 3x3, stride 2: [4, 4, 5] -> 2*1*4*3*3*4*5 = 1440;
    # GRU 16 -> 5: 3 gates * 2*(16+5)*5 = 630 per step; head 2*5*6 = 60 per step; 5 steps.
    cfg = {"conv_channels": [4], "conv_kernels": [[3, 3]], "conv_strides": [[2, 2]], "rnn_type": "gru",
           "num_rnn_layers": 1, "rnn_size": 5, "bidirectional": False}
    assert forward_flops(cfg, 8, 6, 2, 10) == 2 * (1440 + 5 * (630 + 60))
    assert train_flops(cfg, 8, 6, [(2, 10)]) == 3 * 2 * (1440 + 5 * (630 + 60))
    lstm = dict(cfg, rnn_type="lstm", bidirectional=True)  # 4 gates, 2 directions, head sees 10 inputs
    assert forward_flops(lstm, 8, 6, 1, 10) == 1440 + 5 * (2 * 4 * 2 * (16 + 5) * 5 + 2 * 10 * 6)


def test_recurrent_flops_and_the_roof_ceiling():
    # 5 frames after the conv; GRU hidden 5: 3 gates * 2*5*5 = 150 per frame, twice (forward product
    # and its input gradient), batch 2
    cfg = {"conv_channels": [4], "conv_kernels": [[3, 3]], "conv_strides": [[2, 2]], "rnn_type": "gru",
           "num_rnn_layers": 1, "rnn_size": 5, "bidirectional": False}
    assert recurrent_train_flops(cfg, [(2, 10)]) == 2 * 150 * 2 * 5
    total = train_flops(cfg, 8, 6, [(2, 10)])  # 3 x 9780
    ceiling = roof_ceiling(cfg, 8, 6, [(2, 10)], roof=100.0, recurrent_rate=25.0)
    seconds = 3000 / 25e9 + (total - 3000) / 100e9
    assert ceiling["ceiling_roof_fraction"] == pytest.approx(total / seconds / 100e9, rel=1e-3)
    assert ceiling["recurrent_share_of_flops"] == pytest.approx(3000 / total, rel=1e-3)


def test_padding_of_sorted_first_epoch_is_zero_for_equal_pairs():
    padding = epoch_padding([1.0, 2.0, 1.0, 2.0], batch_size=2, seed=0, epochs=2)
    assert padding["sampler_per_epoch"][0] == 0.0  # SortaGrad pairs the equal durations
    assert len(padding["random_batches_per_epoch"]) == 2


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "report.json"
    result = subprocess.run([sys.executable, "tools/bench_all.py", "--quick", "--corpus", "synthetic",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train demo pipeline ratio" in result.stdout  # the table
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_all_report_has_machine_and_every_benchmark(report):
    assert {"cpu_model", "usable_cores", "load_average_1_5_15", "thread_settings", "date"} <= set(report["machine"])
    assert set(report["benchmarks"]) == {"create_data", "train", "decode"}
    for bench in report["benchmarks"].values():
        assert "error" not in bench, bench.get("error")


@pytest.mark.slow
def test_bench_train_keys(report):
    train = report["benchmarks"]["train"]
    demo = train["demo"]
    for part in ("with_loader", "bare_step"):
        assert SUMMARY_KEYS <= set(demo[part]["audio_s_per_s"])
        assert {"reader_share", "reader_share_steady", "gflops", "roof_fraction", "utterances_per_s"} <= \
            set(demo[part])
    assert SUMMARY_KEYS <= set(demo["pipeline_ratio"]) and SUMMARY_KEYS <= set(demo["pipeline_ratio_steady"])
    assert SUMMARY_KEYS <= set(demo["pipeline_ratio_passes"]) and demo["first_pass_ratio"] > 0
    assert demo["unit_pairs"] >= 2 and demo["unit_batches"] >= 1 and demo["pipeline_ratio"]["n"] == demo["unit_pairs"]
    assert demo["gemm"]["roof_gflops"] > 0
    assert demo["recurrent_product"]["rate_gflops"] > 0
    assert 0 < demo["roof_ceiling"]["ceiling_roof_fraction"] <= 1.5
    workers = demo["num_workers"]  # conf/demo.yml's; the other counts are levers
    assert set(demo["levers"]) == {f"num_workers_{w}" for w in (0, 1, 2) if w != workers} | {
        f"augmentation_off_num_workers_{workers}", f"numpy_blas_1_thread_num_workers_{workers}",
        f"samples_cached_num_workers_{workers}", f"numpy_features_num_workers_{workers}"} | (
        {f"worker_not_niced_num_workers_{workers}", f"loader_restarted_each_pass_num_workers_{workers}"}
        if workers > 0 else set()) | (  # pinned threads (utils/placement.py) where the machine allows
        {f"thread_placement_off_num_workers_{workers}"} if demo["thread_placement"].startswith("threads: OpenMP")
        else set())
    assert {"features_cpu_s_per_batch", "bare_step_cpu_s_per_batch", "share"} <= set(demo["pipeline_cpu"])
    beside = demo["worker_cpu_s_per_batch_beside_step"]  # the loader's workers, read from /proc
    assert beside is None if workers == 0 else beside >= 0
    kernels = demo["cpu_kernels"]  # the lever on and off: ours (utils/cpu_kernels.py) and Paddle's
    assert kernels["used"] and kernels["ours_audio_s_per_s"] > 0 and kernels["paddle_audio_s_per_s"] > 0
    other = demo["other_loader"]  # data.loader: Paddle's DataLoader against our slots (utils/batch_workers.py)
    assert not other["used"] if workers == 0 else other["loader"] == "paddle" and other["pipeline_ratio"] > 0
    assert {"subset", "full_corpus"} <= set(demo["padding_waste"])
    assert {"lines_200", "lines_2000", "growth_mb", "manifest_growth_mb"} <= set(train["memory"])
    assert train["memory"]["lines_2000"]["maxrss_mb"] > 0
    assert "with_loader" in train["peer_equivalent"] and "other_loader" in train["peer_equivalent"]
    tuned = train["peer_equivalent_mkl_stock_1_thread"]
    assert tuned["thread_settings"]["OMP_NUM_THREADS"] == "1" and "with_loader" in tuned
    assert {"mkl_stock_threads_1", "mkl_5_threads_1", "mkl_stock_threads_2", "mkl_5_threads_2",
            "mkl_stock_threads_2_passive_wait", "speedups_across_processes"} <= set(train["threads"])
    assert train["threads"]["mkl_stock_threads_2_passive_wait"]["thread_settings"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert train["threads"]["mkl_stock_threads_1"]["thread_settings"]["MKL_DEBUG_CPU_TYPE"] is None
    assert train["threads"]["mkl_5_threads_2"]["thread_settings"]["OMP_NUM_THREADS"] == "2"
    assert {"audio_s_per_s", "step_s", "gflops"} <= set(train["reference"])
    assert {"demo_reader_share", "demo_pipeline_ratio", "demo_roof_fraction",
            "peer_equivalent_audio_s_per_s"} <= set(train["verdicts"])
    for name in ("demo_pipeline_ratio", "peer_equivalent_pipeline_ratio"):
        assert train["verdicts"][name]["interval_says"] in ("met", "not met", "undecided")
        interval = train["verdicts"][name]["median_interval"]
        assert interval["low"] <= train["verdicts"][name]["value"] <= interval["high"]
    assert "interval_says" not in train["verdicts"]["peer_equivalent_mkl_stock_1_thread_pipeline_ratio"]


@pytest.mark.slow
def test_bench_decode_keys(report):
    decode = report["benchmarks"]["decode"]
    assert {"forward_greedy_ms_per_audio_s_checkpoint", "forward_greedy_ms_per_audio_s_exported_1_thread",
            "greedy_decode_only_ms_per_audio_s"} <= set(decode["greedy"])
    assert {"lm_1_process", "lm_2_processes", "no_lm_1_process", "scorer_load_s"} <= set(decode["beam_search"])
    assert decode["beam_search"]["beam_size"] == 300
    assert {"checkpoint_ms", "exported_1_thread_ms", "exported_1_thread_blas_1_ms", "file_s",
            "exported_1_thread_forward_only_ms", "load_and_features_ms"} <= set(decode["infer_8s"])
    assert {"ms_per_audio_s", "ms_per_audio_s_blas_1"} <= set(decode["eval_path"]["exported_1_thread"])
    assert {"ms_per_audio_s", "ms_per_audio_s_blas_1"} <= set(decode["eval_path"]["onnx"])
    assert {"onnx_ms", "onnx_1_thread_ms", "onnx_vs_onednn"} <= set(decode["infer_8s"])
    assert decode["infer_8s"]["file_s"] == 8.0
    assert {"greedy_ms_per_audio_s", "infer_8s_exported_ms", "beam_rtf_per_core"} <= set(decode["verdicts"])
    assert decode["verdicts"]["infer_8s_exported_ms"]["interval_says"] in ("met", "not met", "undecided")
    assert decode["infer_8s"]["onnx_ms_interval"]["n"] == decode["infer_8s"]["onnx_ms"]["n"]


@pytest.mark.slow
def test_bench_create_data_keys(report):
    create = report["benchmarks"]["create_data"]
    assert "audio_hours_per_wall_hour_per_core" in create["throughput"]["create_data"]
    assert "growth_mb_process" in create["memory"] and {"lines_500", "lines_2000"} <= set(create["memory"])

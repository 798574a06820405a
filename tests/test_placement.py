"""Thread placement (utils/placement.py): when a run pins its OpenMP threads, and what a loader
worker and the pinning op do to the threads they touch."""
from __future__ import annotations

import glob
import multiprocessing
import os

import pytest

from utils import placement

CORES = [0, 1, 2, 3]


def plan(**overrides) -> placement.Placement:
    args = dict(setting="auto", on_cpu=True, kernels=True, processes=1, threads=4, num_workers=1, cores=CORES)
    args.update(overrides)
    return placement.plan(**args)


def test_a_cpu_run_with_loader_workers_pins_threads_and_moves_workers_off_the_main_core():
    placed = plan()
    assert placed.thread_cores == CORES and placed.worker_cores == [1, 2, 3] and placed.cores == CORES
    assert placed.note == ("threads: OpenMP threads pinned one to a core, to cores [0, 1, 2, 3] (the main thread "
                           "to 0); loader workers at idle priority on cores [1, 2, 3] (train.thread_placement=auto)")


@pytest.mark.parametrize("overrides, reason", [
    ({"setting": "off"}, "train.thread_placement=off"),
    ({"on_cpu": False}, "on a GPU"),
    ({"kernels": False}, "Paddle's kernels run"),
    ({"processes": 2}, "2 training processes share the machine"),
    ({"num_workers": 0}, "data.num_workers=0"),
    ({"threads": 1}, "1 OpenMP thread(s)"),
    ({"threads": 8}, "8 OpenMP threads on 4 cores"),
    ({"threads": 2}, "2 OpenMP threads on 4 cores: pinning is for a step that fills every core"),
])
def test_the_os_places_threads_otherwise_and_the_log_says_why(overrides, reason):
    placed = plan(**overrides)
    assert placed.thread_cores == [] and placed.worker_cores is None
    assert placed.note.startswith("threads: placed by the OS (") and reason in placed.note
    placement.apply(placed)  # nothing to pin: no op is called
    placement.release(placed)


def test_an_unknown_setting_is_an_error():
    with pytest.raises(ValueError, match="train.thread_placement must be one of auto, off, not 'pinned'"):
        plan(setting="pinned")


def _report_worker(worker_cores, queue):
    placement.enter_worker(worker_cores)
    queue.put((sorted(os.sched_getaffinity(0)), os.sched_getscheduler(0), os.nice(0)))


def _in_child(worker_cores):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_report_worker, args=(worker_cores, queue))
    child.start()
    result = queue.get(timeout=30)
    child.join(timeout=30)
    return result


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_placed_worker_runs_at_idle_priority_on_its_cores():
    last = max(os.sched_getaffinity(0))
    cores, policy, _ = _in_child([last])
    assert cores == [last] and policy == os.SCHED_IDLE


def test_an_unplaced_worker_is_niced_and_keeps_its_cores():
    cores, policy, niceness = _in_child(None)
    assert cores == sorted(os.sched_getaffinity(0)) and policy == os.SCHED_OTHER
    assert niceness == os.nice(0) + placement.WORKER_NICENESS


def thread_affinities() -> dict[int, list[int]]:
    return {int(path.rsplit("/", 1)[1]): sorted(os.sched_getaffinity(int(path.rsplit("/", 1)[1])))
            for path in glob.glob("/proc/self/task/*")}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_pinning_places_each_openmp_thread_and_release_restores_them():
    paddle = pytest.importorskip("paddle")
    from utils import cpu_kernels

    try:
        cpu_kernels.load_ops()
    except cpu_kernels.KernelsUnavailable as error:
        pytest.skip(str(error))
    cores = sorted(os.sched_getaffinity(0))
    paddle.matmul(paddle.ones([64, 64]), paddle.ones([64, 64]))  # the OpenMP pool exists
    before = thread_affinities()
    placed = plan(threads=len(cores), cores=cores)
    placement.apply(placed)
    try:
        assert os.sched_getaffinity(0) == {cores[0]}  # this (the main) thread: OpenMP thread 0
        pinned = thread_affinities()
        assert [cores[1]] in pinned.values()  # the pool's other thread
    finally:
        placement.release(placed)
    assert os.sched_getaffinity(0) == set(cores)
    assert all(thread_affinities()[tid] == before[tid] for tid in before if tid in thread_affinities())

"""Where a CPU training run's OpenMP threads and loader workers run (train.thread_placement).

When the step's OpenMP threads fill every core (2 cores, 2 threads), a loader worker can only take
its CPU from the step. Where it takes it matters. The main thread works through the whole step
(Python, every op); the other OpenMP threads work only inside parallel regions and wait between
them (by the step's speed on one thread and two: about a third of the demo step's wall time, half
of the peer-equivalent config's). So:
- OpenMP thread t is pinned to core t (cpu_kernels.bind_threads): the main thread keeps core 0;
- the loader workers run on the other cores at SCHED_IDLE priority: they run where a helper thread
  waits, and give way at once when a parallel region wakes it;
- KMP_BLOCKTIME=1 (utils/__init__.py): a waiting OpenMP thread sleeps after 1 ms instead of
  spinning for 200, so those waits leave its core free.
make bench measures it on and off (README, "Benchmarks").

It pins only when OMP_NUM_THREADS equals the cores this process may use: two trainings started
side by side would otherwise pin their main threads to the same core. Give each its own cores
(taskset -c) and each pins within them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

CHOICES = ("auto", "off")
# Niced, a worker mostly runs in the gaps the step's threads leave instead of taking a thread's core
# (make bench, demo config on 2 cores, before thread placement: pipeline ratio 1.04 niced against
# 1.11 at normal priority).
WORKER_NICENESS = 10


@dataclass
class Placement:
    thread_cores: list[int] = field(default_factory=list)  # OpenMP thread t on thread_cores[t]; empty: not pinned
    worker_cores: list[int] | None = None                  # loader workers' cores; None: the OS decides
    note: str = ""
    cores: list[int] = field(default_factory=list)         # the process's cores before apply()


def allowed_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def plan(setting: str, on_cpu: bool, kernels: bool, processes: int, threads: int, num_workers: int,
         cores: list[int]) -> Placement:
    """The placement for a run, with a log line saying what and why."""
    if setting not in CHOICES:
        raise ValueError(f"train.thread_placement must be one of {', '.join(CHOICES)}, not '{setting}'")
    reason = ("train.thread_placement=off" if setting == "off" else
              "on a GPU" if not on_cpu else
              "Paddle's kernels run (the pinning op is one of ours)" if not kernels else
              f"{processes} training processes share the machine" if processes > 1 else
              "features computed in this process (data.num_workers=0)" if num_workers <= 0 else
              f"{threads} OpenMP thread(s)" if threads < 2 else
              f"{threads} OpenMP threads on {len(cores)} cores: pinning is for a step that fills every core"
              if threads != len(cores) else None)
    if reason is not None:
        return Placement(note=f"threads: placed by the OS ({reason})")
    thread_cores, worker_cores = cores, cores[1:]
    return Placement(thread_cores, worker_cores,
                     f"threads: OpenMP threads pinned one to a core, to cores {thread_cores} (the main thread "
                     f"to {thread_cores[0]}); loader workers at idle priority on cores {worker_cores} "
                     f"(train.thread_placement={setting})", cores)


def apply(placement: Placement) -> None:
    if placement.thread_cores:
        _bind(placement.thread_cores, one_each=True)


def release(placement: Placement) -> None:
    """Every OpenMP thread back on all the process's cores, as before apply()."""
    if placement.thread_cores:
        _bind(placement.cores, one_each=False)


def _bind(cores: list[int], one_each: bool) -> None:
    from utils import cpu_kernels  # Paddle: not for the loader workers, which import this module

    failed = [t for t, status in enumerate(cpu_kernels.bind_threads(cores, one_each)) if status]
    if failed:
        raise RuntimeError(f"could not pin OpenMP threads {failed} to cores {cores}; "
                           f"set train.thread_placement=off")


def enter_worker(worker_cores: list[int] | None) -> None:
    """In a loader worker: on worker_cores at SCHED_IDLE where given, else at niceness 10."""
    if worker_cores is None:
        _lower_priority()
        return
    os.sched_setaffinity(0, worker_cores)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # no SCHED_IDLE here: niceness does most of it
        _lower_priority()


def _lower_priority() -> None:
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # a platform without nice: run at normal priority
        pass

"""create_data's worker processes: a fork pool (or work in this process) and an ordered map over it
with a progress bar, fed from a generator so the items are never all held."""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import signal
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from tqdm import tqdm

MAX_TASK_CHUNK = 256  # items per task sent to a worker
TASKS_PER_WORKER = 8  # tasks per worker a map is cut into, in chunks of at most MAX_TASK_CHUNK items


@dataclass
class Workers:
    pool: Optional[multiprocessing.pool.Pool]  # None: work in this process
    count: int


@contextlib.contextmanager
def worker_pool(count: int) -> Iterator[Workers]:
    """A fork pool started before any list is read (so workers stay small), or in-process work."""
    if count <= 1:
        yield Workers(None, 1)
        return
    with multiprocessing.get_context("fork").Pool(count, initializer=_ignore_sigint) as pool:
        yield Workers(pool, count)


def _ignore_sigint() -> None:
    """In each worker: Ctrl-C (sent to the whole process group) is the main process's to handle; it
    stops the pool, so the workers print no traceback of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pmap(workers: Workers, func: Callable, items: Iterable, desc: str, unit: str = "utt",
          chunksize: int = 0, weights: Optional[list[int]] = None, total: Optional[int] = None) -> Iterator:
    """Ordered map over items, in the pool when there is one, with a progress bar. Items may be
    a generator: the pool takes them as its workers need them, so they are never all held."""
    if workers.pool is None:
        results = map(func, items)
    else:
        if not chunksize:
            count = total if total is not None else len(items)
            chunksize = max(1, min(MAX_TASK_CHUNK, count // (workers.count * TASKS_PER_WORKER)))
        results = workers.pool.imap(func, items, chunksize)
    if total is None and weights is None and hasattr(items, "__len__"):
        total = len(items)
    with tqdm(total=sum(weights) if weights is not None else total, desc=desc, unit=unit,
              dynamic_ncols=True) as bar:
        for index, result in enumerate(results):
            bar.update(weights[index] if weights is not None else 1)
            yield result

"""Loader workers: forked processes that pad each training batch into a shared-memory slot.

Paddle's DataLoader hands a worker's batch to the trainer in shared memory made afresh for every
tensor (a file created, mapped, written, mapped again in the trainer and unmapped: about 300 page
faults a batch in the worker alone), through a queue with a feeder thread in the worker and a
reader thread in the trainer. On a machine whose cores the step fills, that work runs between the
step's threads and slows them: scratch runs of make bench's peer-equivalent config (2 cores) put
its pipeline ratio at 1.075-1.079 with Paddle's DataLoader and 1.05-1.06 with this module
(README, "Benchmarks"; data.loader=paddle brings Paddle's back).

Here the workers fill slots of anonymous shared memory, mapped before the fork and reused batch
after batch: no page faults once each slot has held a batch. A worker pads a batch's features
straight into a slot and copies the small arrays (lengths, labels, indices) after them; the pipe
carries only where they lie. An array without room in its slot (a batch longer than the manifest's
longest at sizing time) goes through the pipe instead: slower, never wrong.

On a CPU the trainer's tensors are the slot's memory itself (DLPack, no copy): the slot is lent to
the batch and goes back to the pool when the batch's last tensor is freed. The pool holds
SLOTS_PER_WORKER slots a worker and LENT_SLOTS more, for the batch the trainer steps on and the one
it takes next while still holding it; a caller that keeps more batches gets copies instead, so a
kept batch never changes. The trainer's thread, whose core the step needs, spent 0.29-0.36 ms a
batch of the peer-equivalent config copying the five arrays (a 2 MB copy and Paddle's checks between
steps, caches cold) and spends 0.18 ms lending them. On a GPU the copy to the device frees the slot
at once.

Workers run numpy and our C++ front end only (no Paddle ops: a forked process that touches Paddle's
OpenMP pool can deadlock), ignore Ctrl-C (the trainer stops them), and die with the trainer.
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import math
import mmap
import multiprocessing
import os
import queue
import select
import signal
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection

import numpy as np
import paddle

from utils import placement
from utils.audio import AudioError

SLOTS_PER_WORKER = 2           # batches in flight per worker, as Paddle's prefetch_factor
LENT_SLOTS = 2                 # slots held by the trainer's tensors: the batch being stepped on, the next one
SLOT_HEADROOM = 1.25           # slots hold batches 25 % longer than the manifest's longest (speed perturbation)
MAX_SLOT_BYTES = 512 << 20     # larger batches go through the pipe
STOP_TIMEOUT_S = 5.0           # a worker not gone this long after the stop message is killed
PR_SET_PDEATHSIG = 1           # prctl(2): a signal for this process when its parent dies

SLOT_DTYPE = np.float32        # the first array of a batch, padded into a slot
SLOT_ALIGNMENT = 64            # bytes: the other arrays follow it on cache-line boundaries
SMALL_ARRAYS_BYTES = 64 << 10  # room for them: labels of 16 utterances x 1000 tokens


class LoaderWorkerError(RuntimeError):
    """A loader worker failed on a batch or died; the message says which and why."""


def slot_bytes(batch_size: int, max_frames: int, feature_dim: int) -> int:
    """Bytes of one slot: a [batch_size, max_frames * SLOT_HEADROOM, feature_dim] float32 batch and
    SMALL_ARRAYS_BYTES for the rest, at most MAX_SLOT_BYTES."""
    frames = int(max_frames * SLOT_HEADROOM) + 1
    return min(MAX_SLOT_BYTES, batch_size * frames * feature_dim * np.dtype(SLOT_DTYPE).itemsize + SMALL_ARRAYS_BYTES)


def worker_batches(make_batch: Callable, batch_keys: Iterable[list[int]], num_workers: int, slot_size: int,
                   niced: bool = True, worker_cores: list[int] | None = None):
    """A generator of batches as lists of Paddle tensors, one per list of keys from `batch_keys`, in order,
    made by `num_workers` forked processes (batch j by worker j % num_workers), at idle priority on
    worker_cores (placement.enter_worker) when niced. make_batch(keys, slot) -> numpy arrays, the first
    (float32) padded into `slot`, a writable buffer, when it fits (data.collate).
    close() stops the workers; so does the generator's end or garbage collection."""
    context = multiprocessing.get_context("fork")
    slots = [mmap.mmap(-1, slot_size) for _ in range(SLOTS_PER_WORKER * max(0, num_workers) + LENT_SLOTS)]
    workers = []
    try:
        for worker_id in range(num_workers):
            task_receiver, task_sender = context.Pipe(duplex=False)
            result_receiver, result_sender = context.Pipe(duplex=False)
            inherited = [end for worker in workers for end in (worker.tasks, worker.results)] + [
                task_sender, result_receiver]
            process = context.Process(
                target=_worker_main, name=f"loader worker {worker_id}", daemon=True,
                args=(make_batch, task_receiver, result_sender, slots, niced, worker_cores, inherited, os.getpid()))
            process.start()
            task_receiver.close()
            result_sender.close()
            workers.append(_Worker(worker_id, process, task_sender, result_receiver))
        yield from _batches_in_order(workers, batch_keys, slots)
    finally:
        for worker in workers:
            worker.stop()


def thread_batches(make_batch: Callable, batch_keys: Iterable[list[int]], prefetch: int = SLOTS_PER_WORKER):
    """A generator of batches as lists of Paddle tensors, made ahead of the caller by one thread of this
    process (num_workers 0; numpy and our C++ calls release the GIL). An error making a batch (a missing
    or corrupt audio file) is raised here, at its batch: Paddle's in-process DataLoader left its reader
    thread dead and the caller waiting for ever. close() stops the thread after its current batch."""
    made: queue.Queue = queue.Queue(prefetch)
    stop = threading.Event()

    def hand_over(item: tuple) -> bool:
        while not stop.is_set():
            try:
                made.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for keys in batch_keys:
                if not hand_over(("batch", make_batch(keys))):
                    return
            hand_over(("end", None))
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            hand_over(("error", err))

    thread = threading.Thread(target=produce, name="loader thread", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = made.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield [paddle.to_tensor(array) for array in value]
    finally:
        stop.set()
        thread.join()


class _Worker:
    """The trainer's side of one worker: its process, pipes, and the slots it is filling."""

    def __init__(self, worker_id: int, process, tasks: Connection, results: Connection):
        self.worker_id, self.process, self.tasks, self.results = worker_id, process, tasks, results
        self.pending: list[tuple[int, list[int]]] = []  # (slot, keys) sent and not yet received, oldest first
        self.poller = select.poll()  # a message, or the process's end
        self.poller.register(results.fileno(), select.POLLIN)
        self.poller.register(process.sentinel, select.POLLIN)

    def send(self, slot: int, keys: list[int]) -> None:
        self.pending.append((slot, keys))
        try:
            self.tasks.send((slot, keys))
        except OSError:  # died since its last batch (a broken pipe): receive() says so, naming the batch
            pass

    def receive(self) -> tuple:
        """The oldest pending batch's message; LoaderWorkerError if the worker failed on it or died."""
        slot, keys = self.pending.pop(0)
        ready = dict(self.poller.poll())  # a message, or the worker's end
        try:
            message = self.results.recv() if self.results.fileno() in ready else None
        except EOFError:  # ended after poll() saw the pipe
            message = None
        if message is None:
            self.process.join(STOP_TIMEOUT_S)
            raise LoaderWorkerError(f"loader worker {self.worker_id} (pid {self.process.pid}) died "
                                    f"({_exit_reason(self.process.exitcode)}) making the batch of dataset keys "
                                    f"{keys}; killed by the kernel's OOM killer, it shows as SIGKILL: lower "
                                    f"data.num_workers or train.batch_size")
        if message[0] == "error":
            raise LoaderWorkerError(f"loader worker {self.worker_id} failed on the batch of dataset keys {keys}:\n"
                                    f"{message[1]}")
        return (slot, *message[1:])

    def stop(self) -> None:
        try:
            self.tasks.send(None)
        except OSError:  # already gone
            pass
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.tasks.close()
        self.results.close()


def _batches_in_order(workers: list[_Worker], batch_keys: Iterable[list[int]], slots: list[mmap.mmap]):
    """Keeps SLOTS_PER_WORKER batches in flight per worker and yields them in the keys' order, each in
    tensors lent its slot's memory where another slot is free for the worker's next batch (on a CPU),
    else in copies."""
    batch_keys = iter(batch_keys)
    pool = _SlotPool(len(slots))
    lend = paddle.get_device() == "cpu"
    for _, worker in itertools.product(range(SLOTS_PER_WORKER), workers):
        keys = next(batch_keys, None)
        if keys is None:
            break
        worker.send(pool.free.pop(), list(keys))
    for worker in itertools.cycle(workers):
        if not worker.pending:
            return  # the keys ran out: each later worker has no more batches either
        slot, layout, spilled = worker.receive()
        arrays = _unpack(layout, spilled, slots[slot])
        keys = next(batch_keys, None)
        if lend and pool.free:
            batch = pool.lend(slot, arrays)
            if keys is not None:
                worker.send(pool.free.pop(), list(keys))
        else:
            batch = [paddle.to_tensor(array) for array in arrays]  # copies: the slot is free again
            if keys is not None:
                worker.send(slot, list(keys))
            else:
                pool.free.append(slot)
        del arrays
        yield batch


class _SlotPool:
    """Which slots are free to fill, and which are lent to a batch's arrays (each held by its tensor
    until that is freed) until the last of them is gone. Weak references with callbacks, kept here
    until they fire (weakref.finalize costs 20 us an array)."""

    def __init__(self, count: int):
        self.free = list(range(count))[::-1]  # the pool's start taken first
        self.loans: dict[int, list] = {}      # slot -> [how many of its arrays are not yet freed, their weak references]

    def lend(self, slot: int, arrays: list[np.ndarray]) -> list[paddle.Tensor]:
        """Tensors on the arrays' memory (DLPack); `slot` is free again when the last of them is freed."""
        returned = functools.partial(self._returned, slot)
        self.loans[slot] = [len(arrays), [weakref.ref(array, returned) for array in arrays]]
        # from a capsule, which Paddle 2.6 takes too; it holds the array until the tensor's memory is freed
        return [paddle.utils.dlpack.from_dlpack(array.__dlpack__()) if array.size else paddle.to_tensor(array)
                for array in arrays]

    def _returned(self, slot: int, _reference) -> None:
        loan = self.loans[slot]
        loan[0] -= 1
        if loan[0] == 0:
            del self.loans[slot]
            self.free.append(slot)


def _pack(arrays: list[np.ndarray], slot: mmap.mmap, slot_address: int) -> tuple[list, list]:
    """(layout, spilled): the first array where make_batch padded it into the slot, the others copied
    after it; layout [(offset, dtype, shape)] per array, offset -1 for those in `spilled` (no room)."""
    layout, spilled, end = [], [], 0
    for number, array in enumerate(arrays):
        if number == 0 and array.ctypes.data == slot_address:
            offset = 0
        else:
            offset = -(-end // SLOT_ALIGNMENT) * SLOT_ALIGNMENT
            if offset + array.nbytes <= len(slot):
                np.frombuffer(slot, dtype=array.dtype, count=array.size, offset=offset).reshape(array.shape)[...] = array
            else:
                offset = -1
                spilled.append(array)
        layout.append((offset, array.dtype.str, array.shape))
        end = offset + array.nbytes if offset >= 0 else end
    return layout, spilled


def _unpack(layout: list, spilled: list, slot: mmap.mmap) -> list[np.ndarray]:
    """The arrays _pack described: views of the slot, or the spilled ones."""
    spilled = iter(spilled)
    return [next(spilled) if offset < 0 else
            np.frombuffer(slot, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
            for offset, dtype, shape in layout]


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def _worker_main(make_batch: Callable, tasks: Connection, results: Connection, slots: list[mmap.mmap],
                 niced: bool, worker_cores: list[int] | None, inherited: list[Connection], trainer_pid: int) -> None:
    """A worker's loop: (slot, keys) in, ("batch", layout, spilled arrays) (see _pack) or ("error",
    traceback) out, until the stop message or the trainer's end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the trainer stops us
    die_with(trainer_pid)
    for end in inherited:  # the trainer's ends: a worker holding them would not see the trainer go
        end.close()
    if niced:
        placement.enter_worker(worker_cores)
    slot_addresses = [np.frombuffer(slot, dtype=np.uint8, count=1).ctypes.data for slot in slots]
    while True:
        try:
            task = tasks.recv()
        except EOFError:  # the trainer is gone
            return
        if task is None:
            return
        slot, keys = task
        try:
            message = ("batch", *_pack(make_batch(keys, slots[slot]), slots[slot], slot_addresses[slot]))
        except AudioError as err:  # a file's fault, which its message names: no traceback
            message = ("error", f"{type(err).__name__}: {err}")
        except Exception:  # reported with the keys by the trainer, which stops
            message = ("error", traceback.format_exc())
        try:
            results.send(message)
        except OSError:  # the trainer is gone
            return


def die_with(trainer_pid: int, signum: int = signal.SIGKILL) -> None:
    """`signum` for this process when the trainer dies (Linux), so no orphan keeps computing (SIGTERM
    where the process has shared memory to release on the way out: Paddle's DataLoader workers)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF ends the loop instead
        return
    if os.getppid() != trainer_pid:  # it died before prctl took effect
        os._exit(0)

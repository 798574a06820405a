"""utils/batch_workers.py: forked loader workers padding batches into reused shared-memory slots."""
import mmap
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from utils import batch_workers
from utils.batch_workers import LoaderWorkerError, thread_batches, worker_batches
from utils.data import collate

ROOT = Path(__file__).resolve().parents[1]
DIM = 3


def sample(key: int):
    """A made-up sample: feats [1 + key % 7, DIM] full of key, labels [key % 4], index key."""
    return np.full((1 + key % 7, DIM), key, dtype=np.float32), np.arange(key % 4, dtype=np.int32), key


def make_batch(keys, buffer=None):
    if -1 in keys:
        raise ValueError("key -1 is made up to fail")
    if -9 in keys:
        os.kill(os.getpid(), signal.SIGKILL)
    return collate([sample(key) for key in keys], buffer)


BATCH_KEYS = [[3, 1, 6], [12, 2], [0], [4, 5, 13, 20], [7], [8, 9], [10, 11, 19]]


def assert_batches_equal(batches, batch_keys):
    batches = list(batches)
    assert len(batches) == len(batch_keys)
    for batch, keys in zip(batches, batch_keys):
        expected = collate([sample(key) for key in keys])
        assert len(batch) == len(expected)
        for tensor, array in zip(batch, expected):
            np.testing.assert_array_equal(tensor.numpy(), array)
            assert tensor.numpy().dtype == array.dtype


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_workers_yield_the_in_process_batches_in_order_and_end_with_the_keys(num_workers):
    slot = batch_workers.slot_bytes(4, 7, DIM)
    assert_batches_equal(worker_batches(make_batch, iter(BATCH_KEYS), num_workers, slot), BATCH_KEYS)


def in_shared_memory(tensor) -> bool:
    """Whether the tensor's data lies in a shared mapping (a slot) rather than Paddle's own memory."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, permissions = line.split()[:2]
        start, end = (int(part, 16) for part in span.split("-"))
        if start <= address < end:
            return permissions[3] == "s"
    raise AssertionError(f"address {address:#x} is in no mapping")


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_batch_dropped_before_the_next_is_taken_is_lent_its_slot_not_copied(num_workers):
    """The trainer's pattern: the pool (2 slots a worker and 2 lent) goes round twenty batches without a copy."""
    keys = BATCH_KEYS * 3
    batches = worker_batches(make_batch, iter(keys), num_workers, batch_workers.slot_bytes(4, 7, DIM))
    for number, batch in enumerate(batches):
        expected = collate([sample(key) for key in keys[number]])
        for tensor, array in zip(batch, expected):
            np.testing.assert_array_equal(tensor.numpy(), array)
        assert all(in_shared_memory(tensor) for tensor in batch)
    assert number == len(keys) - 1


def test_kept_batches_stay_as_they_were_and_later_ones_are_copies():
    keys = BATCH_KEYS * 3
    batches = worker_batches(make_batch, iter(keys), 1, batch_workers.slot_bytes(4, 7, DIM))
    kept = list(batches)  # every batch held: the lent slots are never refilled under them
    lent = [all(in_shared_memory(tensor) for tensor in batch) for batch in kept]
    # two lent, then copies; at the end the slots the worker no longer needs are lent too
    assert lent[:3] == [True, True, False] and sum(lent) <= batch_workers.SLOTS_PER_WORKER + batch_workers.LENT_SLOTS
    assert_batches_equal(kept, keys)


def test_fewer_batches_than_slots_and_no_batches_end_cleanly():
    assert_batches_equal(worker_batches(make_batch, iter(BATCH_KEYS[:3]), 2, mmap.PAGESIZE), BATCH_KEYS[:3])
    assert list(worker_batches(make_batch, iter([]), 2, mmap.PAGESIZE)) == []


def test_a_reused_slot_is_padded_with_zeros_not_the_last_batch():
    keys = [[6, 6], [0, 6], [6, 6], [6, 0]]  # long rows, then a short one in the same slot
    assert_batches_equal(worker_batches(make_batch, iter(keys), 1, batch_workers.slot_bytes(2, 7, DIM)), keys)


def test_arrays_without_room_in_the_slot_go_through_the_pipe():
    tiny = 64  # not even the first batch's feats fit
    assert_batches_equal(worker_batches(make_batch, iter(BATCH_KEYS), 2, tiny), BATCH_KEYS)
    feats_only = 4 * 7 * DIM * 4  # the feats fit, the small arrays after them do not
    assert_batches_equal(worker_batches(make_batch, iter(BATCH_KEYS), 1, feats_only), BATCH_KEYS)


def test_pack_places_arrays_after_the_first_on_aligned_offsets():
    slot = mmap.mmap(-1, 4096)
    address = np.frombuffer(slot, dtype=np.uint8, count=1).ctypes.data
    arrays = collate([sample(5), sample(2)], slot)
    layout, spilled = batch_workers._pack(list(arrays), slot, address)
    assert spilled == [] and layout[0] == (0, "<f4", (2, 6, DIM))
    assert all(offset % batch_workers.SLOT_ALIGNMENT == 0 for offset, _, _ in layout)
    for unpacked, array in zip(batch_workers._unpack(layout, spilled, slot), arrays):
        np.testing.assert_array_equal(unpacked, array)


def test_a_failing_sample_names_the_keys_and_the_error():
    batches = worker_batches(make_batch, iter([[1, 2], [3, -1], [4]]), 1, mmap.PAGESIZE)
    next(batches)
    with pytest.raises(LoaderWorkerError, match=r"(?s)keys \[3, -1\].*ValueError: key -1 is made up to fail"):
        next(batches)


def test_the_in_process_thread_yields_the_same_batches_and_raises_a_sample_error_at_its_batch():
    """num_workers 0: a thread makes the batches ahead; an error in one is raised in the caller (Paddle's
    in-process DataLoader hung there), and the thread is gone after it."""
    assert_batches_equal(thread_batches(make_batch, iter(BATCH_KEYS)), BATCH_KEYS)
    batches = thread_batches(make_batch, iter([[1, 2], [3, -1], [4]]))
    next(batches)
    with pytest.raises(ValueError, match="key -1 is made up to fail"):
        next(batches)
    with pytest.raises(StopIteration):
        next(batches)
    endless = thread_batches(make_batch, iter(BATCH_KEYS * 1000))
    next(endless)
    endless.close()  # stops the thread, which was waiting to hand over a batch
    assert not any(thread.name == "loader thread" for thread in threading.enumerate())


def test_a_killed_worker_is_reported_not_waited_for():
    batches = worker_batches(make_batch, iter([[1], [-9], [2]]), 1, mmap.PAGESIZE)
    next(batches)
    with pytest.raises(LoaderWorkerError, match=r"died \(signal SIGKILL\) making the batch of dataset keys \[-9\]"):
        next(batches)


def test_a_worker_dead_before_its_next_task_is_reported_too():
    """Dead by the time its next task is sent (the keys came slowly): a broken pipe was raised bare, and the
    batch it had made was lost with it."""
    def slow_keys():
        yield [1]
        yield [-9]  # the worker dies making this one
        time.sleep(1.0)  # the next keys come late: the worker is gone by then
        yield [2]
    batches = worker_batches(make_batch, slow_keys(), 1, mmap.PAGESIZE)
    assert next(batches) is not None  # the batch made before the death is handed over
    with pytest.raises(LoaderWorkerError, match=r"died \(signal SIGKILL\) making the batch of dataset keys \[-9\]"):
        next(batches)


def test_close_stops_the_workers():
    batches = worker_batches(make_batch, iter(BATCH_KEYS * 100), 2, mmap.PAGESIZE)
    next(batches)
    children = {child.pid for child in multiprocessing.active_children()}
    assert len(children) >= 2
    batches.close()
    assert not children & {child.pid for child in multiprocessing.active_children()}
    assert not any(_alive(pid) for pid in children)


TRAINER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from utils.batch_workers import worker_batches
    def make_batch(keys, buffer):
        return [np.zeros((len(keys), 2), dtype=np.float32)]
    batches = worker_batches(make_batch, iter([[0]] * 1000), 1, 4096)
    next(batches)
    import multiprocessing
    print(multiprocessing.active_children()[0].pid, flush=True)
    os._exit(0)  # killed: no close(), no interpreter shutdown
""")


def test_workers_die_with_a_killed_trainer():
    done = subprocess.run([sys.executable, "-c", TRAINER, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    worker = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.05)
    assert not _alive(worker)


PADDLE_LOADER_TRAINER = textwrap.dedent("""
    import multiprocessing, os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import utils
    import numpy as np
    import paddle
    from utils.data import collate, loader_options
    class Rows(paddle.io.Dataset):
        def __len__(self): return 1000
        def __getitem__(self, i): return np.full((50, 80), i, np.float32), np.arange(3, dtype=np.int32), i
    loader = paddle.io.DataLoader(Rows(), batch_sampler=[[i, i + 1] for i in range(0, 1000, 2)],
                                  collate_fn=collate, return_list=True, **loader_options(1, niced=False))
    batches = iter(loader)
    for _ in range(5):
        next(batches)
    print(*[child.pid for child in multiprocessing.active_children()], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_paddles_loader_workers_end_with_a_killed_trainer_and_free_their_shared_memory():
    """With data.loader=paddle a SIGKILLed trainer left its worker running, holding /dev/shm segments."""
    done = subprocess.run([sys.executable, "-c", PADDLE_LOADER_TRAINER, str(ROOT)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    workers = [int(pid) for pid in done.stdout.split()]
    assert workers
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    assert not [name for name in os.listdir("/dev/shm") if any(f"_{pid}_" in name for pid in workers)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

"""Training data: a manifest-backed dataset, a SortaGrad bucketing batch sampler, padding collate.

Features are computed inside loader workers (utils/batch_workers.py, or Paddle's DataLoader's) by
numpy or our C++ front end (no Paddle ops there: forked workers that touch Paddle's OpenMP pool can
deadlock). A sample is addressed by the key `epoch * num_utterances + index`, so its augmentation
is seeded by (seed, epoch, index) and does not depend on which worker computes it: a resumed run
sees identical batches. A sample's draws are all made first (SpeechDataset.draw); our workers then
compute its augmented features in its rows of the batch, in one C++ call a sample where the library
runs (make_batch).
"""
from __future__ import annotations

import functools
import itertools
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import paddle

from utils import augment, batch_workers, feature_kernels, placement
from utils.augment import Augmentation
from utils.audio import load_audio
from utils.features import compute_features, feature_dim, front_end, num_frames
from utils.manifest import Utterance, UtteranceTable
from utils.text import Vocabulary

DURATION_JITTER = 0.1  # batches mix durations within +-10 % so they differ between epochs
LOADERS = ("slots", "paddle")  # data.loader: utils/batch_workers.py, or paddle.io.DataLoader


SAMPLE_STREAM_KEY = 0x5A3D4E2B  # the second Philox key word of the samples' draws: their own streams
_sample_generators = threading.local()  # one generator a thread, re-keyed for each sample


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation draws, the same in any worker, process or run: Philox,
    a counter-based generator, keyed by the seed, its counter starting at (0, index, epoch, 0). The draws
    advance only the first word (2^64 blocks of four numbers), so the samples' streams never overlap.
    Valid until this thread's next call. Setting its state costs about 1 us against 12 for a fresh
    default_rng((seed, epoch, index)), whose hashing cost a loader worker 0.5 ms of its 5.6 ms a batch."""
    generator = getattr(_sample_generators, "generator", None)
    if generator is None:
        generator = _sample_generators.generator = np.random.Generator(np.random.Philox(key=0))
    generator.bit_generator.state = {
        "bit_generator": "Philox", "state": {"counter": [0, index, epoch, 0], "key": [seed % 2 ** 64, SAMPLE_STREAM_KEY]},
        "buffer": [0, 0, 0, 0], "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return generator


@dataclass
class DrawnSample:
    """One sample before its features (SpeechDataset.draw): its decoded audio and every draw of its
    augmentation, so that its features can be computed where they go (its rows of a batch)."""
    samples: np.ndarray           # [N] float32, decoded, before augmentation
    plan: np.ndarray              # [R, 4] float64: audio rows, then feature edits (utils/augment.py)
    band_limit_hz: float | None   # a resample perturbation left to the features
    num_frames: int               # T, the frames after the audio rows
    native: bool                  # whether the C++ sample path can apply every row of the plan
    labels: np.ndarray            # [L] int32
    index: int                    # the utterance's index in the dataset


class SpeechDataset(paddle.io.Dataset):
    """dataset[key] -> (feats [T, D] float32, labels [L] int32, index).

    `utterances` is a list of Utterance or, for training sets of any size, an UtteranceTable.
    Transcripts are encoded when a sample is made (microseconds; holding every utterance's
    token ids would cost more memory than the manifest).
    """

    def __init__(self, utterances: Sequence[Utterance] | UtteranceTable, vocabulary: Vocabulary,
                 feature_method: str, sample_rate: int, n_mels: int, augmentation: Augmentation | None = None,
                 seed: int = 0):
        super().__init__()
        self.utterances, self.vocabulary = utterances, vocabulary
        self.feature_method, self.sample_rate, self.n_mels = feature_method, sample_rate, n_mels
        self.dim = feature_dim(feature_method, sample_rate, n_mels)
        self.augmentation = augmentation or Augmentation()
        self.seed = seed
        feature_kernels.load()  # built and loaded here, before DataLoader workers fork from this process
        self._noise = feature_kernels.noise_clips(self.augmentation.noise_clips)  # their addresses for C++

    def __getstate__(self) -> dict:  # a pickled copy makes its own table of the clips' addresses
        return {name: value for name, value in self.__dict__.items() if name != "_noise"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._noise = feature_kernels.noise_clips(self.augmentation.noise_clips)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, key: int):
        drawn = self.draw(key)
        feats = self.features_into(drawn, np.empty((drawn.num_frames, self.dim), dtype=np.float32))
        return feats, drawn.labels, drawn.index

    def draw(self, key: int) -> DrawnSample:
        """Sample `key`'s audio and all its augmentation draws (its generator is re-keyed by the next
        sample's)."""
        epoch, index = divmod(int(key), len(self.utterances))
        rng = sample_rng(self.seed, epoch, index)
        utterance = self.utterances[index]
        samples = load_audio(utterance.audio_filepath, self.sample_rate)
        rows, band_limit_hz, length = self.augmentation.draw_audio(rng, len(samples))
        steps = num_frames(length, self.feature_method, self.sample_rate)
        rows += self.augmentation.draw_feature_edits(rng, steps, self.dim)
        labels = self.vocabulary.encode_array(utterance.text)
        native = not any(row[0] in augment.NUMPY_ONLY_KINDS for row in rows)
        return DrawnSample(samples, np.array(rows, dtype=np.float64).reshape(-1, 4), band_limit_hz, steps, native,
                           labels, index)

    def features_into(self, drawn: DrawnSample, out: np.ndarray) -> np.ndarray:
        """The drawn sample's features written into out [T, D] (C-contiguous float32), which is returned:
        by our C++ front end in one call where it runs, else step by step with numpy."""
        settings = front_end(self.feature_method, self.sample_rate, self.n_mels, drawn.band_limit_hz)
        if drawn.native and settings is not None:
            if feature_kernels.sample_features(drawn.samples, drawn.plan, self._noise, settings, out):
                return out
        audio_rows = int(np.count_nonzero(drawn.plan[:, 0] < augment.EDIT_FILL))  # the plan's first rows
        samples = augment.apply_audio_rows(drawn.samples, drawn.plan[:audio_rows].tolist(), self.augmentation.noise_clips)
        feats = compute_features(samples, self.feature_method, self.sample_rate, self.n_mels, drawn.band_limit_hz)
        out[...] = augment.apply_feature_edits(feats, drawn.plan[audio_rows:].tolist())
        return out

    @property
    def durations(self) -> np.ndarray:
        """[N] float64 seconds."""
        if isinstance(self.utterances, UtteranceTable):
            return self.utterances.durations
        return np.array([u.duration for u in self.utterances], dtype=np.float64)


def collate(batch: list, buffer=None) -> tuple[np.ndarray, ...]:
    """Pad only: feats [B, T, D] (in `buffer`, a writable buffer, where it fits), feat_lens [B],
    labels [B, L] (0-padded), label_lens [B], indices [B]."""
    feats, *rest = _padded_batch([len(f) for f, _, _ in batch], batch[0][0].shape[1], [lab for _, lab, _ in batch],
                                 [i for _, _, i in batch], buffer)
    for row, (feat, _, _) in enumerate(batch):
        feats[row, :len(feat)] = feat
    return (feats, *rest)


def make_batch(dataset: SpeechDataset, keys: list[int], buffer=None) -> tuple[np.ndarray, ...]:
    """collate([dataset[key] for key in keys], buffer)'s batch, each sample's features computed and
    augmented in its rows of the batch."""
    drawn = [dataset.draw(key) for key in keys]
    feats, *rest = _padded_batch([d.num_frames for d in drawn], dataset.dim, [d.labels for d in drawn],
                                 [d.index for d in drawn], buffer)
    for row, sample in enumerate(drawn):
        dataset.features_into(sample, feats[row, :sample.num_frames])
    return (feats, *rest)


def _padded_batch(feat_lens: list[int], dim: int, labels: list[np.ndarray], indices: list[int],
                  buffer=None) -> tuple[np.ndarray, ...]:
    """feats [B, T, D] with each row's frames past its length zeroed (the caller writes the others),
    feat_lens [B], labels [B, L] (0-padded), label_lens [B], indices [B]."""
    feat_lens = np.array(feat_lens, dtype=np.int64)
    label_lens = np.array([len(label) for label in labels], dtype=np.int64)
    shape = (len(feat_lens), int(feat_lens.max()), dim)
    count = shape[0] * shape[1] * shape[2]
    if buffer is not None and count * np.dtype(np.float32).itemsize <= len(buffer):
        feats = np.frombuffer(buffer, dtype=np.float32, count=count).reshape(shape)
    else:
        feats = np.empty(shape, dtype=np.float32)
    padded_labels = np.zeros((len(labels), max(1, label_lens.max())), dtype=np.int32)
    for row, label in enumerate(labels):
        feats[row, feat_lens[row]:] = 0.0  # a reused buffer holds an earlier batch's values
        padded_labels[row, :len(label)] = label
    return feats, feat_lens, padded_labels, label_lens, np.array(indices, dtype=np.int64)


def epoch_batches(durations: np.ndarray, batch_size: int, epoch: int, seed: int,
                  sortagrad: bool = True) -> list[np.ndarray]:
    """All batches of one epoch, as arrays of utterance indices.

    SortaGrad: epoch 0 goes shortest to longest. Later epochs sort by duration with a
    seeded +-10 % jitter (so batches hold similar lengths: little padding) and shuffle
    the order of the batches.
    """
    rng = np.random.default_rng((seed, epoch))
    if sortagrad and epoch == 0:
        order = np.argsort(durations, kind="stable")
    else:
        jitter = 1.0 + rng.uniform(-DURATION_JITTER, DURATION_JITTER, len(durations))
        order = np.argsort(durations * jitter, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]  # views, not int lists
    if not (sortagrad and epoch == 0):
        rng.shuffle(batches)
    return batches


class BatchSampler(paddle.io.Sampler):
    """Yields lists of dataset keys for one epoch, this rank's share, from batch `start_batch` on.

    With W ranks the epoch is cut into global batches of W * batch_size (the batches one
    process with batch W * batch_size would see) and rank r takes the r-th of W equal
    contiguous slices of each, so W processes step on the same data as one process with a
    W times larger batch, and every rank gets the same number of batches (a last global
    batch with fewer than W utterances is dropped).
    """

    def __init__(self, durations: Sequence[float] | np.ndarray, batch_size: int, seed: int, sortagrad: bool = True,
                 rank: int = 0, world_size: int = 1, num_iters_per_epoch: int = 0):
        super().__init__()
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size, self.seed, self.sortagrad = batch_size, seed, sortagrad
        self.rank, self.world_size, self.num_iters_per_epoch = rank, world_size, num_iters_per_epoch
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        batches = epoch_batches(self.durations, self.batch_size * self.world_size, epoch, self.seed,
                                self.sortagrad)
        mine = [np.array_split(batch, self.world_size)[self.rank]
                for batch in batches if len(batch) >= self.world_size]
        return mine[:self.num_iters_per_epoch] if self.num_iters_per_epoch > 0 else mine

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def __iter__(self):
        return self.epoch_keys(self.epoch, self.start_batch)

    def epoch_keys(self, epoch: int, start_batch: int = 0):
        """The dataset keys of epoch `epoch`'s batches from `start_batch` on (set_epoch untouched)."""
        offset = epoch * len(self.durations)
        for batch in self.rank_batches(epoch)[start_batch:]:
            yield (batch + offset).tolist()


class RunSampler(paddle.io.Sampler):
    """Epoch after epoch of a BatchSampler's keys, without end, from the epoch and batch its
    set_epoch named when this was made (later set_epoch calls do not steer it).

    A loader is iterated once per run over this, so its workers start once: iterated afresh each
    epoch, a loader pays a worker start (about 0.9 s) or, with persistent workers, Paddle's restart,
    which polls every 0.5 s. `epochs` are the epochs after the first (default: the following ones).
    """

    def __init__(self, sampler: BatchSampler, epochs: Iterable[int] | None = None):
        super().__init__()
        self.sampler, self.first_epoch, self.start_batch = sampler, sampler.epoch, sampler.start_batch
        self.epochs = epochs if epochs is not None else itertools.count(sampler.epoch + 1)

    def __iter__(self):
        yield from self.sampler.epoch_keys(self.first_epoch, self.start_batch)
        for epoch in self.epochs:
            yield from self.sampler.epoch_keys(epoch)


def loader_options(num_workers: int, niced: bool = True, worker_cores: list[int] | None = None) -> dict:
    """DataLoader arguments for `num_workers` feature processes (0: this process computes), niced or
    on worker_cores at idle priority (utils/placement.py), or at normal priority (niced False)."""
    if num_workers <= 0:
        return {"num_workers": 0, "use_shared_memory": False}
    init = functools.partial(_enter_worker, worker_cores, niced, os.getpid())
    return {"num_workers": num_workers, "use_shared_memory": True, "worker_init_fn": init}


def _enter_worker(worker_cores: list[int] | None, niced: bool, trainer_pid: int, worker_id: int) -> None:
    # SIGTERM when the trainer dies: Paddle's worker then releases its /dev/shm segments (a SIGKILLed
    # trainer left the worker running, reparented, holding them)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    batch_workers.die_with(trainer_pid, signal.SIGTERM)
    if niced:
        placement.enter_worker(worker_cores)


def _exit_cleanly(signum, frame) -> None:
    """SIGTERM in a Paddle worker: SystemExit runs its loop's `finally` and atexit, which release its
    shared memory (the default action ends the process with them left in /dev/shm)."""
    raise SystemExit(0)


def make_loader(dataset: SpeechDataset, sampler: paddle.io.Sampler, num_workers: int,
                niced: bool = True, worker_cores: list[int] | None = None) -> paddle.io.DataLoader:
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, return_list=True,
                                **loader_options(num_workers, niced, worker_cores))


def run_batches(dataset: SpeechDataset, sampler: BatchSampler, num_workers: int, niced: bool = True,
                epochs: Iterable[int] | None = None, worker_cores: list[int] | None = None, loader: str = "slots"):
    """A generator of the batches of every epoch from the sampler's set_epoch position on (see
    RunSampler); the training loop takes len(sampler) batches from it per epoch. `loader` (data.loader):
    "slots", our workers (utils/batch_workers.py), or "paddle", paddle.io.DataLoader's; with
    num_workers 0 a thread of this process makes the batches either way (batch_workers.thread_batches:
    Paddle's own hung on a sample's error). close() stops the workers (Paddle's iterator stops them
    only at its end, never reached here, or when garbage-collected, which its own reader thread
    prevents)."""
    if loader not in LOADERS:
        raise ValueError(f"data.loader must be one of {', '.join(LOADERS)}, not '{loader}'")
    batch_keys = RunSampler(sampler, epochs)
    if num_workers <= 0:
        return batch_workers.thread_batches(functools.partial(make_batch, dataset), batch_keys)
    if loader == "slots":
        size = batch_workers.slot_bytes(sampler.batch_size, longest_frames(dataset), dataset.dim)
        return batch_workers.worker_batches(functools.partial(make_batch, dataset), batch_keys, num_workers, size,
                                            niced, worker_cores)
    return _close_at_end(make_loader(dataset, batch_keys, num_workers, niced, worker_cores))


def longest_frames(dataset: SpeechDataset) -> int:
    """Frames of the dataset's longest utterance by its manifest duration."""
    durations = dataset.durations
    longest = float(durations.max()) if len(durations) else 0.0
    return num_frames(int(longest * dataset.sample_rate), dataset.feature_method, dataset.sample_rate)


def _close_at_end(loader: paddle.io.DataLoader):
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        iterator._try_shutdown_all()  # workers, or the in-process reader thread


def padding_waste(feat_lens: np.ndarray) -> float:
    """Padded frames / real frames of one batch."""
    return float(feat_lens.max() * len(feat_lens) - feat_lens.sum()) / max(1, int(feat_lens.sum()))

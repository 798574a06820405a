"""Training: SortaGrad sampler, one-utterance overfit, exact resume, best_model, fine-tuning, NaN guard."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import paddle
import pytest

import utils.resume as resume
import utils.training as training
from train_fixtures import (ROOT, TINY_YAML, cached_corpus, have_espeak, make_corpus, max_abs_diff, model_folder,
                            read_params, spoken_corpus, tiny_config)  # noqa: F401
from utils.checkpoint import (CheckpointError, finish_epoch_end, load_optimizer_state, load_state,
                              portable_optimizer_state)
from utils.runlog import read_points
from utils.audio import AudioError
from utils.augment import load_augmentation
from utils.data import (BatchSampler, RunSampler, SpeechDataset, epoch_batches, make_loader, run_batches,
                        sample_rng)
from utils.decoders import greedy_decode
from utils.features import load_mean_std
from utils.manifest import read_manifest, read_manifest_table
from utils.model import build_model
from utils.text import Vocabulary

AUGMENTATION = str(ROOT / "conf" / "augmentation.json")
REAL_EVALUATE, REAL_CTC_LOSS = training.evaluate, training.ctc_loss_per_utterance  # before any monkeypatch
REAL_WRITE_STATE = training.write_state


# ----------------------------------------------------------------------------- SortaGrad sampler
def shuffled_durations(count: int = 40, seed: int = 0) -> np.ndarray:
    """Durations 1.0, 1.2, ... in a shuffled manifest order."""
    return np.random.default_rng(seed).permutation(1.0 + 0.2 * np.arange(count))


def flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


def test_epoch_zero_is_sorted_by_duration_whatever_the_manifest_order():
    durations = shuffled_durations()
    sampler = BatchSampler(durations.tolist(), batch_size=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10
    assert flat(batches) == np.argsort(durations).tolist()
    assert np.all(np.diff(durations[flat(batches)]) > 0)


def test_later_epochs_shuffle_batches_but_keep_them_homogeneous():
    durations = shuffled_durations()
    sampler = BatchSampler(durations.tolist(), batch_size=4, seed=3)
    rank = np.argsort(np.argsort(durations))  # utterance -> position in duration order
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        batches = [np.asarray(b) - epoch * len(durations) for b in sampler]  # keys carry the epoch
        assert sorted(flat(batches)) == list(range(40))  # every utterance once
        means = [durations[b].mean() for b in batches]
        assert means != sorted(means)  # the batch order is shuffled
        spreads = [rank[batch].max() - rank[batch].min() for batch in batches]  # in duration rank
        assert max(spreads) <= 11 and np.mean(spreads) < 6  # measured worst 10 (20 seeds x 5 epochs)
        orders.append(flat(batches))
    assert orders[0] != orders[1]
    sampler.set_epoch(1)
    assert flat([np.asarray(b) - 40 for b in sampler]) == orders[0]  # seeded by epoch: reproducible
    # pinned: the first batch of epoch 1 for seed 3
    assert sorted(durations[orders[0][:4]].round(1).tolist()) == PINNED_EPOCH1_FIRST_BATCH
    # control: random batches of 4 out of 40 spread over 23 ranks on average
    random_spread = np.mean([np.ptp(rank[b]) for b in np.random.default_rng(0).permutation(40).reshape(10, 4)])
    assert random_spread > 20


PINNED_EPOCH1_FIRST_BATCH = [5.8, 6.0, 6.4, 6.6]  # jitter moved 6.2 into another batch


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    durations = shuffled_durations()

    def batches(epoch, seed):
        return [b.tolist() for b in epoch_batches(durations, 4, epoch, seed)]
    assert batches(2, seed=5) == batches(2, seed=5)
    assert batches(2, seed=5) != batches(2, seed=6)
    assert batches(0, seed=5) == batches(0, seed=6)  # sorted


def test_a_samples_draws_depend_on_seed_epoch_and_index_alone():
    def draws(seed, epoch, index, count=6):
        return sample_rng(seed, epoch, index).random(count).tolist()
    first = draws(3, 1, 7)
    sample_rng(3, 1, 8).random(1000)  # a sample between them that draws a lot
    assert draws(3, 1, 7) == first
    assert draws(3, 1, 7, 2) == first[:2]
    others = [draws(4, 1, 7), draws(3, 2, 7), draws(3, 1, 8), draws(3, 7, 1), draws(2 ** 64 + 3, 1, 7)]
    assert all(other != first for other in others[:-1])
    assert others[-1] == first  # the seed counts modulo 2^64
    # pinned: a change of generator or keying changes every run's augmentation
    np.testing.assert_allclose(first, PINNED_SAMPLE_DRAWS, rtol=0, atol=1e-15)
    # each thread has its own generator: a sample begun here is not disturbed by one made in another thread
    outer, inner = sample_rng(3, 1, 7), []
    head = outer.random(3).tolist()
    thread = threading.Thread(target=lambda: inner.append(draws(3, 1, 8)))
    thread.start()
    thread.join()
    assert head + outer.random(3).tolist() == first and inner == [draws(3, 1, 8)]


PINNED_SAMPLE_DRAWS = [0.9006134549126954, 0.34692702045684165, 0.9288408613508304, 0.07300167523349887,
                       0.6728043649375212, 0.7044052835732677]


@pytest.mark.parametrize("epoch", [0, 1])
def test_ranks_get_disjoint_equal_batches_that_tile_the_double_batch(epoch):
    durations = shuffled_durations(42)
    single = BatchSampler(durations.tolist(), batch_size=8, seed=3)
    ranks = [BatchSampler(durations.tolist(), batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in [single] + ranks:
        sampler.set_epoch(epoch)
    single_batches, rank_batches = list(single), [list(s) for s in ranks]
    assert len(rank_batches[0]) == len(rank_batches[1]) == len(single_batches) == 6  # 42 = 5 x 8 + 2
    assert not set(flat(rank_batches[0])) & set(flat(rank_batches[1]))
    for step, batch in enumerate(single_batches):  # step k of 2 ranks x 4 = step k of 1 process x 8
        assert rank_batches[0][step] + rank_batches[1][step] == batch
    assert sorted(len(b) for b in rank_batches[0]) == [1] + [4] * 5  # the tail of 2 is split 1 + 1
    assert sorted(flat(rank_batches[0]) + flat(rank_batches[1])) == [epoch * 42 + i for i in range(42)]


def test_a_tail_smaller_than_the_world_is_dropped_on_every_rank():
    durations = shuffled_durations(41)  # 41 = 5 x 8 + 1
    ranks = [BatchSampler(durations.tolist(), batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in ranks] == [5, 5]
    assert len(set(flat(ranks[0])) | set(flat(ranks[1]))) == 40


def test_set_epoch_start_batch_skips_exactly_and_num_iters_caps():
    durations = shuffled_durations()
    sampler = BatchSampler(durations.tolist(), batch_size=4, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert full[0][0] >= 80  # keys of epoch 2 are offset by 2 x 40
    for start in (0, 1, 7, 10):
        sampler.set_epoch(2, start_batch=start)
        assert list(sampler) == full[start:]
    capped = BatchSampler(durations.tolist(), batch_size=4, seed=3, num_iters_per_epoch=3)
    capped.set_epoch(2)
    assert list(capped) == full[:3] and len(capped) == 3


def test_the_run_sampler_goes_on_through_the_following_epochs():
    durations = np.random.default_rng(0).uniform(1, 5, 21)
    sampler = BatchSampler(durations.tolist(), batch_size=4, seed=3)
    per_epoch = []
    for epoch, start in ((1, 2), (2, 0), (3, 0)):  # (1, 2): a run resumed at epoch 1, batch 2
        sampler.set_epoch(epoch, start)
        per_epoch += list(sampler)
    sampler.set_epoch(1, 2)
    keys = RunSampler(sampler)
    sampler.set_epoch(5, 0)  # the loop's later set_epoch calls do not steer it
    assert list(itertools.islice(iter(keys), len(per_epoch))) == per_epoch
    sampler.set_epoch(0, 0)
    repeated = RunSampler(sampler, epochs=itertools.repeat(0))
    assert list(itertools.islice(iter(repeated), 12)) == list(sampler) * 2


def test_a_niced_run_long_worker_yields_the_in_process_batches(spoken_corpus):
    """Our loader's worker (utils/batch_workers.py), placed or not, Paddle's DataLoader's, and this
    process all make the same batches, across epochs."""
    utterances = read_manifest(spoken_corpus / "manifest.train")
    vocabulary = Vocabulary.load(spoken_corpus / "vocabulary.txt")
    noise_manifest = spoken_corpus / "manifest.noise"
    noise = [u.audio_filepath for u in read_manifest(noise_manifest)] if noise_manifest.is_file() else []
    augmentation = load_augmentation(AUGMENTATION, noise)
    dataset = SpeechDataset(utterances, vocabulary, "fbank", 16000, 80, augmentation, seed=5)
    sampler = BatchSampler([u.duration for u in utterances], batch_size=3, seed=5)
    sampler.set_epoch(1, 2)  # (1, 2): a run resumed at epoch 1, batch 2
    worker = run_batches(dataset, sampler, 1)  # forked first: a fork beside a loader's busy thread can hang
    from_worker = [next(worker) for _ in range(3 * len(sampler) - 2)]
    worker.close()
    sampler.set_epoch(1, 2)
    placed = run_batches(dataset, sampler, 1, worker_cores=[max(os.sched_getaffinity(0))])  # idle priority
    assert all(np.array_equal(np.asarray(ours), np.asarray(theirs))
               for batch in from_worker[:4] for ours, theirs in zip(batch, next(placed)))
    placed.close()
    sampler.set_epoch(1, 2)
    paddles = run_batches(dataset, sampler, 1, loader="paddle")  # paddle.io.DataLoader's worker
    assert all(np.array_equal(np.asarray(ours), np.asarray(theirs))
               for batch in from_worker[:4] for ours, theirs in zip(batch, next(paddles)))
    paddles.close()
    sampler.set_epoch(1, 2)
    in_process = run_batches(dataset, sampler, 0)
    per_epoch = []  # a loader iterated afresh each epoch, in this process
    for epoch, start_batch in ((1, 2), (2, 0), (3, 0)):
        sampler.set_epoch(epoch, start_batch)
        per_epoch += list(make_loader(dataset, sampler, 0))
    assert len(per_epoch) == len(from_worker)
    for expected, a_worker_s in zip(per_epoch, from_worker):
        for ours, theirs, workers in zip(expected, next(in_process), a_worker_s):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(workers))
    in_process.close()
    with pytest.raises(ValueError, match="data.loader must be one of slots, paddle, not 'fast'"):
        run_batches(dataset, sampler, 1, loader="fast")


# ----------------------------------------------------------------------------- one-utterance overfit
LDC93S1 = "she had your dark suit in greasy wash water all year"


@pytest.fixture(scope="module")
def ldc93s1(tmp_path_factory):
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    return cached_corpus("ldc93s1", lambda: make_corpus(tmp_path_factory.mktemp("ldc93s1"), [LDC93S1], [LDC93S1],
                                                        repeat=10))


def test_one_utterance_overfits_to_cer_zero(ldc93s1, tmp_path):
    """DeepSpeech's ldc93s1 sanity check: 60 steps (6 epochs of the sentence listed 10 times,
    batch 1) of conf/tiny.yml with a 64-unit GRU at lr 5e-3. Measured here: CER 0 from step 40 to 60
    (the step varies with the thread count: float sums are ordered differently)."""
    cfg = tiny_config(ldc93s1, tmp_path, train__num_epoch=6, train__batch_size=1, train__learning_rate=5e-3,
                      train__warmup_steps=0, model__rnn_size=64, train__log_interval=1000)
    cores = os.sched_getaffinity(0)
    training.train(cfg)
    assert os.sched_getaffinity(0) == cores  # pinned threads (utils/placement.py) released at the end
    log_text = (model_folder(cfg).parent / "train.log").read_text(encoding="utf-8")
    assert "features: " in log_text and "threads: " in log_text and "malloc: " in log_text
    state = load_state(model_folder(cfg, "best_model"))
    assert state.step <= 60 and state.best_metric == 0.0
    assert state.history[-1]["test_cer"] == 0.0
    # decode the sentence with best_model's weights: exactly the transcript
    vocabulary = Vocabulary.load(ldc93s1 / "vocabulary.txt")
    normalizer = load_mean_std(ldc93s1 / "mean_std.npz")
    model = build_model(cfg.model, 40, len(vocabulary))
    model.set_state_dict(paddle.load(str(model_folder(cfg, "best_model") / "model.pdparams")))
    np.testing.assert_allclose(model.feat_mean.numpy(), normalizer["mean"])
    model.eval()
    dataset = SpeechDataset(read_manifest(ldc93s1 / "manifest.test"), vocabulary, "fbank", 16000, 40)
    feats, _, _ = dataset[0]
    logits, out_lens = model(paddle.to_tensor(feats[None]), paddle.to_tensor(np.array([len(feats)])))
    assert greedy_decode(logits.numpy(), out_lens.numpy(), vocabulary.tokens) == [LDC93S1]


# ----------------------------------------------------------------------------- exact resume
def resume_config(corpus: Path, out: Path, **overrides):
    """8 utterances, batch 2: 4 batches an epoch, 3 epochs, augmentation on (seeded per utterance)."""
    settings = dict(train__num_epoch=3, train__batch_size=2, data__augment_conf_path=AUGMENTATION,
                    train__log_interval=1000)
    settings.update(overrides)
    return tiny_config(corpus, out, **settings)


_REFERENCE: dict = {}


def reference_run(corpus: Path, root: Path, accum_grad: int) -> tuple[dict, dict]:
    """The uninterrupted run: final weights and state (computed once per accum_grad)."""
    if accum_grad not in _REFERENCE:
        cfg = resume_config(corpus, root / f"reference_{accum_grad}", train__accum_grad=accum_grad)
        training.train(cfg)
        folder = model_folder(cfg)
        _REFERENCE[accum_grad] = (read_params(folder), dataclasses.asdict(load_state(folder)))
    return _REFERENCE[accum_grad]


class Interrupt:
    """Wraps training._train_step: raises `error` instead of running call number `call` (1-based)."""

    def __init__(self, call: int, error: BaseException):
        self.call, self.error, self.calls = call, error, 0
        self.original = training._train_step

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.call:
            raise self.error
        return self.original(*args)


def assert_same_run(cfg, reference: tuple[dict, dict]) -> None:
    params, state = read_params(model_folder(cfg)), dataclasses.asdict(load_state(model_folder(cfg)))
    assert max_abs_diff(params, reference[0]) == 0.0  # bit-exact
    for key in ("epoch", "batch_in_epoch", "step", "best_metric", "best_epoch", "history"):
        assert state[key] == reference[1][key], key


class SignalDuring(Interrupt):
    """Wraps training._train_step: sends this process `signum` as call number `call` starts, then runs it."""

    def __init__(self, call: int, signum: int):
        super().__init__(call, KeyboardInterrupt())
        self.signum = signum

    def __call__(self, *args):
        if self.calls + 1 == self.call:
            os.kill(os.getpid(), self.signum)  # the handler runs at once, inside the step
        self.calls += 1
        return self.original(*args)


@pytest.mark.parametrize("case", ["max_steps_mid_epoch", "max_steps_at_epoch_end", "crash_after_save_step",
                                  "ctrl_c", "accum_grad_2_mid_epoch", "sigint_in_a_step",
                                  "sigterm_in_a_window_accum_grad_2"])
def test_interrupted_and_resumed_equals_uninterrupted(case, spoken_corpus, tmp_path, tmp_path_factory,
                                                      monkeypatch):
    accum = 2 if "accum_grad_2" in case else 1
    reference = reference_run(spoken_corpus, tmp_path_factory.getbasetemp() / "resume_reference", accum)
    assert reference[1]["step"] == 12 // accum and reference[1]["epoch"] == 3
    first = resume_config(spoken_corpus, tmp_path, train__accum_grad=accum)
    stopped_at = {"max_steps_mid_epoch": (1, 2, 6), "max_steps_at_epoch_end": (1, 0, 4),  # epoch 1 evaluated
                  "crash_after_save_step": (1, 2, 6), "ctrl_c": (1, 3, 7), "accum_grad_2_mid_epoch": (1, 2, 3),
                  "sigint_in_a_step": (1, 3, 7),  # batch 7 ends, then the run stops and saves
                  "sigterm_in_a_window_accum_grad_2": (1, 2, 3)}  # in the window's first batch: it ends first
    if case.startswith(("max_steps", "accum")):
        first.train.max_steps = stopped_at[case][2]
        training.train(first)
    elif case == "crash_after_save_step":  # last_model every 2 batches; batch 8 never runs
        first.train.save_step = 2
        monkeypatch.setattr(training, "_train_step", Interrupt(8, RuntimeError("power cut")))
        with pytest.raises(RuntimeError, match="power cut"):
            training.train(first)
    elif case in ("sigint_in_a_step", "sigterm_in_a_window_accum_grad_2"):
        call, signum = (7, signal.SIGINT) if accum == 1 else (5, signal.SIGTERM)
        monkeypatch.setattr(training, "_train_step", SignalDuring(call, signum))
        with pytest.raises(KeyboardInterrupt):
            training.train(first)
    else:  # Ctrl-C in batch 8: last_model is saved on the way out, after 7 batches
        monkeypatch.setattr(training, "_train_step", Interrupt(8, KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            training.train(first)
    monkeypatch.undo()
    saved = load_state(model_folder(first))
    assert (saved.epoch, saved.batch_in_epoch, saved.step) == stopped_at[case]

    resumed = resume_config(spoken_corpus, tmp_path, train__accum_grad=accum)  # same folder, no max_steps
    training.train(resumed)
    assert_same_run(resumed, reference)
    log = (Path(resumed.train.save_model_path) / resumed.train.use_model / "train.log").read_text()
    assert f"resumed from {model_folder(resumed)}: epoch {stopped_at[case][0]}, batch {stopped_at[case][1]}" in log


def test_optimizer_state_loads_into_a_process_that_built_other_layers_first(tmp_path):
    """Paddle names parameters conv2d_<n> with a per-process counter; the checkpoint must not depend on it."""
    cfg = tiny_config(tmp_path, tmp_path).model
    model = build_model(cfg, 40, 9)
    optimizer = paddle.optimizer.AdamW(learning_rate=0.01, parameters=model.parameters())
    feats = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 30, 40)).astype(np.float32))
    model(feats, paddle.to_tensor(np.array([30, 20])))[0].mean().backward()
    optimizer.step()
    optimizer.clear_grad()
    paddle.save(portable_optimizer_state(model, optimizer), str(tmp_path / "optimizer.pdopt"))
    saved = paddle.load(str(tmp_path / "optimizer.pdopt"))
    assert "convs.0.0.weight|_moment1_0" in saved and not any(k.startswith("conv2d_") for k in saved)

    build_model(cfg, 40, 9)  # shifts every generated name of the next model
    fresh = build_model(cfg, 40, 9)
    assert fresh.head.weight.name != model.head.weight.name
    fresh_optimizer = paddle.optimizer.AdamW(learning_rate=0.01, parameters=fresh.parameters())
    load_optimizer_state(fresh, fresh_optimizer, tmp_path / "optimizer.pdopt")
    fresh.set_state_dict(model.state_dict())
    for net, opt in ((model, optimizer), (fresh, fresh_optimizer)):  # the same second step on both
        net(feats, paddle.to_tensor(np.array([30, 20])))[0].mean().backward()
        opt.step()  # Paddle asserts here when a moment is missing from the loaded state
    for suffix in ("_moment1_0", "_moment2_0", "_beta1_pow_acc_0"):
        np.testing.assert_array_equal(fresh_optimizer.state_dict()[fresh.head.weight.name + suffix].numpy(),
                                      optimizer.state_dict()[model.head.weight.name + suffix].numpy())
    np.testing.assert_array_equal(fresh.head.weight.numpy(), model.head.weight.numpy())
    headless = build_model(cfg, 40, 9)
    headless.head = paddle.nn.Identity()
    with pytest.raises(CheckpointError, match="'head.weight', which this model does not have"):
        load_optimizer_state(headless, paddle.optimizer.AdamW(parameters=headless.parameters()),
                             tmp_path / "optimizer.pdopt")


@pytest.mark.parametrize("fault", ["evaluation_fails", "killed_after_the_curves"])
def test_an_epoch_end_is_saved_before_its_evaluation_and_evaluated_on_the_next_start(
        fault, spoken_corpus, tmp_path, tmp_path_factory, monkeypatch):
    """The second epoch's evaluation fails (a test file gone, say), or the run dies after it logged the
    test curves but before its result reached state.json: the epoch's training is in epoch_2 and
    last_model, and the next start evaluates it first, ending as the uninterrupted run."""
    reference = reference_run(spoken_corpus, tmp_path_factory.getbasetemp() / "resume_reference", 1)
    first = resume_config(spoken_corpus, tmp_path)
    calls = []

    def evaluate_fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise AudioError("test.wav: file not found")
        return REAL_EVALUATE(*args, **kwargs)

    def write_state_dies_second(folder, state):
        calls.append(1)
        if len(calls) == 3:  # epoch_1, last_model, then epoch_2's
            raise RuntimeError("killed")
        return REAL_WRITE_STATE(folder, state)
    if fault == "evaluation_fails":
        monkeypatch.setattr(training, "evaluate", evaluate_fails_second)
    else:
        monkeypatch.setattr(training, "write_state", write_state_dies_second)
    with pytest.raises(training.TrainingError if fault == "evaluation_fails" else RuntimeError,
                       match=(rf"the evaluation of epoch 2 failed: test.wav: file not found. The epoch's training "
                              rf"is saved in {model_folder(first)}; fix or remove the file in "
                              rf"{first.data.test_manifest} and run train.py again, which evaluates the epoch first"
                              if fault == "evaluation_fails" else "killed")):
        training.train(first)
    monkeypatch.undo()
    for name in ("last_model", "epoch_2"):
        saved = load_state(model_folder(first, name))
        assert (saved.epoch, saved.batch_in_epoch, saved.step, len(saved.history)) == (2, 0, 8, 1)
    assert load_state(model_folder(first, "best_model")).epoch == 1

    resumed = resume_config(spoken_corpus, tmp_path)
    training.train(resumed)
    assert_same_run(resumed, reference)
    log = (model_folder(resumed).parent / "train.log").read_text(encoding="utf-8")
    assert "evaluating epoch 2: its end was saved, its evaluation did not end" in log
    assert [h["epoch"] for h in load_state(model_folder(resumed, "epoch_2")).history] == [0, 1]
    points = read_points(Path(resumed.train.log_dir) / resumed.train.use_model)
    assert sorted(p for p in points if p[0] == "Test/Loss") == [("Test/Loss", 1), ("Test/Loss", 2), ("Test/Loss", 3)]
    best = load_state(model_folder(resumed, "best_model"))
    assert (best.best_epoch, best.epoch) == (reference[1]["best_epoch"], reference[1]["best_epoch"] + 1)


@pytest.mark.parametrize("setting,message", [
    ({"train__eval_decoder": "ctc_beam_search", "decode__lang_model_path": "/nonexistent/lm.arpa"},
     r"the per-epoch evaluation cannot decode with train.eval_decoder=ctc_beam_search: language model "
     r"/nonexistent/lm.arpa does not exist: .* \(or pass --eval_decoder=ctc_greedy\)"),
    ({"train__metrics_type": "CER"}, "train.metrics_type is 'CER'; use one of cer, wer"),
    ({"data__augment_conf_path": str(TINY_YAML)}, rf"{TINY_YAML}:1: not valid JSON"),
    ({"model__rnn_type": "rnn"}, "model.rnn_type must be gru or lstm, not 'rnn'"),
    ({"train__scheduler": "cosine"}, "unknown train.scheduler 'cosine'; use one of warmup_exponential, "
                                     "warmup_halflife, constant"),
    ({"features__feature_method": "linear"}, "holds fbank statistics but features.feature_method is linear"),
    ({"features__sample_rate": 8000}, "holds statistics of 16000 Hz audio but features.sample_rate is 8000; "
                                      "rerun create_data.py with --sample_rate=8000, or pass --sample_rate=16000"),
])
def test_what_would_fail_after_an_epoch_fails_before_the_first_step(setting, message, spoken_corpus, tmp_path,
                                                                   monkeypatch):
    """(tiny_config sets keys past the config's checks, as a program building its Config may.)"""
    monkeypatch.setattr(training, "_train_step", Interrupt(1, AssertionError("a step ran")))
    with pytest.raises(training.TrainingError, match=message):
        training.train(tiny_config(spoken_corpus, tmp_path, **setting))
    assert not model_folder(tiny_config(spoken_corpus, tmp_path)).exists()


def test_train_py_prints_one_line_for_a_bad_augmentation_file(spoken_corpus, tmp_path):
    args = [f"--configs={TINY_YAML}", f"--train_manifest={spoken_corpus / 'manifest.train'}",
            f"--test_manifest={spoken_corpus / 'manifest.test'}", f"--dataset_vocab={spoken_corpus / 'vocabulary.txt'}",
            f"--mean_std_path={spoken_corpus / 'mean_std.npz'}", f"--save_model_path={tmp_path / 'models'}",
            f"--log_dir={tmp_path / 'log'}", f"--augment_conf_path={TINY_YAML}"]
    done = subprocess.run([sys.executable, str(ROOT / "train.py")] + args, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {TINY_YAML}:1: not valid JSON (Expecting value)"


def test_a_run_resumed_from_an_older_epoch_is_not_overwritten_by_the_later_epochs_on_restart(
        spoken_corpus, tmp_path, tmp_path_factory):
    """Trained 3 epochs; resumed from epoch_1 and stopped at step 6 (its test results so far are the first
    run's): epoch_3 (step 12) stays, but is not copied over last_model and best_model on the next start."""
    reference_root = tmp_path_factory.getbasetemp() / "resume_reference"
    reference_run(spoken_corpus, reference_root, 1)
    shutil.copytree(reference_root / "reference_1" / "models", tmp_path / "models")
    cfg = resume_config(spoken_corpus, tmp_path)
    root = model_folder(cfg).parent
    best_before = load_state(root / "best_model")
    branch = resume_config(spoken_corpus, tmp_path, train__resume_model=str(root / "epoch_1"), train__max_steps=6)
    training.train(branch)
    last = load_state(root / "last_model")
    assert (last.epoch, last.batch_in_epoch, last.step) == (1, 2, 6)
    assert last.history == load_state(root / "epoch_3").history[:1]  # the same first epoch
    assert finish_epoch_end(root) == []
    assert load_state(root / "last_model") == last and load_state(root / "best_model") == best_before
    shutil.move(str(root / "last_model"), str(tmp_path / "moved_away"))  # to start fresh, as errors advise
    assert finish_epoch_end(root) == [] and not (root / "last_model").exists()


def test_with_accum_grad_log_lines_and_saves_come_once_where_the_window_passes_the_interval(
        spoken_corpus, tmp_path, monkeypatch):
    """4 batches an epoch in windows of 2, log_interval 2, save_step 3: a line after each window (none at
    step 0 with an unused learning rate, none twice), last_model saved where batch 4 passes 3."""
    cfg = tiny_config(spoken_corpus, tmp_path, train__num_epoch=2, train__batch_size=2, train__accum_grad=2,
                      train__log_interval=2, train__save_step=3)
    saves, real_save = [], training._save

    def save(run, name):
        saves.append((name, run.state.epoch, run.state.batch_in_epoch, run.state.step))
        return real_save(run, name)
    monkeypatch.setattr(training, "_save", save)
    training.train(cfg)
    assert saves == [("last_model", 0, 4, 2), ("epoch_1", 1, 0, 2), ("last_model", 1, 4, 4), ("epoch_2", 2, 0, 4)]
    log = (model_folder(cfg).parent / "train.log").read_text(encoding="utf-8")
    lines = [line.split("] ", 1)[1].split(" reader_cost")[0].split(" loss ")[0] + " lr " + line.split(" lr ")[1][:9]
             for line in log.splitlines() if " batch [" in line]
    # warm-up over 5 steps to 3e-3: steps 0..3 ran at 6e-4, 1.2e-3, 1.8e-3, 2.4e-3
    assert lines == ["epoch [1/2] batch [2/4] lr 6.000e-04", "epoch [1/2] batch [4/4] lr 1.200e-03",
                     "epoch [2/2] batch [2/4] lr 1.800e-03", "epoch [2/2] batch [4/4] lr 2.400e-03"]
    points = read_points(Path(cfg.train.log_dir) / cfg.train.use_model)
    assert [p for p in points if p[0] == "Train/Loss"] == [("Train/Loss", step) for step in (1, 2, 3, 4)]


def test_resuming_with_another_mean_std_names_both_files_and_the_fix(spoken_corpus, tmp_path):
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=1)
    training.train(cfg)
    changed = dict(np.load(spoken_corpus / "mean_std.npz"))
    changed["mean"] = changed["mean"] + 1.0
    np.savez(tmp_path / "other_mean_std.npz", **changed)
    last = model_folder(cfg)
    other = resume_config(spoken_corpus, tmp_path, data__mean_std_path=str(tmp_path / "other_mean_std.npz"))
    with pytest.raises(training.TrainingError, match=(
            rf"{tmp_path / 'other_mean_std.npz'} differs from {last / 'mean_std.npz'}, the feature statistics "
            rf"{last} was trained with; .* Pass --mean_std_path={last / 'mean_std.npz'} to continue it, "
            rf"--pretrained_model={last} to fine-tune")):
        training.train(other)
    assert load_state(last).step == 1
    same = resume_config(spoken_corpus, tmp_path, train__max_steps=2, data__mean_std_path=str(last / "mean_std.npz"))
    training.train(same)  # the folder's own file: it goes on
    assert load_state(last).step == 2
    np.testing.assert_array_equal(read_params(last)["feat_mean"], load_mean_std(last / "mean_std.npz")["mean"])


@pytest.mark.parametrize("max_steps,accum_grad,eta", [(0, 1, "0:49:58"), (20, 1, "0:00:10"), (20, 2, "0:00:20"),
                                                       (5000, 1, "0:49:58")])
def test_the_eta_counts_the_batches_to_max_steps_when_it_ends_the_run_first(max_steps, accum_grad, eta, tmp_path):
    """100 batches an epoch at 1 s each, at batch 2 of epoch 1 of 30, after 10 steps."""
    cfg = tiny_config(tmp_path, tmp_path, train__num_epoch=30, train__max_steps=max_steps,
                      train__accum_grad=accum_grad)
    lines = []
    log = type("Log", (), {"info": lambda self, line: lines.append(line), "scalar": lambda self, *args: None})()
    optimizer = type("Optimizer", (), {"get_lr": lambda self: 1e-3})()
    run = training._Run(cfg=cfg, state=training.TrainState(epoch=0, step=10), optimizer=optimizer, log=log)
    timing = {"reader": 0.0, "batch": 2.0, "utts": 4, "audio": 8.0, "padding": 0.0, "batches": 2}
    training._log_progress(run, 2, 100, [1.5], timing)
    assert lines[0].endswith(f" eta {eta}")


def test_a_folder_without_optimizer_state_resumes_and_says_the_optimizer_starts_anew(spoken_corpus, tmp_path):
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=1)
    training.train(cfg)
    (model_folder(cfg) / "optimizer.pdopt").unlink()
    training.train(resume_config(spoken_corpus, tmp_path, train__max_steps=2))
    log = (model_folder(cfg).parent / "train.log").read_text(encoding="utf-8")
    assert (f"note: {model_folder(cfg)} has no optimizer.pdopt (an exported or copied model folder): the optimizer "
            f"starts anew from its weights, its moments at zero") in log
    assert load_state(model_folder(cfg)).step == 2


def test_resume_at_max_steps_trains_no_further(spoken_corpus, tmp_path):
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=3)
    training.train(cfg)
    before = read_params(model_folder(cfg))
    training.train(cfg)  # resumes from last_model, already at max_steps
    assert load_state(model_folder(cfg)).step == 3
    assert max_abs_diff(before, read_params(model_folder(cfg))) == 0.0


# ----------------------------------------------------------------------------- best_model
def scripted_evaluate(rates: list[float]):
    """utils.training.evaluate with the error rate replaced, epoch after epoch, by `rates`."""
    queue = list(rates)

    def evaluate(*args, **kwargs):
        return dataclasses.replace(REAL_EVALUATE(*args, **kwargs), error_rate=queue.pop(0))
    return evaluate


def test_best_model_survives_resume(spoken_corpus, tmp_path, monkeypatch):
    def run(num_epoch: int, rate: float):
        cfg = tiny_config(spoken_corpus, tmp_path, train__num_epoch=num_epoch, train__batch_size=4)
        monkeypatch.setattr(training, "evaluate", scripted_evaluate([rate]))
        training.train(cfg)
        return cfg

    cfg = run(1, 0.5)
    epoch_1 = read_params(model_folder(cfg, "epoch_1"))
    cfg = run(2, 0.8)  # resumed; a worse epoch
    best = load_state(model_folder(cfg, "best_model"))
    assert (best.best_metric, best.best_epoch, best.epoch) == (0.5, 0, 1)
    assert max_abs_diff(read_params(model_folder(cfg, "best_model")), epoch_1) == 0.0
    assert max_abs_diff(read_params(model_folder(cfg)), epoch_1) > 0.0  # last_model moved on
    last = load_state(model_folder(cfg))
    assert (last.best_metric, last.best_epoch, last.epoch) == (0.5, 0, 2)
    assert [h["test_cer"] for h in last.history] == [0.5, 0.8]

    cfg = run(3, 0.3)  # resumed again; a better epoch replaces best_model
    best = load_state(model_folder(cfg, "best_model"))
    assert (best.best_metric, best.best_epoch, best.epoch) == (0.3, 2, 3)
    assert max_abs_diff(read_params(model_folder(cfg, "best_model")), read_params(model_folder(cfg, "epoch_3"))) == 0


# ----------------------------------------------------------------------------- fine-tuning
def other_vocabulary_corpus(corpus: Path, tmp: Path) -> Path:
    """The same audio with a vocabulary of more tokens (a new language's characters, say)."""
    new = tmp / "corpus_new_vocab"
    new.mkdir()
    for name in ("manifest.train", "manifest.test", "mean_std.npz"):
        (new / name).write_bytes((corpus / name).read_bytes())
    tokens = Vocabulary.load(corpus / "vocabulary.txt").tokens
    Vocabulary(tokens + ["q", "j", "z"]).save(new / "vocabulary.txt")
    return new


def test_pretrained_output_layer_is_loaded_token_by_token(spoken_corpus, tmp_path):
    """A vocabulary with 3 tokens more: every other weight as pretrained, the output layer's columns of the
    shared tokens as pretrained, the new tokens' as built. A vocabulary of the same tokens in another order
    (another corpus's frequencies): every column follows its token."""
    source = tiny_config(spoken_corpus, tmp_path / "source", train__max_steps=2)
    training.train(source)
    pretrained = read_params(model_folder(source))
    old_tokens = Vocabulary.load(spoken_corpus / "vocabulary.txt").tokens

    new_corpus = other_vocabulary_corpus(spoken_corpus, tmp_path)
    new_tokens = Vocabulary.load(new_corpus / "vocabulary.txt").tokens
    assert len(old_tokens) == 23 and new_tokens == old_tokens + ["q", "j", "z"]
    paddle.seed(0)
    model = build_model(source.model, 40, len(new_tokens), np.full(40, -3.0), np.full(40, 2.0))
    initial = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    skipped, note = resume.load_pretrained(model, str(model_folder(source)), new_tokens)
    assert skipped == []
    assert note == (f"output layer: {len(old_tokens)} of {len(new_tokens)} tokens loaded by token from "
                    f"{model_folder(source) / 'vocabulary.txt'} (0 at another id there); 3 not in it keep their "
                    f"initial weights: q j z")
    loaded = {k: v.numpy() for k, v in model.state_dict().items()}
    for name in loaded:
        if name in ("feat_mean", "feat_istd"):  # this dataset's normalizer
            np.testing.assert_array_equal(loaded[name], initial[name])
        elif name not in resume.HEAD:
            np.testing.assert_array_equal(loaded[name], pretrained[name])
    shared = len(old_tokens)
    np.testing.assert_array_equal(loaded["head.weight"][:, :shared], pretrained["head.weight"])
    np.testing.assert_array_equal(loaded["head.bias"][:shared], pretrained["head.bias"])
    np.testing.assert_array_equal(loaded["head.weight"][:, shared:], initial["head.weight"][:, shared:])
    np.testing.assert_array_equal(loaded["feat_mean"], np.full(40, -3.0, np.float32))

    permuted = old_tokens[:2] + old_tokens[2:][::-1]  # the same size, another order
    model = build_model(source.model, 40, len(permuted))
    skipped, note = resume.load_pretrained(model, str(model_folder(source)), permuted)
    assert len(permuted) == 23 and skipped == [] and "23 of 23 tokens" in note and "(20 at another id" in note
    weight, bias = model.head.weight.numpy(), model.head.bias.numpy()
    for new_id, token in enumerate(permuted):
        old_id = old_tokens.index(token)
        np.testing.assert_array_equal(weight[:, new_id], pretrained["head.weight"][:, old_id])
        assert bias[new_id] == pretrained["head.bias"][old_id]
    assert not np.array_equal(weight, pretrained["head.weight"])  # loaded by name and shape, it was scrambled


def test_pretrained_model_on_the_command_line(spoken_corpus, tmp_path):
    source = tiny_config(spoken_corpus, tmp_path / "source", train__max_steps=1)
    training.train(source)
    new_corpus = other_vocabulary_corpus(spoken_corpus, tmp_path)
    args = [f"--configs={TINY_YAML}", f"--train_manifest={new_corpus / 'manifest.train'}",
            f"--test_manifest={new_corpus / 'manifest.test'}", f"--dataset_vocab={new_corpus / 'vocabulary.txt'}",
            f"--mean_std_path={new_corpus / 'mean_std.npz'}", f"--save_model_path={tmp_path / 'models'}",
            f"--log_dir={tmp_path / 'log'}", "--augment_conf_path=None", "--use_model=finetuned",
            f"--pretrained_model={model_folder(source)}", "--max_steps=1"]
    done = subprocess.run([sys.executable, str(ROOT / "train.py")] + args, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"fine-tuning from {model_folder(source)}; layers not loaded: none; output layer: 23 of 26 tokens "
            f"loaded by token") in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("trained 1 steps")
    # resuming (not fine-tuning) a model folder with another vocabulary is refused
    cfg = tiny_config(new_corpus, tmp_path / "source")
    with pytest.raises(training.TrainingError, match="differs from the dataset vocabulary"):
        training.train(cfg)


# ----------------------------------------------------------------------------- NaN guard
def loss_with_nan(calls_with_nan: set[int]):
    """utils.training's CTC loss, NaN on the given (1-based) calls."""
    count = [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value = REAL_CTC_LOSS(*args, **kwargs)
        return value * float("nan") if count[0] in calls_with_nan else value
    return loss


def loss_with_nan_gradient(calls_with_nan: set[int]):
    """utils.training's CTC loss, unchanged in value but with NaN gradients on the given calls:
    0 * sqrt(0) adds 0 to the loss, and 0 * inf (the derivative of sqrt at 0) to the gradient."""
    count = [0]

    def loss(logits, *args, **kwargs):
        count[0] += 1
        value = REAL_CTC_LOSS(logits, *args, **kwargs)
        if count[0] in calls_with_nan:
            value = value + 0.0 * paddle.sqrt(logits.sum() * 0.0)
        return value
    return loss


def test_non_finite_batches_are_skipped_and_counted(spoken_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "ctc_loss_per_utterance", loss_with_nan({2, 3, 6}))
    cfg = tiny_config(spoken_corpus, tmp_path, train__num_epoch=2, train__batch_size=2, train__max_nan_in_row=3)
    training.train(cfg)
    state = load_state(model_folder(cfg))
    assert (state.nan_skipped, state.step, state.epoch) == (3, 8 - 3, 2)
    assert all(np.isfinite(v).all() for v in read_params(model_folder(cfg)).values())


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_nan_batch_leaves_weights_and_batchnorm_statistics_untouched(what, spoken_corpus, tmp_path, monkeypatch):
    clean = tiny_config(spoken_corpus, tmp_path / "clean", train__max_steps=1, train__batch_size=2)
    training.train(clean)  # one step on batch 1
    faulty = loss_with_nan if what == "loss" else loss_with_nan_gradient  # a NaN loss, or a finite one
    monkeypatch.setattr(training, "ctc_loss_per_utterance", faulty({2, 3}))
    skipping = tiny_config(spoken_corpus, tmp_path / "nan", train__batch_size=2, train__num_epoch=1,
                           train__num_iters_per_epoch=3)
    training.train(skipping)  # one step on batch 1, then batches 2 and 3 skipped
    state = load_state(model_folder(skipping))
    assert (state.step, state.nan_skipped) == (1, 2)
    clean_params, skipping_params = read_params(model_folder(clean)), read_params(model_folder(skipping))
    assert "convs.0.1._mean" in clean_params  # BatchNorm's running statistics are compared too
    assert max_abs_diff(skipping_params, clean_params) == 0.0
    log_text = (model_folder(skipping).parent / "train.log").read_text(encoding="utf-8")
    skips_logged = log_text.count("skipped a batch with a finite loss but a non-finite gradient at step 1")
    assert skips_logged == (2 if what == "gradient" else 0)


def test_too_many_nan_in_a_row_stop_naming_the_utterances(spoken_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "ctc_loss_per_utterance", loss_with_nan(set(range(1, 100))))
    cfg = tiny_config(spoken_corpus, tmp_path, train__batch_size=2, train__max_nan_in_row=3)
    with pytest.raises(training.TrainingError) as err:
        training.train(cfg)
    utterances = read_manifest(spoken_corpus / "manifest.train")
    third_batch = np.argsort([u.duration for u in utterances], kind="stable")[4:6]  # epoch 0: sorted
    message = str(err.value)
    assert message.startswith("3 batches in a row had a non-finite loss")
    for index in third_batch:
        assert utterances[index].audio_filepath in message
    others = set(range(len(utterances))) - set(third_batch.tolist())
    assert not any(utterances[i].audio_filepath + "'" in message for i in others)


def test_the_manifest_table_reads_as_the_utterance_list_in_less_than_the_file(tmp_path):
    lines = [{"audio_filepath": f"wav/{i:05d}.wav" if i % 3 else f"/abs/{i}.wav", "duration": 1.0 + (i % 7) * 0.5,
              "text": "é" * (i % 5) + f" words of line {i}"} for i in range(2000)]
    path = tmp_path / "manifest.train"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    table = read_manifest_table(path, "/data", min_duration=1.5, max_duration=3.5)
    expected = read_manifest(path, "/data", min_duration=1.5, max_duration=3.5)
    assert len(table) == len(expected) > 0 and list(table) == expected and table[-1] == expected[-1]
    np.testing.assert_array_equal(table.durations, [u.duration for u in expected])
    assert table.nbytes() < path.stat().st_size * len(expected) / len(lines)
    with pytest.raises(IndexError):
        table[len(table)]


def test_a_damaged_or_partial_last_model_stops_naming_the_file_and_the_fix(spoken_corpus, tmp_path):
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=2)
    training.train(cfg)
    last = model_folder(cfg)
    (last / "state.json").write_text('{"epoch": 0, "batch_in', encoding="utf-8")  # torn
    with pytest.raises(CheckpointError, match=rf"{last / 'state.json'} cannot be read \(JSONDecodeError.*"
                                              rf"--resume_model=.*epoch_N, or move {last} away"):
        training.train(resume_config(spoken_corpus, tmp_path))
    (last / "state.json").unlink()  # not complete any more: no silent fresh start over it
    with pytest.raises(training.TrainingError, match=r"lacks state.json, so training cannot continue from it"):
        training.train(resume_config(spoken_corpus, tmp_path))


def test_a_truncated_weights_file_is_a_checkpoint_error(spoken_corpus, tmp_path):
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=2)
    training.train(cfg)
    weights = model_folder(cfg) / "model.pdparams"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{weights} cannot be read"):
        training.train(resume_config(spoken_corpus, tmp_path))


def test_resuming_mid_epoch_on_another_number_of_processes_says_what_it_costs(spoken_corpus, tmp_path):
    """batch_in_epoch counts batches of batch_size x world_size: resumed on another count, the rest of the
    epoch is cut otherwise (multi-GPU cannot run here: the saved count is set by hand)."""
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=1)
    training.train(cfg)
    state_file = model_folder(cfg) / "state.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    assert (state["world_size"], state["batch_in_epoch"]) == (1, 1)
    state_file.write_text(json.dumps(dict(state, world_size=2)), encoding="utf-8")
    training.train(resume_config(spoken_corpus, tmp_path, train__max_steps=2))
    log = (model_folder(cfg).parent / "train.log").read_text(encoding="utf-8")
    assert f"note: {model_folder(cfg)} stopped mid-epoch with 2 training process(es), now 1: the rest of that " \
           f"epoch is cut into other batches" in log


def test_resuming_with_another_model_size_names_the_keys(spoken_corpus, tmp_path):
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=2)
    assert training.train(cfg).startswith("trained 2 steps (to step 2) in ")
    assert training.train(cfg) == (f"nothing to train: {model_folder(cfg).parent} is at epoch 0 of num_epoch 3, "
                                   f"step 2 (max_steps 2); raise them to train on, or pass another --use_model "
                                   f"to start fresh")
    bigger = resume_config(spoken_corpus, tmp_path, model__rnn_size=cfg.model.rnn_size * 2)
    with pytest.raises(training.TrainingError, match=rf"was trained with model.rnn_size={cfg.model.rnn_size} "
                                                     rf"\(now {cfg.model.rnn_size * 2}\).*--pretrained_model"):
        training.train(bigger)
    # with new statistics as well (create_data run again for other features): the model's change is said
    # first, not the statistics', whose advice (--mean_std_path=the folder's) would fail next
    statistics = dict(np.load(spoken_corpus / "mean_std.npz"))
    statistics["mean"] = statistics["mean"] + 1.0
    np.savez(tmp_path / "new_mean_std.npz", **statistics)
    bigger.data.mean_std_path = str(tmp_path / "new_mean_std.npz")
    with pytest.raises(training.TrainingError, match=rf"was trained with model.rnn_size={cfg.model.rnn_size}"):
        training.train(bigger)


def test_the_amp_scaler_state_goes_into_the_checkpoint(spoken_corpus, tmp_path, monkeypatch):
    """On a GPU, a resumed AMP run goes on with its loss scale (a CPU build has no GradScaler step,
    so a stand-in scaler is saved here)."""
    class Scaler:
        def state_dict(self):
            return {"scale": np.float32(512.0), "incr_count": 3}
    cfg = resume_config(spoken_corpus, tmp_path, train__max_steps=1)
    run = training._setup(cfg, 0, 1, model_folder(cfg).parent)
    run.scaler = Scaler()
    training._save(run, "last_model")
    assert load_state(model_folder(cfg)).scaler == {"scale": 512.0, "incr_count": 3}


def test_pruning_keeps_the_epoch_just_saved_and_the_newest_others(tmp_path):
    """A run resumed from epoch_1 saves epoch_2 beside the first run's epoch_3..5: keep_last 3 must not
    remove the epoch it has just saved because higher numbers are there."""
    from utils.config import Config

    for n in range(1, 6):
        (tmp_path / f"epoch_{n}").mkdir()
    cfg = Config()
    cfg.train.keep_last = 3
    training._prune_epochs(training._Run(cfg=cfg, model_root=tmp_path, state=training.TrainState(epoch=2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_2", "epoch_4", "epoch_5"]
    cfg.train.keep_last = 1
    training._prune_epochs(training._Run(cfg=cfg, model_root=tmp_path, state=training.TrainState(epoch=5)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_5"]
    cfg.train.keep_last = 0
    (tmp_path / "epoch_6").mkdir()
    training._prune_epochs(training._Run(cfg=cfg, model_root=tmp_path, state=training.TrainState(epoch=6)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_5", "epoch_6"]


def _enabled_grad_scaler(init_loss_scaling):
    """Paddle's GradScaler as a GPU build makes it (a CPU build disables it at construction)."""
    scaler = paddle.amp.GradScaler(init_loss_scaling=init_loss_scaling)
    scaler._enable, scaler._scale = True, paddle.to_tensor(np.array([init_loss_scaling], np.float32))
    scaler._incr_ratio, scaler._decr_ratio, scaler._incr_every_n_steps = 2.0, 0.5, 1000
    scaler._decr_every_n_nan_or_inf, scaler._incr_count, scaler._decr_count = 2, 7, 0
    scaler._use_dynamic_loss_scaling = True
    return scaler


def test_paddles_grad_scaler_state_survives_state_json():
    """Its loss scale is a one-element tensor; saved as a float, it goes back as one element."""
    saved = json.loads(json.dumps(resume.scaler_state(_enabled_grad_scaler(2.0 ** 15))))
    assert saved["scale"] == 32768.0 and saved["incr_count"] == 7
    resumed = _enabled_grad_scaler(1.0)
    resume.restore_scaler(resumed, saved)
    assert resumed.state_dict()["scale"].tolist() == [32768.0] and resumed.state_dict()["incr_count"] == 7


def test_deterministic_runs_on_a_cpu_build(spoken_corpus, tmp_path):
    training.train(resume_config(spoken_corpus, tmp_path, train__max_steps=1, train__deterministic=True))
    assert load_state(model_folder(resume_config(spoken_corpus, tmp_path))).step == 1


def test_a_file_failing_in_the_loader_saves_last_model_and_names_the_file(spoken_corpus, tmp_path, monkeypatch):
    """A file gone after create_data: the run stops with its name, and the steps since the last save
    are saved first (the error comes between batches)."""
    cfg = resume_config(spoken_corpus, tmp_path)
    real_draw = SpeechDataset.draw

    def draw(self, key):
        if key >= len(self.utterances):  # the second epoch's first batch (evaluation keys are the first epoch's)
            raise AudioError(f"{self.utterances[key % len(self.utterances)].audio_filepath}: file not found")
        return real_draw(self, key)
    monkeypatch.setattr(SpeechDataset, "draw", draw)
    with pytest.raises(training.TrainingError, match=r"the loader failed: .*: file not found; saved .*last_model "
                                                     r"at epoch 2, batch 0, so train.py continues from there"):
        training.train(cfg)
    assert load_state(model_folder(cfg)).step == 4

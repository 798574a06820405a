"""The training loop, as plain functions: set up, run epochs, evaluate, save, resume.

All state that must survive a crash is in the checkpoint (utils/checkpoint.py): weights,
optimizer, AMP scaler, epoch, batch within the epoch, optimizer step and best metric.
The learning rate is a pure function of the step, and batches are a pure function of
(seed, epoch), so loading last_model continues exactly where the run stopped.
"""
from __future__ import annotations

import math
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import paddle

from utils import allocator, cpu_kernels, local_processes, placement
from utils.augment import load_augmentation
from utils.audio import AudioError
from utils.batch_workers import LoaderWorkerError
from utils.checkpoint import (OPTIMIZER_FILE, FolderLock, TrainState, copy_checkpoint, finish_epoch_end, holds,
                              recover, remove_checkpoint, save_checkpoint, write_state)
from utils.config import Config, print_config, save_config
from utils.data import BatchSampler, SpeechDataset, padding_waste, run_batches
from utils.evaluate import ctc_loss_per_utterance, evaluate, make_decode_fn, make_eval_loader, model_forward
from utils.features import feature_dim, load_mean_std, path_note
from utils.interrupts import Interrupted, Interrupts
from utils.manifest import read_manifest, read_manifest_table
from utils.metrics import METRICS
from utils.model import build_model, count_parameters
from utils.optim import build_optimizer, learning_rate_at
from utils.resume import (TrainingError, check_normalizer, check_resumable, check_vocabulary, load_pretrained,
                          pick_resume_folder, restore, scaler_state)
from utils.runlog import RunLog, format_duration
from utils.text import Vocabulary


def init_distributed() -> tuple[int, int]:
    world_size = paddle.distributed.get_world_size()
    if world_size > 1:
        paddle.distributed.init_parallel_env()
    return paddle.distributed.get_rank(), world_size


def _datasets(cfg: Config, vocabulary: Vocabulary, rank: int, world_size: int):
    d, f, t = cfg.data, cfg.features, cfg.train
    train_utts = read_manifest_table(d.train_manifest, d.data_dir, d.min_duration, d.max_duration)
    test_utts = read_manifest(d.test_manifest, d.data_dir)
    if not train_utts or not test_utts:
        raise TrainingError(f"no utterances in {d.train_manifest if not train_utts else d.test_manifest} "
                            f"within the duration limits; check create_data.py's output")
    noise = [u.audio_filepath for u in read_manifest(d.noise_manifest, d.data_dir)] \
        if os.path.isfile(d.noise_manifest) else []
    augmentation = load_augmentation(d.augment_conf_path, noise, f.sample_rate)
    train_set = SpeechDataset(train_utts, vocabulary, f.feature_method, f.sample_rate, f.n_mels, augmentation,
                              t.seed)
    test_set = SpeechDataset(test_utts, vocabulary, f.feature_method, f.sample_rate, f.n_mels)
    sampler = BatchSampler(train_utts.durations, t.batch_size, t.seed, rank=rank,
                           world_size=world_size, num_iters_per_epoch=t.num_iters_per_epoch)
    return train_set, test_set, sampler


class _Run:
    """What the loop functions share; no behaviour of its own."""

    def __init__(self, **parts):
        self.__dict__.update(parts)


def _eval_decode_fn(cfg: Config, vocabulary: Vocabulary):
    """The per-epoch evaluation's decode function, with its metric checked: made before training, so that
    a wrong value costs no epoch (the config checks the words; this, the beam parameters and the LM file)."""
    t = cfg.train
    if t.metrics_type not in METRICS:
        raise TrainingError(f"train.metrics_type is '{t.metrics_type}'; use one of {', '.join(METRICS)}")
    try:
        return make_decode_fn(t.eval_decoder, cfg.decode, vocabulary.tokens)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise TrainingError(f"the per-epoch evaluation cannot decode with train.eval_decoder={t.eval_decoder}: "
                            f"{err} (or pass --eval_decoder=ctc_greedy)") from None


def _setup(cfg: Config, rank: int, world_size: int, model_root: Path) -> _Run:
    t = cfg.train
    paddle.seed(t.seed + rank)
    np.random.seed(t.seed + rank)
    if t.deterministic and paddle.is_compiled_with_cuda():  # a CPU build has no such flag; its kernels are
        paddle.set_flags({"FLAGS_cudnn_deterministic": True})  # deterministic, the loader in this process
    if t.use_amp and not paddle.is_compiled_with_cuda():
        raise TrainingError("train.use_amp needs a GPU build of Paddle; pass --use_amp=false on CPU")
    malloc_note = allocator.keep_freed_memory(t.keep_freed_memory)  # before the model's tensors
    vocabulary = Vocabulary.load(cfg.data.dataset_vocab)
    # rank 0 evaluates: a bad decoder, beam parameter or LM file stops the run here, not after an epoch
    decode_fn = _eval_decode_fn(cfg, vocabulary) if rank == 0 else None
    normalizer = load_mean_std(cfg.data.mean_std_path)
    if normalizer["feature_method"] != cfg.features.feature_method:
        raise TrainingError(f"{cfg.data.mean_std_path} holds {normalizer['feature_method']} statistics but "
                            f"features.feature_method is {cfg.features.feature_method}; rerun create_data.py "
                            f"with --feature_method={cfg.features.feature_method}")
    if normalizer["sample_rate"] != cfg.features.sample_rate:  # fbank's dimension does not show it
        raise TrainingError(f"{cfg.data.mean_std_path} holds statistics of {normalizer['sample_rate']} Hz audio but "
                            f"features.sample_rate is {cfg.features.sample_rate}; rerun create_data.py with "
                            f"--sample_rate={cfg.features.sample_rate}, or pass --sample_rate="
                            f"{normalizer['sample_rate']}")
    dim = feature_dim(cfg.features.feature_method, cfg.features.sample_rate, cfg.features.n_mels)
    if len(normalizer["mean"]) != dim:
        raise TrainingError(f"{cfg.data.mean_std_path} has {len(normalizer['mean'])}-dim statistics but the "
                            f"features are {dim}-dim; rerun create_data.py with the same --configs")
    model = build_model(cfg.model, dim, len(vocabulary), normalizer["mean"], normalizer["std"])
    on_cpu = paddle.get_device() == "cpu"
    model.cpu_kernels, kernel_note = cpu_kernels.choose(t.cpu_kernels, on_cpu=on_cpu)
    run_placement = placement.plan(t.thread_placement, on_cpu, model.cpu_kernels, local_processes(),
                                   int(os.environ.get("OMP_NUM_THREADS", "1")),
                                   0 if t.deterministic else cfg.data.num_workers, placement.allowed_cores())
    optimizer = build_optimizer(cfg, model)
    learning_rate_at(t.warmup_steps + t.hold_steps + 1, cfg)  # an unknown scheduler stops here, not after warm-up
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if t.use_amp else None
    train_set, test_set, sampler = _datasets(cfg, vocabulary, rank, world_size)
    log = RunLog(model_root / "train.log", Path(t.log_dir) / t.use_model, enabled=rank == 0)
    log.info(kernel_note)
    log.info(path_note(cfg.features.feature_method, cfg.features.sample_rate, cfg.features.n_mels))
    log.info(run_placement.note)
    log.info(malloc_note)
    return _Run(cfg=cfg, rank=rank, world_size=world_size, model_root=model_root, vocabulary=vocabulary,
                model=model, optimizer=optimizer, scaler=scaler, train_set=train_set, sampler=sampler,
                batches=None,  # started at the first epoch: one loader iterator for the whole run
                # a thread of this process (EvalLoader): no eval worker forked beside the training loader's
                # busy thread (ours with num_workers 0, Paddle's reader with data.loader=paddle), whose
                # locks a forked child could find held
                test_loader=make_eval_loader(test_set, t.batch_size), log=log,
                state=TrainState(metrics_type=t.metrics_type), nan_in_row=0, parallel=model, decode_fn=decode_fn,
                epoch_padding=[], placement=run_placement, malloc_note=malloc_note,
                interrupts=Interrupts())  # its handler is installed by _loop


def _start_from(run: _Run) -> None:
    """Resume (last_model or --resume_model) or fine-tune (--pretrained_model), else fresh."""
    folder = pick_resume_folder(run.cfg, run.model_root)
    if folder is not None:
        check_vocabulary(folder, run.vocabulary)
        notes = check_resumable(folder, run.cfg)  # first: changed features also change the statistics
        check_normalizer(folder, run.cfg.data.mean_std_path)
        for note in notes:
            run.log.info(note)
        run.state = restore(folder, run.model, run.optimizer, run.scaler)
        if run.state.batch_in_epoch > 0 and run.state.world_size not in (0, run.world_size):
            run.log.info(f"note: {folder} stopped mid-epoch with {run.state.world_size} training process(es), now "
                         f"{run.world_size}: the rest of that epoch is cut into other batches, so some of its "
                         f"utterances are seen twice and others not at all")
        if not (folder / OPTIMIZER_FILE).is_file():
            run.log.info(f"note: {folder} has no {OPTIMIZER_FILE} (an exported or copied model folder): the "
                         f"optimizer starts anew from its weights, its moments at zero")
        run.log.info(f"resumed from {folder}: epoch {run.state.epoch}, batch {run.state.batch_in_epoch}, "
                     f"step {run.state.step}, best {run.state.metrics_type} {run.state.best_metric}")
    elif run.cfg.train.pretrained_model:
        skipped, head_note = load_pretrained(run.model, run.cfg.train.pretrained_model, run.vocabulary.tokens)
        run.log.info(f"fine-tuning from {run.cfg.train.pretrained_model}; layers not loaded: "
                     f"{', '.join(skipped) or 'none'}; {head_note}")
    # this run's id and starting step: finish_epoch_end tells the epoch_N of this line of training from
    # those another one left (a run resumed from an older epoch_N does not remove the later ones)
    run.state.lineage = run.state.lineage + [[uuid.uuid4().hex[:12], run.state.step]]
    evaluated = run.state.epoch - 1 if evaluation_pending(run.state) else run.state.epoch
    dropped = run.log.start_curves(run.state.step, evaluated)  # Test/* of an epoch evaluated again go
    if dropped:
        since = f"after {folder}" if folder is not None else "by an earlier run (this one starts fresh)"
        run.log.info(f"VisualDL: dropped {dropped} points logged {since}")
    if run.world_size > 1:
        run.parallel = paddle.DataParallel(run.model)


def _save(run: _Run, name: str) -> Path:
    run.state.scaler = scaler_state(run.scaler)  # AMP's loss scale goes on where it was
    run.state.world_size = run.world_size
    return save_checkpoint(run.model_root / name, run.model, run.optimizer, run.state, run.cfg, run.vocabulary,
                           run.cfg.data.mean_std_path)


def _prune_epochs(run: _Run) -> None:
    """Keep the epoch_N just saved and the keep_last - 1 highest-numbered others (a run resumed from an
    older epoch_N finds the first run's later ones there: they are not its own, but the newest numbers)."""
    if run.cfg.train.keep_last <= 0:
        return
    just_saved = run.model_root / f"epoch_{run.state.epoch}"
    others = sorted((p for p in run.model_root.glob("epoch_*") if p.name[6:].isdigit() and p != just_saved),
                    key=lambda p: int(p.name[6:]))
    for old in others[:len(others) - (run.cfg.train.keep_last - 1)]:
        remove_checkpoint(old)


def _train_step(run: _Run, batch, micro_step: int) -> float | None:
    """Forward and backward one batch; steps the optimizer every accum_grad batches.

    Returns the batch loss, or None when the loss or (at an optimizer step) a gradient was not
    finite: the batch is skipped, weights and BatchNorm statistics as they were before it.
    """
    feats, feat_lens, labels, label_lens, indices = batch
    accum = run.cfg.train.accum_grad
    running_stats = _running_stats(run.model)  # a skipped batch must not move BatchNorm's statistics either
    with paddle.amp.auto_cast(enable=run.scaler is not None, level="O1"):
        logits, out_lens = run.parallel(feats, feat_lens)
    loss = ctc_loss_per_utterance(logits.astype("float32"), out_lens, labels, label_lens,
                                  fused=run.model.cpu_kernels).sum() / feats.shape[0]
    loss_value = float(loss)
    if not _finite_on_all_ranks(run, loss_value):
        return _skip_batch(run, running_stats, indices, "loss")
    scaled = run.scaler.scale(loss / accum) if run.scaler else loss / accum
    scaled.backward()
    if (micro_step + 1) % accum == 0:
        # GradScaler skips steps with inf/NaN gradients itself; without it, a finite loss can
        # still give a non-finite gradient, and one optimizer step with it makes every weight NaN.
        # Gradients are all-reduced by now, so every rank decides alike.
        if run.scaler is None and not _gradients_finite(run.model):
            return _skip_batch(run, running_stats, indices, "gradient")
        run.optimizer.set_lr(learning_rate_at(run.state.step, run.cfg, run.world_size))
        if run.scaler:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.optimizer.clear_grad()
        run.state.step += 1
    run.nan_in_row = 0
    return loss_value


def _skip_batch(run: _Run, running_stats: list, indices, what: str) -> None:
    """Drop this batch (and an unfinished accumulation window); stop after max_nan_in_row in a row."""
    run.optimizer.clear_grad()
    for buffer, saved in running_stats:
        buffer.set_value(saved)
    run.nan_in_row += 1
    run.state.nan_skipped += 1
    if run.nan_in_row >= run.cfg.train.max_nan_in_row:
        names = [run.train_set.utterances[int(i)].audio_filepath for i in np.asarray(indices)]
        raise TrainingError(f"{run.nan_in_row} batches in a row had a non-finite {what}; last batch: "
                            f"{names}. Lower the learning rate or check these files")
    if what == "gradient":
        run.log.info(f"skipped a batch with a finite loss but a non-finite gradient at step {run.state.step}")
    return None


def _gradients_finite(model: paddle.nn.Layer) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(paddle.isfinite(paddle.add_n([g.abs().sum() for g in grads])))


def _running_stats(model: paddle.nn.Layer) -> list:
    """(buffer, copy) of every BatchNorm running mean and variance."""
    batch_norms = (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm3D)
    return [(buffer, buffer.clone()) for layer in model.sublayers() if isinstance(layer, batch_norms)
            for buffer in (layer._mean, layer._variance)]


def _finite_on_all_ranks(run: _Run, loss_value: float) -> bool:
    """True when every rank's loss is finite. All ranks must skip a batch together: a rank that
    skipped its backward alone would pair its next gradient all-reduce with the others' current one."""
    finite = math.isfinite(loss_value)
    if run.world_size == 1:
        return finite
    flag = paddle.to_tensor([0.0 if finite else 1.0], dtype="float32")
    paddle.distributed.all_reduce(flag)
    return float(flag) == 0.0


def _log_progress(run: _Run, batch_no: int, num_batches: int, losses: list, timing: dict) -> None:
    t = run.cfg.train
    batches = max(1, timing["batches"])
    batch_cost = timing["batch"] / batches
    remaining = (num_batches - batch_no) + (t.num_epoch - run.state.epoch - 1) * num_batches  # batches
    if t.max_steps:  # or fewer, where max_steps ends the run first
        remaining = min(remaining, (t.max_steps - run.state.step) * t.accum_grad)
    lr = run.optimizer.get_lr()
    run.log.info(f"epoch [{run.state.epoch + 1}/{t.num_epoch}] batch [{batch_no}/{num_batches}] "
                 f"loss {np.mean(losses):.4f} lr {lr:.3e} reader_cost {timing['reader'] / batches:.4f}s "
                 f"batch_cost {batch_cost:.4f}s utts/s {timing['utts'] / max(timing['batch'], 1e-9):.1f} "
                 f"audio_s/s {timing['audio'] / max(timing['batch'], 1e-9):.1f} "
                 f"padding {timing['padding'] / batches:.2f} eta {format_duration(remaining * batch_cost)}")
    run.log.scalar("Train/Loss", np.mean(losses), run.state.step)
    run.log.scalar("Train/lr", lr, run.state.step)


def _run_epoch(run: _Run) -> bool:
    """Train the rest of the current epoch; returns False when max_steps stopped it early."""
    t = run.cfg.train
    run.sampler.set_epoch(run.state.epoch, run.state.batch_in_epoch)
    num_batches = len(run.sampler)
    if run.batches is None:  # from here on it goes on through the following epochs by itself
        run.batches = run_batches(run.train_set, run.sampler, 0 if t.deterministic else run.cfg.data.num_workers,
                                  worker_cores=run.placement.worker_cores, loader=run.cfg.data.loader)
    run.epoch_padding = []  # padded frames / real frames of each batch, reported at the epoch's end
    losses, timing = [], dict.fromkeys(("reader", "batch", "utts", "audio", "padding", "batches"), 0.0)
    frame_seconds = 0.01
    tick = time.perf_counter()
    remaining = num_batches - run.state.batch_in_epoch
    for micro_step in range(remaining):  # the rest of this epoch's batches
        batch = _next_batch(run, at_boundary=micro_step % t.accum_grad == 0)
        if batch is None:  # a finite iterable of batches ran out (the benchmarks hand in lists)
            break
        timing["reader"] += time.perf_counter() - tick
        loss = _train_step(run, batch, micro_step)
        window_done = (micro_step + 1) % t.accum_grad == 0
        if window_done:
            run.state.batch_in_epoch += t.accum_grad
        feat_lens = np.asarray(batch[1])
        timing["batch"] += time.perf_counter() - tick
        timing["utts"] += len(feat_lens) * run.world_size
        timing["audio"] += feat_lens.sum() * frame_seconds * run.world_size
        timing["padding"] += padding_waste(feat_lens)
        run.epoch_padding.append(padding_waste(feat_lens))
        timing["batches"] += 1
        if loss is not None:
            losses.append(loss)
        # batch_in_epoch moves by accum_grad when a window ends: act where it passed a multiple of the interval
        if window_done and losses and _crossed(run.state.batch_in_epoch, t.accum_grad, t.log_interval):
            _log_progress(run, run.state.batch_in_epoch, num_batches, losses, timing)
            losses, timing = [], dict.fromkeys(timing, 0.0)
        if window_done and run.rank == 0 and _crossed(run.state.batch_in_epoch, t.accum_grad, t.save_step):
            _save(run, "last_model")
        if window_done and _stop_requested(run):
            raise Interrupted
        if t.max_steps and run.state.step >= t.max_steps:
            return micro_step + 1 == remaining  # an epoch ended by its last batch is evaluated
        tick = time.perf_counter()
    run.optimizer.clear_grad()  # drop an unfinished accum_grad window, as a resumed run would not have it
    return True


def _crossed(count: int, advance: int, interval: int) -> bool:
    """Whether a counter that just moved on by `advance` to `count` passed a multiple of `interval` (0: never)."""
    return interval > 0 and count // interval > (count - advance) // interval


def _next_batch(run: _Run, at_boundary: bool):
    """The loader's next batch, or None after the last. Where it fails (a file that does not read, a worker killed), last_model
    is saved first when this is a batch boundary, so no step since the last save is lost."""
    try:
        return next(run.batches, None)
    except Exception as err:
        saved = ""
        if at_boundary and run.rank == 0:
            saved = (f"; saved {_save(run, 'last_model')} at epoch {run.state.epoch + 1}, batch "
                     f"{run.state.batch_in_epoch}, so train.py continues from there")
        if isinstance(err, (AudioError, LoaderWorkerError)):
            raise TrainingError(f"the loader failed: {err}{saved}. Fix or remove the file (create_data.py "
                                f"decodes every file and leaves out those that fail)") from None
        raise


def _stop_requested(run: _Run) -> bool:
    """Whether a signal asked this run to stop; every rank decides alike (one all-reduce a step)."""
    requested = run.interrupts.signal is not None
    if run.world_size == 1:
        return requested
    flag = paddle.to_tensor([1.0 if requested else 0.0], dtype="float32")
    paddle.distributed.all_reduce(flag)
    return float(flag) > 0.0


def _end_epoch(run: _Run) -> None:
    """Save the finished epoch as epoch_N and last_model, then evaluate it: an evaluation that fails or is
    interrupted costs no training, and the next start evaluates the epoch first (evaluation_pending)."""
    state = run.state
    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    epoch_folder = _save(run, f"epoch_{state.epoch}")
    copy_checkpoint(epoch_folder, run.model_root / "last_model")
    _evaluate_epoch(run)
    _prune_epochs(run)


def evaluation_pending(state: TrainState) -> bool:
    """Whether the state ends an epoch (batch 0 of the next) whose test result is not in it yet."""
    return (state.epoch > 0 and state.batch_in_epoch == 0
            and not any(entry.get("epoch") == state.epoch - 1 for entry in state.history))


def _evaluate_epoch(run: _Run) -> None:
    """Evaluate the epoch just finished (run.state at batch 0 of the next) and write the result into the
    folders saved at its end (epoch_N, then last_model; last_model saved anew where it holds something
    else), then copy last_model to best_model if the epoch is the best so far."""
    t, state = run.cfg.train, run.state
    saved = TrainState(**vars(state))  # as epoch_N and last_model hold it, before the result
    run.interrupts.at_once = True  # nothing changes before the evaluation has ended
    try:
        result = evaluate(model_forward(run.model), run.test_loader, t.metrics_type, run.decode_fn)
    except AudioError as err:  # a test file gone or damaged since create_data
        raise TrainingError(f"the evaluation of epoch {state.epoch} failed: {err}. The epoch's training is saved "
                            f"in {run.model_root / 'last_model'}; fix or remove the file in "
                            f"{run.cfg.data.test_manifest} and run train.py again, which evaluates the epoch "
                            f"first") from None
    finally:
        run.interrupts.at_once = False
    run.model.train()
    finished = state.epoch - 1
    improved = state.best_metric is None or result.error_rate < state.best_metric
    if improved:
        state.best_metric, state.best_epoch = result.error_rate, finished
    state.history = state.history + [{"epoch": finished, "step": state.step, "test_loss": result.loss,
                                      f"test_{t.metrics_type}": result.error_rate}]
    run.log.info(f"epoch {state.epoch} test: loss {result.loss:.4f} {t.metrics_type} "
                 f"{result.error_rate:.4f} (best {state.best_metric:.4f} at epoch {state.best_epoch + 1}), "
                 f"{len(result.references)} utterances in {result.wall_seconds:.1f}s; training padding waste "
                 f"{np.mean(run.epoch_padding or [0.0]):.3f} (padded / real frames)")
    run.log.scalar("Test/Loss", result.loss, state.epoch)  # before state.json: a kill in between evaluates again,
    run.log.scalar(f"Test/{t.metrics_type}", result.error_rate, state.epoch)  # and start_curves drops these
    last = run.model_root / "last_model"
    for folder in (run.model_root / f"epoch_{state.epoch}", last):
        if holds(folder, saved):
            write_state(folder, state)
        elif folder == last:
            _save(run, "last_model")
    if improved:
        copy_checkpoint(last, run.model_root / "best_model")


def train(cfg: Config) -> str:
    """Train to num_epoch (or max_steps); returns a one-line summary."""
    rank, world_size = init_distributed()
    model_root = Path(cfg.train.save_model_path) / cfg.train.use_model
    if rank == 0:
        print_config(cfg, "train.py")  # FolderLock makes model_root
    lock = FolderLock(model_root) if rank == 0 else None
    with lock or _NoLock():
        notes = recover(model_root) + finish_epoch_end(model_root) if rank == 0 else []
        if world_size > 1:  # the other ranks pick their resume folder once rank 0 has repaired the folders
            paddle.distributed.barrier()
        try:
            run = _setup(cfg, rank, world_size, model_root)
            for note in notes:
                run.log.info(note)
            if rank == 0:
                save_config(cfg, model_root / "config.yml")
                save_config(cfg, Path(cfg.train.log_dir) / cfg.train.use_model / "config.yml")
            _start_from(run)
        except ValueError as err:  # a config value, the augmentation list, a manifest, the vocabulary, the
            raise TrainingError(str(err)) from None  # model: inputs, whose messages name the file or key
        run.log.info(f"model: {count_parameters(run.model) / 1e6:.2f}M parameters, {len(run.vocabulary)} tokens, "
                     f"{len(run.train_set)} training utterances, {world_size} process(es), "
                     f"{os.environ.get('OMP_NUM_THREADS')} thread(s) each, batch {cfg.train.batch_size} per process")
        run.log.info(f"augmentation: {run.train_set.augmentation.describe()}")
        return _loop(run)


def _loop(run: _Run) -> str:
    t, start, first_step = run.cfg.train, time.perf_counter(), run.state.step
    previous = {signum: signal.signal(signum, run.interrupts.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    run.model.train()
    placement.apply(run.placement)
    try:
        if evaluation_pending(run.state):  # the previous run saved an epoch's end but did not evaluate it
            if run.rank == 0:
                run.log.info(f"evaluating epoch {run.state.epoch}: its end was saved, its evaluation did not end")
                _evaluate_epoch(run)
            if run.world_size > 1:
                paddle.distributed.barrier()
        while run.state.epoch < t.num_epoch and not (t.max_steps and run.state.step >= t.max_steps):
            finished = _run_epoch(run)
            if run.rank == 0 and finished:
                _end_epoch(run)
            elif finished:
                run.state.epoch, run.state.batch_in_epoch = run.state.epoch + 1, 0
            if run.world_size > 1:
                paddle.distributed.barrier()
            if finished and _stop_requested(run):  # a signal during the epoch's end, now saved
                raise Interrupted
            if not finished:
                if run.rank == 0:
                    _save(run, "last_model")
                break
    except (KeyboardInterrupt, Interrupted):
        if run.rank == 0 and not run.interrupts.forced:
            folder = _save(run, "last_model")
            run.log.info(f"interrupted: saved {folder} at epoch {run.state.epoch + 1}, batch "
                         f"{run.state.batch_in_epoch}; run train.py again to continue")
        elif run.rank == 0:
            run.log.info("stopped by a second signal without saving: train.py continues from the last save")
        raise KeyboardInterrupt from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if run.batches is not None:
            run.batches.close()
        placement.release(run.placement)
        run.log.close()
    best = run.state.best_metric
    if run.rank != 0:
        return ""  # rank 0 reports for all
    steps = run.state.step - first_step
    if steps == 0:
        return (f"nothing to train: {run.model_root} is at epoch {run.state.epoch} of num_epoch {t.num_epoch}, step "
                f"{run.state.step} (max_steps {t.max_steps or 'off'}); raise them to train on, or pass another "
                f"--use_model to start fresh")
    return (f"trained {steps} steps (to step {run.state.step}) in {format_duration(time.perf_counter() - start)}; "
            f"best {t.metrics_type}={best if best is None else round(best, 4)} at epoch {run.state.best_epoch + 1}; "
            f"models in {run.model_root}")


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

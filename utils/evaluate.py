"""Run a model over a manifest: log-probabilities, CTC loss, decoded text and error rates."""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn.functional as F

from utils import batch_workers, cpu_kernels
from utils.audio import AudioError
from utils.data import SpeechDataset, make_batch
from utils.manifest import Utterance
from utils.metrics import ErrorCounter
from utils.model import log_softmax
from utils.text import BLANK_ID, reference_text


@dataclass
class EvalResult:
    loss: float  # CTC loss per utterance
    error_rate: float  # corpus level: total edits / total reference length
    mean_error_rate: float  # mean of per-utterance rates
    metric: str
    references: list = field(default_factory=list)
    hypotheses: list = field(default_factory=list)
    edits: list = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / max(self.audio_seconds, 1e-9)


def sorted_batches(utterances: list[Utterance], batch_size: int) -> list[list[int]]:
    """Batches of similar durations (little padding), in duration order."""
    order = np.argsort([u.duration for u in utterances], kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


class EvalLoader:
    """A test set's batches in duration order, made afresh on each iteration by a thread of this process
    (batch_workers.thread_batches): a sample's error (a missing or corrupt audio file) is raised to the
    caller, naming the file; Paddle's in-process DataLoader hung on it. No worker process: a test set's
    features cost a small share of the forward and decoding, and a forked worker cost more than it saved
    (evaluate() with ONNX Runtime on 2 cores: 1.70 against 2.03 ms per audio second with one worker over
    480 utterances, 1.73 against 2.86 over 64, where the worker's start dominates)."""

    def __init__(self, dataset: SpeechDataset, batch_size: int):
        self.dataset, self.batch_size = dataset, batch_size

    def __iter__(self):
        keys = sorted_batches(self.dataset.utterances, self.batch_size)
        return batch_workers.thread_batches(functools.partial(make_batch, self.dataset), keys)

    def __len__(self) -> int:  # batches: the progress bars' total
        return -(-len(self.dataset.utterances) // self.batch_size)


def make_eval_loader(dataset: SpeechDataset, batch_size: int) -> EvalLoader:
    return EvalLoader(dataset, batch_size)


def ctc_loss_per_utterance(logits, out_lens, labels, label_lens, fused: bool = False) -> paddle.Tensor:
    """logits [B, T', V] (unnormalized: the CTC applies the softmax) -> loss [B].

    fused: our CPU kernel (utils/cpu_kernels.py; the model's cpu_kernels flag), else Paddle's warp-ctc.
    """
    if fused:
        return cpu_kernels.ctc_loss(logits, out_lens, labels, label_lens, BLANK_ID)
    return F.ctc_loss(logits.transpose([1, 0, 2]), labels, out_lens, label_lens, blank=BLANK_ID,
                      reduction="none").reshape([-1])


def model_forward(model: paddle.nn.Layer):
    """A forward function for `evaluate` from a dynamic-graph model; it also computes the CTC loss."""
    @paddle.no_grad()
    def forward(feats, feat_lens, labels, label_lens):
        model.eval()
        logits, out_lens = model(feats, feat_lens)
        loss = ctc_loss_per_utterance(logits, out_lens, labels, label_lens, fused=model.cpu_kernels)
        return log_softmax(logits).numpy(), out_lens.numpy(), float(loss.sum())
    return forward


def runner_forward(runner):
    """A forward function for `evaluate` from an inference runner (no loss: reported as nan)."""
    def forward(feats, feat_lens, labels, label_lens):
        log_probs, out_lens = runner(np.asarray(feats), np.asarray(feat_lens))
        return log_probs, out_lens, float("nan")
    return forward


def evaluate(forward, loader: EvalLoader, metric: str, decode_fn, progress: bool = False) -> EvalResult:
    """forward(feats, feat_lens, labels, label_lens) -> (log_probs [B, T', V], out_lens [B], loss_sum);
    decode_fn(log_probs, out_lens) -> list[str]. Scores every utterance of loader.dataset."""
    from tqdm import tqdm

    utterances = loader.dataset.utterances
    hyps: dict[int, str] = {}
    loss_total, start = 0.0, time.perf_counter()
    for feats, feat_lens, labels, label_lens, indices in tqdm(loader, desc="evaluate", disable=not progress,
                                                              leave=False):
        log_probs, out_lens, loss_sum = forward(feats, feat_lens, labels, label_lens)
        loss_total += loss_sum
        for index, text in zip(np.asarray(indices), decode_fn(log_probs, out_lens)):
            hyps[int(index)] = text
    wall = time.perf_counter() - start
    counter = ErrorCounter(metric)
    refs = [reference_text(u.text) for u in utterances]  # a hand-written manifest scored as create_data's
    ordered = [hyps[i] for i in range(len(utterances))]
    per_utt = counter.update_batch(refs, ordered)
    return EvalResult(loss_total / max(1, len(utterances)), counter.corpus_rate, counter.mean_rate, metric,
                      refs, ordered, [e.edits for e in per_utt], sum(u.duration for u in utterances), wall)


def make_decode_fn(decoder: str, decode_cfg, vocabulary_tokens: list[str]):
    """decode_fn(log_probs [B, T', V], out_lens [B]) -> texts, for ctc_greedy or ctc_beam_search.

    Beam search checks its parameters and loads the KenLM scorer once, here; a bad parameter,
    a missing decoder package or LM file is an error that says how to fix it (never a silent
    switch to greedy). No lang_model_path (None or "") is beam search without an LM.
    """
    from utils.decoders import DECODER_NAMES, check_beam_params, decode, load_scorer

    if decoder not in DECODER_NAMES:
        raise ValueError(f"unknown decoder '{decoder}'; use one of {', '.join(DECODER_NAMES)}")
    scorer = None
    if decoder == "ctc_beam_search":
        check_beam_params(decode_cfg.beam_size, decode_cfg.cutoff_prob, decode_cfg.cutoff_top_n,
                          decode_cfg.num_proc_bsearch)
        if decode_cfg.lang_model_path:
            scorer = load_scorer(decode_cfg.lang_model_path, decode_cfg.alpha, decode_cfg.beta,
                                 vocabulary_tokens)

    def decode_fn(log_probs, out_lens):
        return decode(decoder, log_probs, out_lens, vocabulary_tokens, beam_size=decode_cfg.beam_size,
                      cutoff_prob=decode_cfg.cutoff_prob, cutoff_top_n=decode_cfg.cutoff_top_n,
                      num_processes=decode_cfg.num_proc_bsearch, scorer=scorer)
    return decode_fn


def write_results(path: Path, result: EvalResult, utterances) -> None:
    """Per-utterance TSV: audio path, reference, hypothesis, edits, reference length."""
    from utils.metrics import utterance_errors

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")  # renamed over path once whole: a full disk leaves the old one
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write("audio_filepath\treference\thypothesis\tedits\tref_len\n")
            for utt, ref, hyp in zip(utterances, result.references, result.hypotheses):
                errors = utterance_errors(ref, hyp, result.metric)
                handle.write(f"{utt.audio_filepath}\t{ref}\t{hyp}\t{errors.edits}\t{errors.ref_len}\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def run_eval(cfg, model_folder: Path) -> str:
    """Evaluate a model folder on cfg.data.test_manifest; returns the summary line (with cer= or wer=)."""
    from utils.inference import load_runner
    from utils.manifest import read_manifest
    from utils.metrics import ErrorCounter

    runner = load_runner(model_folder, cfg.infer.runtime)
    f = runner.cfg.features
    utterances = read_manifest(cfg.data.test_manifest, cfg.data.data_dir)
    if not utterances:
        raise ValueError(f"{cfg.data.test_manifest} holds no utterances")
    dataset = SpeechDataset(utterances, runner.vocabulary, f.feature_method, f.sample_rate, f.n_mels)
    loader = make_eval_loader(dataset, cfg.train.batch_size)
    decode_fn = make_decode_fn(cfg.decode.decoder, cfg.decode, runner.vocabulary.tokens)
    try:
        result = evaluate(runner_forward(runner), loader, cfg.train.metrics_type, decode_fn, progress=True)
    except AudioError as err:  # a file gone or damaged since create_data wrote the manifest
        raise AudioError(f"{err} (listed in {cfg.data.test_manifest}); restore the file, or rerun create_data.py, "
                         f"which leaves out the files that do not read") from None
    other = "wer" if result.metric == "cer" else "cer"
    other_counter = ErrorCounter(other)
    other_counter.update_batch(result.references, result.hypotheses)
    results_path = Path(cfg.eval.result_path or model_folder.parent / f"eval_{model_folder.name}_{cfg.decode.decoder}.tsv")
    write_results(results_path, result, utterances)
    for ref, hyp in list(zip(result.references, result.hypotheses))[:3]:
        print(f"  ref: {ref}\n  hyp: {hyp}")
    print(f"{other_counter.summary()}")
    print(f"mean per-utterance {result.metric}: {result.mean_error_rate:.4f}; real-time factor "
          f"{result.real_time_factor:.4f} ({result.audio_seconds:.0f} s of audio in {result.wall_seconds:.1f} s); "
          f"results in {results_path}")
    return (f"{result.metric}={result.error_rate:.6f} {other}={other_counter.corpus_rate:.6f} "
            f"decoder={cfg.decode.decoder} utterances={len(utterances)} model={model_folder}")

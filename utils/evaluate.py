"""Run a model over a manifest: log-probabilities, CTC loss, decoded text and error rates."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn.functional as F

from utils.data import SpeechDataset, collate
from utils.manifest import Utterance
from utils.metrics import ErrorCounter
from utils.text import BLANK_ID, Vocabulary


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


def make_eval_loader(dataset: SpeechDataset, batch_size: int, num_workers: int) -> paddle.io.DataLoader:
    return paddle.io.DataLoader(dataset, batch_sampler=sorted_batches(dataset.utterances, batch_size),
                                collate_fn=collate, num_workers=num_workers,
                                use_shared_memory=num_workers > 0, return_list=True)


def ctc_loss_per_utterance(logits, out_lens, labels, label_lens) -> paddle.Tensor:
    """logits [B, T', V] (unnormalized: Paddle's CTC applies the softmax) -> loss [B]."""
    return F.ctc_loss(logits.transpose([1, 0, 2]), labels, out_lens, label_lens, blank=BLANK_ID,
                      reduction="none").reshape([-1])


@paddle.no_grad()
def forward_batches(model: paddle.nn.Layer, loader: paddle.io.DataLoader):
    """Yield (log_probs [B, T', V] float32 numpy, out_lens [B], indices [B], loss_sum) per batch."""
    model.eval()
    for feats, feat_lens, labels, label_lens, indices in loader:
        logits, out_lens = model(feats, feat_lens)
        loss = ctc_loss_per_utterance(logits, out_lens, labels, label_lens)
        log_probs = F.log_softmax(logits, axis=-1)
        yield log_probs.numpy(), out_lens.numpy(), np.asarray(indices), float(loss.sum())


def evaluate(model: paddle.nn.Layer, loader: paddle.io.DataLoader, vocabulary: Vocabulary,
             metric: str, decode_fn, progress: bool = False) -> EvalResult:
    """Decode every batch with decode_fn(log_probs, out_lens) -> list[str] and score it."""
    from tqdm import tqdm

    utterances = loader.dataset.utterances
    counter = ErrorCounter(metric)
    hyps: dict[int, str] = {}
    loss_total, start = 0.0, time.perf_counter()
    batches = forward_batches(model, loader)
    for log_probs, out_lens, indices, loss_sum in tqdm(batches, total=len(loader), desc="evaluate",
                                                        disable=not progress, leave=False):
        loss_total += loss_sum
        for index, text in zip(indices, decode_fn(log_probs, out_lens)):
            hyps[int(index)] = text
    wall = time.perf_counter() - start
    refs = [u.text for u in utterances]
    ordered = [hyps[i] for i in range(len(utterances))]
    per_utt = counter.update_batch(refs, ordered)
    return EvalResult(loss_total / max(1, len(utterances)), counter.corpus_rate, counter.mean_rate, metric,
                      refs, ordered, [e.edits for e in per_utt], sum(u.duration for u in utterances), wall)

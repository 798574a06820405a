"""The optimizer and its learning-rate schedule, a pure function of the optimizer step (so a resumed
run goes on with the rate it stopped at; nothing of the schedule is kept in the checkpoint)."""
from __future__ import annotations

import paddle

from utils.config import OPTIMIZERS, SCHEDULERS, Config


def learning_rate_at(step: int, cfg: Config, world_size: int = 1) -> float:
    """Warm-up linearly to the peak, hold, then decay (exponential or half-life) to a floor."""
    t = cfg.train
    peak = t.learning_rate * (world_size if t.scale_lr_by_world_size else 1)
    if step < t.warmup_steps:
        return peak * (step + 1) / t.warmup_steps
    decay_steps = step - t.warmup_steps - t.hold_steps
    if t.scheduler == "constant" or decay_steps <= 0:
        return peak
    if t.scheduler == "warmup_exponential":
        return max(t.min_learning_rate, peak * t.decay_rate ** decay_steps)
    if t.scheduler == "warmup_halflife":
        return max(t.min_learning_rate, peak * 0.5 ** (decay_steps / t.halflife_steps))
    raise ValueError(f"unknown train.scheduler '{t.scheduler}'; use one of {', '.join(SCHEDULERS)}")


def build_optimizer(cfg: Config, model: paddle.nn.Layer):
    t = cfg.train
    clip = paddle.nn.ClipGradByGlobalNorm(t.grad_clip) if t.grad_clip > 0 else None
    if t.optimizer == "adamw":
        return paddle.optimizer.AdamW(learning_rate=t.learning_rate, parameters=model.parameters(),
                                      weight_decay=t.weight_decay, grad_clip=clip)
    if t.optimizer == "adam":
        return paddle.optimizer.Adam(learning_rate=t.learning_rate, parameters=model.parameters(),
                                     weight_decay=t.weight_decay or None, grad_clip=clip)
    raise ValueError(f"unknown train.optimizer '{t.optimizer}'; use one of {', '.join(OPTIMIZERS)}")

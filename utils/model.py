"""DeepSpeech2: feature normalization, a 2-D convolution front end, an RNN stack, a CTC head.

Shapes: feats [B, T, D] and feat_lens [B] in; logits [B, T', V] and out_lens [B] out, where
T' follows `conv_output_lengths` (one formula, used by the model and by the tests).
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from utils import cpu_kernels
from utils.config import ModelConfig

HARDTANH_MAX = 20.0  # clipped ReLU of DeepSpeech2
RNN_TYPES = ("gru", "lstm")


def conv_output_length(length, kernel: int, stride: int):
    """Length after one convolution with padding kernel // 2 (works on ints and tensors)."""
    return (length + 2 * (kernel // 2) - kernel) // stride + 1


def conv_output_lengths(feat_lens, conv_kernels: list, conv_strides: list):
    """feat_lens [B] -> out_lens [B] through every convolution's time axis."""
    for kernel, stride in zip(conv_kernels, conv_strides):
        feat_lens = conv_output_length(feat_lens, kernel[1], stride[1])
    return feat_lens


def conv_output_dim(feat_dim: int, conv_kernels: list, conv_strides: list) -> int:
    for kernel, stride in zip(conv_kernels, conv_strides):
        feat_dim = conv_output_length(feat_dim, kernel[0], stride[0])
    return feat_dim


def _time_mask(lens: paddle.Tensor, max_len: int) -> paddle.Tensor:
    """lens [B] -> mask [B, max_len] float32, 1 on real frames."""
    steps = paddle.arange(max_len, dtype=lens.dtype).unsqueeze(0)
    return (steps < lens.unsqueeze(1)).astype("float32")


class DeepSpeech2(nn.Layer):
    def __init__(self, cfg: ModelConfig, feat_dim: int, vocab_size: int,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None):
        super().__init__()
        if not (len(cfg.conv_channels) == len(cfg.conv_kernels) == len(cfg.conv_strides)):
            raise ValueError("model.conv_channels, conv_kernels and conv_strides must have the same length")
        if cfg.rnn_type not in RNN_TYPES:
            raise ValueError(f"model.rnn_type must be {' or '.join(RNN_TYPES)}, not '{cfg.rnn_type}'")
        self.cfg, self.feat_dim, self.vocab_size = cfg, feat_dim, vocab_size
        # The normalizer travels with the weights (state dict, checkpoints and exports).
        mean = np.zeros(feat_dim, np.float32) if mean is None else np.asarray(mean, np.float32)
        std = np.ones(feat_dim, np.float32) if std is None else np.asarray(std, np.float32)
        self.register_buffer("feat_mean", paddle.to_tensor(mean), persistable=True)
        self.register_buffer("feat_istd", paddle.to_tensor(1.0 / np.maximum(std, 1e-6)), persistable=True)
        self.convs = nn.LayerList()
        in_channels = 1
        for channels, kernel, stride in zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides):
            self.convs.append(nn.Sequential(
                nn.Conv2D(in_channels, channels, kernel, stride, padding=(kernel[0] // 2, kernel[1] // 2),
                          bias_attr=False),
                nn.BatchNorm2D(channels), nn.Hardtanh(0.0, HARDTANH_MAX)))
            in_channels = channels
        rnn_input = in_channels * conv_output_dim(feat_dim, cfg.conv_kernels, cfg.conv_strides)
        rnn_class = nn.GRU if cfg.rnn_type == "gru" else nn.LSTM
        self.rnn = rnn_class(rnn_input, cfg.rnn_size, num_layers=cfg.num_rnn_layers,
                             direction="bidirect" if cfg.bidirectional else "forward")
        self.rnn_norm = nn.LayerNorm(cfg.rnn_size * (2 if cfg.bidirectional else 1))
        self.head = nn.Linear(cfg.rnn_size * (2 if cfg.bidirectional else 1), vocab_size)
        # training on the CPU sets this (train.cpu_kernels): the same weights through utils/csrc/
        self.cpu_kernels = False

    def forward(self, feats: paddle.Tensor, feat_lens: paddle.Tensor):
        """feats [B, T, D], feat_lens [B] int64 -> logits [B, T', V], out_lens [B]."""
        fused = self.cpu_kernels and paddle.in_dynamic_mode()  # exports trace Paddle's kernels
        if fused:  # the same in one op
            x = cpu_kernels.normalize_features(feats, feat_lens, self.feat_mean, self.feat_istd)
        else:
            mask = _time_mask(feat_lens, feats.shape[1])  # [B, T]
            x = (feats - self.feat_mean) * self.feat_istd * mask.unsqueeze(2)  # [B, T, D], padding = 0
            x = x.transpose([0, 2, 1]).unsqueeze(1)  # [B, 1, D, T]
        lens = feat_lens
        last = len(self.convs) - 1
        for index, (block, kernel, stride) in enumerate(zip(self.convs, self.cfg.conv_kernels,
                                                            self.cfg.conv_strides)):
            lens = conv_output_length(lens, kernel[1], stride[1])
            # block: Conv2D, BatchNorm2D, Hardtanh -> x [B, C, D', T']; the next convolution reads
            # across the end, so its input's padding is set to 0 (the mask)
            if fused and self.training:  # the norm, the clip and the mask in one op
                x = cpu_kernels.batch_norm_clip(block[1], block[2], cpu_kernels.conv2d(block[0], x),
                                                lens if index < last else None)
            else:
                x = block[2](block[1](cpu_kernels.conv2d(block[0], x))) if fused else block(x)
                if index < last:
                    # mask expanded to x's shape: Paddle's CPU multiply with a broadcast [B, 1, 1, T']
                    # operand costs 4x more forward and backward (README, "Benchmarks")
                    x = x * _time_mask(lens, x.shape[3]).unsqueeze(1).unsqueeze(1).expand(x.shape)
        # the last convolution's padded frames stay: the RNN stops at `lens` (sequence_length)
        if fused:
            x = cpu_kernels.frame_rows(x)  # [B, T', C*D']
            x = cpu_kernels.recurrent(self.rnn, x, lens.astype("int32"))  # [B, T', H*dirs]
        else:
            batch, channels, dim, steps = x.shape
            x = x.transpose([0, 3, 1, 2]).reshape([batch, steps, channels * dim])  # [B, T', C*D']
            x, _ = self.rnn(x, sequence_length=lens.astype("int32"))  # [B, T', H*dirs]
        x = cpu_kernels.layer_norm(self.rnn_norm, x) if fused else self.rnn_norm(x)
        logits = self.head(x)  # [B, T', V]
        return logits, lens


def log_softmax(logits: paddle.Tensor) -> paddle.Tensor:
    """log_softmax over the last axis (the vocabulary): logits [B, T', V] -> log_probs [B, T', V].

    Paddle's CPU F.log_softmax is slow for wide vocabularies: 4.4 s on [16, 300, 3226] (a Chinese
    character vocabulary) against 0.16 s for these ops, which also export. It is also wrong when
    logits spread widely (Paddle 3.x, randn x 30: off by 174; trained demo models spread < 25).
    """
    # the shift cancels out of the result, so no gradient flows through it (the max's backward
    # costs 12 ms a step on [16, 150, 30])
    shifted = logits - logits.max(axis=-1, keepdim=True).detach()
    return shifted - paddle.log(paddle.exp(shifted).sum(axis=-1, keepdim=True))


def build_model(cfg: ModelConfig, feat_dim: int, vocab_size: int, mean=None, std=None) -> DeepSpeech2:
    return DeepSpeech2(cfg, feat_dim, vocab_size, mean, std)


def count_parameters(model: nn.Layer) -> int:
    return int(sum(np.prod(p.shape) for p in model.parameters()))

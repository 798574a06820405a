"""utils/onnx_export.py: the ONNX graph computes what the Paddle model computes, for every
model shape the config allows (GRU and LSTM, one or two directions, one or two convolutions),
on a padded batch, with BatchNorm statistics that are not the identity."""
from __future__ import annotations

import numpy as np
import onnxruntime
import paddle
import pytest

from utils.config import ModelConfig
from utils.model import build_model, conv_output_lengths, log_softmax
from utils.onnx_export import build_onnx

FEAT_DIM, VOCAB = 16, 7
LOG_PROB_ATOL = 1e-4  # float32 round-off; measured below 2e-5 on the trained demo model


def random_model(seed: int, **model_keys):
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    cfg = ModelConfig(conv_channels=[3, 4], conv_kernels=[[3, 3], [5, 3]], conv_strides=[[2, 2], [1, 1]],
                      rnn_size=8, num_rnn_layers=2)
    for key, value in model_keys.items():
        setattr(cfg, key, value)
    mean, std = rng.normal(0, 1, FEAT_DIM), rng.uniform(0.5, 2, FEAT_DIM)
    model = build_model(cfg, FEAT_DIM, VOCAB, mean, std)
    state = model.state_dict()
    for name, value in state.items():  # BatchNorm statistics away from (0, 1), so folding is tested
        if name.endswith("._mean"):
            value.set_value(rng.normal(0, 0.5, value.shape).astype(np.float32))
        elif name.endswith("._variance"):
            value.set_value(rng.uniform(0.5, 2, value.shape).astype(np.float32))
    model.eval()
    return model


@pytest.mark.parametrize("model_keys", [
    {},
    {"rnn_type": "lstm"},
    {"bidirectional": True},
    {"rnn_type": "lstm", "bidirectional": True, "num_rnn_layers": 1},
    {"conv_channels": [5], "conv_kernels": [[3, 3]], "conv_strides": [[2, 2]], "num_rnn_layers": 3},
], ids=["gru", "lstm", "bigru", "bilstm", "one_conv"])
def test_onnx_graph_matches_the_paddle_model(model_keys):
    model = random_model(3, **model_keys)
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 2, (3, 37, FEAT_DIM)).astype(np.float32)  # [B, T, D]
    feat_lens = np.array([37, 20, 9], np.int64)
    feats[1, 20:] = 99.0  # whatever sits in the padding must not matter
    with paddle.no_grad():
        logits, out_lens = model(paddle.to_tensor(feats), paddle.to_tensor(feat_lens))
        expected = log_softmax(logits).numpy()
    session = onnxruntime.InferenceSession(build_onnx(model).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    log_probs, lens = session.run(None, {"feats": feats, "feat_lens": feat_lens})
    np.testing.assert_array_equal(lens, out_lens.numpy())
    assert log_probs.shape == expected.shape
    for row, length in enumerate(lens):
        np.testing.assert_allclose(log_probs[row, :length], expected[row, :length], rtol=0, atol=LOG_PROB_ATOL)



@pytest.mark.parametrize("kernels,strides,first_lens", [
    ([[3, 3], [5, 3]], [[2, 2], [1, 1]], [0, 1, 1, 2, 2, 3, 3]),
    ([[3, 11], [3, 3]], [[2, 2], [1, 3]], [0, 1, 1, 1, 1, 1, 1]),
], ids=["k3s2_k3s1", "k11s2_k3s3"])
def test_onnx_out_lens_follow_the_models_formula_from_zero_frames(kernels, strides, first_lens):
    model = random_model(3, conv_kernels=kernels, conv_strides=strides)
    feat_lens = np.arange(41, dtype=np.int64)  # one row of each length 0..40, the first with no frames at all
    feats = np.random.default_rng(1).normal(0, 1, (41, 40, FEAT_DIM)).astype(np.float32)  # [B, T, D]
    with paddle.no_grad():
        _, paddle_lens = model(paddle.to_tensor(feats), paddle.to_tensor(feat_lens))
    session = onnxruntime.InferenceSession(build_onnx(model).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    _, lens = session.run(None, {"feats": feats, "feat_lens": feat_lens})
    expected = [conv_output_lengths(n, kernels, strides) for n in range(41)]  # Python ints: floor division
    assert expected[:7] == first_lens
    assert lens.tolist() == expected == paddle_lens.numpy().tolist()

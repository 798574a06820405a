"""DeepSpeech2: output-length formula, shapes, the normalizer in the state dict, padding invariance."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

import train_fixtures  # noqa: F401  (puts the repository on sys.path)
from utils.config import ModelConfig
from utils.model import build_model, conv_output_dim, conv_output_lengths

REFERENCE = dict(conv_kernels=[[41, 11], [21, 11]], conv_strides=[[2, 2], [2, 1]])  # conf/deepspeech2.yml
TINY = dict(conv_kernels=[[3, 3]], conv_strides=[[2, 2]])  # conf/tiny.yml
EVEN = dict(conv_kernels=[[4, 4], [3, 5]], conv_strides=[[2, 2], [1, 3]])  # even kernel, stride 3
LENGTHS = [1, 2, 3, 7, 10, 11, 50, 100, 101]

# Output frames worked out by hand from (L + 2 * (k // 2) - k) // s + 1 per convolution.
PINNED_LENGTHS = {
    "reference": [1, 1, 2, 4, 5, 6, 25, 50, 51],  # (L - 1) // 2 + 1, then unchanged (11, stride 1)
    "tiny": [1, 1, 2, 4, 5, 6, 25, 50, 51],  # (L - 1) // 2 + 1
    "even": [1, 1, 1, 2, 2, 2, 9, 17, 17],  # L // 2 + 1, then (L' - 1) // 3 + 1
}
CONFIGS = {"reference": REFERENCE, "tiny": TINY, "even": EVEN}


def model_config(shape: dict, rnn_type: str = "gru", bidirectional: bool = False, channels: int = 2,
                 layers: int = 1, size: int = 8) -> ModelConfig:
    return ModelConfig(conv_channels=[channels] * len(shape["conv_kernels"]), rnn_type=rnn_type,
                       num_rnn_layers=layers, rnn_size=size, bidirectional=bidirectional, **shape)


def scramble(model: paddle.nn.Layer, seed: int = 0) -> None:
    """Random values in every parameter and buffer (BatchNorm running stats too), so padding
    that leaks anywhere changes the output."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for name, value in state.items():
        if name.endswith("_variance") or name == "feat_istd":
            new = rng.uniform(0.5, 2.0, value.shape)
        else:
            new = rng.normal(0.0, 0.5, value.shape)
        state[name] = paddle.to_tensor(new.astype(np.float32))
    model.set_state_dict(state)


def random_feats(lengths: list[int], dim: int, seed: int = 1) -> tuple[paddle.Tensor, paddle.Tensor]:
    rng = np.random.default_rng(seed)
    feats = np.zeros((len(lengths), max(lengths), dim), np.float32)
    for row, length in enumerate(lengths):
        feats[row, :length] = rng.normal(0.0, 1.0, (length, dim))
    return paddle.to_tensor(feats), paddle.to_tensor(np.array(lengths, np.int64))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_formula_matches_pinned_values(name):
    shape = CONFIGS[name]
    got = conv_output_lengths(np.array(LENGTHS), shape["conv_kernels"], shape["conv_strides"])
    assert got.tolist() == PINNED_LENGTHS[name]


@pytest.mark.parametrize("name,feat_dim,out_dim", [("reference", 161, 41), ("tiny", 40, 20), ("even", 40, 21)])
def test_frequency_formula_matches_model_input(name, feat_dim, out_dim):
    shape = CONFIGS[name]
    assert conv_output_dim(feat_dim, shape["conv_kernels"], shape["conv_strides"]) == out_dim
    model = build_model(model_config(shape, channels=3), feat_dim, vocab_size=5)
    assert model.rnn.state_dict()["0.cell.weight_ih"].shape[1] == 3 * out_dim


@pytest.mark.parametrize("name,feat_dim", [("reference", 161), ("tiny", 40), ("even", 40)])
def test_formula_equals_real_output_lengths(name, feat_dim):
    paddle.seed(0)
    model = build_model(model_config(CONFIGS[name]), feat_dim, vocab_size=5)
    model.eval()
    expected = PINNED_LENGTHS[name]
    for length, want in zip(LENGTHS, expected):  # alone: the tensor's time axis is the real output length
        logits, out_lens = model(*random_feats([length], feat_dim))
        assert logits.shape[1] == want == int(out_lens[0]), (name, length)
    logits, out_lens = model(*random_feats(LENGTHS, feat_dim))  # batched: out_lens per utterance
    assert out_lens.numpy().tolist() == expected
    assert logits.shape[1] == max(expected)


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_output_shapes(rnn_type, bidirectional):
    paddle.seed(0)
    model = build_model(model_config(TINY, rnn_type, bidirectional, layers=2, size=6), 40, vocab_size=11)
    assert type(model.rnn).__name__ == rnn_type.upper()
    assert model.head.weight.shape == [6 * (2 if bidirectional else 1), 11]
    logits, out_lens = model(*random_feats([50, 37, 20], 40))
    assert logits.shape == [3, 25, 11]  # [B, T', V], T' = (50 - 1) // 2 + 1
    assert out_lens.numpy().tolist() == [25, 19, 10]
    assert np.isfinite(logits.numpy()).all()


def test_unknown_rnn_type_and_mismatched_conv_lists_are_errors():
    with pytest.raises(ValueError, match="rnn_type must be gru or lstm"):
        build_model(model_config(TINY, rnn_type="rnn"), 40, 5)
    with pytest.raises(ValueError, match="same length"):
        build_model(ModelConfig(conv_channels=[2, 2], conv_kernels=[[3, 3]], conv_strides=[[2, 2]]), 40, 5)


def test_normalizer_travels_in_the_state_dict(tmp_path):
    rng = np.random.default_rng(3)
    mean = rng.normal(0, 3, 40).astype(np.float32)
    std = rng.uniform(0.5, 4, 40).astype(np.float32)
    paddle.seed(0)
    trained = build_model(model_config(TINY), 40, 7, mean, std)
    state = trained.state_dict()
    assert {"feat_mean", "feat_istd"} <= set(state)
    assert {"feat_mean", "feat_istd"} <= {name for name, _ in trained.named_buffers()}
    assert not {"feat_mean", "feat_istd"} & {name for name, _ in trained.named_parameters()}
    np.testing.assert_array_equal(state["feat_mean"].numpy(), mean)
    np.testing.assert_allclose(state["feat_istd"].numpy(), 1.0 / std, rtol=1e-6)
    paddle.save(state, str(tmp_path / "model.pdparams"))

    fresh = build_model(model_config(TINY), 40, 7)  # zeros / ones
    np.testing.assert_array_equal(fresh.feat_mean.numpy(), np.zeros(40, np.float32))
    fresh.set_state_dict(paddle.load(str(tmp_path / "model.pdparams")))
    np.testing.assert_array_equal(fresh.feat_mean.numpy(), mean)
    np.testing.assert_array_equal(fresh.feat_istd.numpy(), state["feat_istd"].numpy())
    trained.eval(), fresh.eval()
    feats = random_feats([30, 12], 40)
    np.testing.assert_array_equal(fresh(*feats)[0].numpy(), trained(*feats)[0].numpy())


def test_normalizer_is_not_trained():
    paddle.seed(0)
    model = build_model(model_config(TINY), 40, 7, np.full(40, 2.0), np.full(40, 3.0))
    optimizer = paddle.optimizer.Adam(learning_rate=0.1, parameters=model.parameters())
    logits, _ = model(*random_feats([20, 15], 40))
    logits.mean().backward()
    optimizer.step()
    np.testing.assert_array_equal(model.feat_mean.numpy(), np.full(40, 2.0, np.float32))
    np.testing.assert_allclose(model.feat_istd.numpy(), np.full(40, 1 / 3.0, np.float32))


@pytest.mark.parametrize("shape_name,rnn_type,bidirectional", [
    ("tiny", "gru", False), ("tiny", "gru", True), ("tiny", "lstm", True), ("reference", "gru", True),
    ("even", "lstm", False)])
def test_padding_does_not_change_an_utterances_logits(shape_name, rnn_type, bidirectional):
    """Eval mode: an utterance alone and inside a padded batch give the same logits on its frames."""
    dim = 161 if shape_name == "reference" else 40
    paddle.seed(0)
    model = build_model(model_config(CONFIGS[shape_name], rnn_type, bidirectional, channels=4, layers=2), dim, 6)
    scramble(model)
    model.eval()
    short, long_ = 23, 61
    batch_feats, batch_lens = random_feats([long_, short], dim, seed=5)
    # the padding of the short row is garbage, not zeros: the model must ignore it
    padded = batch_feats.numpy()
    padded[1, short:] = 7.0
    alone, alone_lens = model(paddle.to_tensor(padded[1:2, :short]), paddle.to_tensor(np.array([short])))
    batched, batched_lens = model(paddle.to_tensor(padded), batch_lens)
    frames = int(alone_lens[0])
    assert int(batched_lens[1]) == frames == alone.shape[1]
    np.testing.assert_allclose(batched.numpy()[1, :frames], alone.numpy()[0], rtol=1e-4, atol=1e-5)
    if bidirectional:  # control: with the padding declared as real frames, the backward RNN sees it
        leaky, _ = model(paddle.to_tensor(padded), paddle.to_tensor(np.array([long_, long_])))
        assert np.abs(leaky.numpy()[1, :frames] - alone.numpy()[0]).max() > 1e-2


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_log_softmax_is_exact_on_a_wide_vocabulary(scale):
    """Against float64 numpy. Paddle's own CPU F.log_softmax is off by 174 at scale 30 (3.x)."""
    from utils.model import log_softmax

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 7, 3226)) * scale
    shifted = logits - logits.max(-1, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ours = log_softmax(paddle.to_tensor(logits.astype(np.float32))).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-5 * scale)

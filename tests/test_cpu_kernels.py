"""Our CPU kernels (utils/csrc/) against Paddle's: the recurrence against nn.GRU / nn.LSTM (one and
two directions, sorted and unsorted lengths) and the convolution against nn.Conv2D (the model's
kernel, stride and padding shapes), outputs and every gradient; the CTC loss against Paddle's and
a float64 reference; a whole model step; the choice."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

import train_fixtures  # noqa: F401  (puts the repository on sys.path)
from test_model import model_config, random_feats, scramble
from utils import cpu_kernels
from utils.model import build_model

TOLERANCE = 2e-5  # float32; the two kernels sum the products in different orders
LENGTHS = {"sorted": [9, 9, 6, 3, 1], "unsorted": [4, 9, 1, 7, 6],
           # enough rows for the gate pass to split among threads (csrc/rnn.cc, kRowsPerThread)
           "many rows": [9, 8, 8, 7, 7, 6, 5, 5, 4, 3, 2, 2, 1, 1, 1, 1]}


@pytest.fixture(scope="module")
def ops():
    try:
        return cpu_kernels.load_ops()
    except cpu_kernels.KernelsUnavailable as error:
        pytest.fail(f"the fused kernel must build where the tests run: {error}")


def run_both(rnn: paddle.nn.Layer, lengths: list[int], seed: int = 0):
    """(Paddle's output, fused output, Paddle's gradients, fused gradients): gradients by name,
    'x' the input's, of the output weighted by fixed random values (padding included)."""
    rng = np.random.default_rng(seed)
    x_value = rng.normal(0.0, 1.0, (len(lengths), max(lengths), rnn.input_size)).astype(np.float32)
    lens = paddle.to_tensor(np.array(lengths, np.int32))
    out_shape = (len(lengths), max(lengths), rnn.hidden_size * rnn.num_directions)
    weights = paddle.to_tensor(rng.normal(0.0, 1.0, out_shape).astype(np.float32))
    results = []
    for fused in (False, True):
        x = paddle.to_tensor(x_value, stop_gradient=False)
        out = cpu_kernels.recurrent(rnn, x, lens) if fused else rnn(x, sequence_length=lens)[0]
        (out * weights).sum().backward()
        grads = {name: p.grad.numpy().copy() for name, p in rnn.named_parameters()}
        grads["x"] = x.grad.numpy().copy()
        rnn.clear_gradients()
        results.append((out.numpy(), grads))
    (reference, reference_grads), (fused, fused_grads) = results
    return reference, fused, reference_grads, fused_grads


@pytest.mark.parametrize("order", sorted(LENGTHS))
@pytest.mark.parametrize("direction", ["forward", "bidirect"])
@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_matches_paddle(ops, mode, direction, order):
    paddle.seed(3)
    layer = paddle.nn.GRU if mode == "GRU" else paddle.nn.LSTM
    rnn = layer(6, 5, num_layers=2, direction=direction)
    reference, fused, reference_grads, fused_grads = run_both(rnn, LENGTHS[order])
    assert fused.shape == reference.shape == (len(LENGTHS[order]), 9, 5 * (2 if direction == "bidirect" else 1))
    np.testing.assert_allclose(fused, reference, atol=TOLERANCE)
    assert set(fused_grads) == set(reference_grads)
    for name in reference_grads:
        np.testing.assert_allclose(fused_grads[name], reference_grads[name], atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_saturated_gates_stay_finite(ops, mode):
    """Pre-activations far past exp's float range (|v| > 88): sigmoid and tanh saturate, as Paddle's
    do, instead of turning into NaN (a Mandarin demo model reached |v| > 44 in a tanh)."""
    paddle.seed(11)
    rnn = (paddle.nn.GRU if mode == "GRU" else paddle.nn.LSTM)(4, 32)  # 32: the vectorized gate loop runs
    x = paddle.to_tensor(np.random.default_rng(12).normal(0.0, 500.0, (2, 5, 4)).astype(np.float32))
    lens = paddle.to_tensor(np.array([5, 4], np.int32))
    fused = cpu_kernels.recurrent(rnn, x, lens).numpy()
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused, rnn(x, sequence_length=lens)[0].numpy(), atol=TOLERANCE)


def test_padding_is_zero_and_pinned(ops):
    """Frames past a row's length are 0; one value pinned so that a change in either kernel shows."""
    paddle.seed(7)
    rnn = paddle.nn.GRU(3, 4)
    x = paddle.ones([2, 4, 3])
    out = cpu_kernels.recurrent(rnn, x, paddle.to_tensor(np.array([4, 2], np.int32))).numpy()
    assert np.all(out[1, 2:] == 0.0)
    assert out[0, 3, 0] == pytest.approx(float(rnn(x)[0].numpy()[0, 3, 0]), abs=TOLERANCE)


def test_bad_input_is_refused(ops):
    rnn = paddle.nn.GRU(3, 4)
    x = paddle.ones([2, 4, 3])
    with pytest.raises(Exception, match="lies outside"):
        cpu_kernels.recurrent(rnn, x, paddle.to_tensor(np.array([5, 2], np.int32)))
    with pytest.raises(ValueError, match="batch-major"):
        cpu_kernels.recurrent(paddle.nn.GRU(3, 4, time_major=True), x, paddle.to_tensor([4, 2], "int32"))


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_model_loss_and_gradients_match(ops, rnn_type):
    """A whole DeepSpeech2 step: the same loss and gradients through either kernel."""
    from utils.model import log_softmax

    model = build_model(model_config(dict(conv_kernels=[[3, 3]], conv_strides=[[2, 2]]), rnn_type=rnn_type,
                                     layers=2, size=6), 8, 5)
    scramble(model)
    feats, feat_lens = random_feats([12, 7, 10], 8)
    labels = paddle.to_tensor(np.array([[1, 2, 3], [2, 2, 0], [4, 1, 0]], np.int32))
    label_lens = paddle.to_tensor(np.array([3, 2, 2], np.int64))
    losses, grads = [], []
    for fused in (False, True):
        model.cpu_kernels = fused
        logits, out_lens = model(feats, feat_lens)
        loss = paddle.nn.functional.ctc_loss(log_softmax(logits).transpose([1, 0, 2]), labels, out_lens,
                                             label_lens, blank=0, reduction="sum")
        loss.backward()
        losses.append(float(loss))
        grads.append({name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None})
        model.clear_gradients()
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], atol=1e-4, err_msg=name)


CONV_CASES = {  # (in channels, [kh, kw], [stride h, stride w], input [H, W])
    "demo first": (1, [3, 3], [2, 2], [20, 31]),
    "demo second": (3, [3, 3], [2, 1], [10, 16]),
    "reference": (2, [41, 11], [2, 2], [45, 30]),
    "even kernel, stride 3": (2, [4, 4], [1, 3], [9, 17]),
    "peer second, dcol one channel at a time": (3, [3, 3], [2, 2], [40, 400]),  # conv.cc GroupChannels: 1
}


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_matches_paddle(ops, case, input_grad):
    channels, kernel, stride, size = CONV_CASES[case]
    paddle.seed(5)
    conv = paddle.nn.Conv2D(channels, 4, kernel, stride, padding=(kernel[0] // 2, kernel[1] // 2), bias_attr=False)
    rng = np.random.default_rng(2)
    x_value = rng.normal(0.0, 1.0, [3, channels] + size).astype(np.float32)
    results = []
    for fused in (False, True):
        x = paddle.to_tensor(x_value, stop_gradient=not input_grad)
        out = cpu_kernels.conv2d(conv, x) if fused else conv(x)
        if not results:
            weights = paddle.to_tensor(rng.normal(0.0, 1.0, out.shape).astype(np.float32))
        (out * weights).sum().backward()
        results.append((out.numpy(), conv.weight.grad.numpy().copy(), x.grad.numpy().copy() if input_grad else None))
        conv.clear_gradients()
    (reference, reference_dw, reference_dx), (fused, fused_dw, fused_dx) = results
    assert fused.shape == reference.shape
    np.testing.assert_allclose(fused, reference, atol=TOLERANCE)
    np.testing.assert_allclose(fused_dw, reference_dw, rtol=1e-4, atol=1e-4)
    if input_grad:
        np.testing.assert_allclose(fused_dx, reference_dx, atol=TOLERANCE)


@pytest.mark.parametrize("shape", [[3, 7, 10], [200, 6]])  # 200 rows: split among threads
def test_layer_norm_matches_paddle(ops, shape):
    paddle.seed(4)
    norm = paddle.nn.LayerNorm(shape[-1])
    rng = np.random.default_rng(6)
    norm.weight.set_value(rng.normal(1.0, 0.3, shape[-1]).astype(np.float32))
    norm.bias.set_value(rng.normal(0.0, 0.3, shape[-1]).astype(np.float32))
    x_value = rng.normal(0.5, 2.0, shape).astype(np.float32)
    weights = paddle.to_tensor(rng.normal(0.0, 1.0, shape).astype(np.float32))
    results = []
    for fused in (False, True):
        x = paddle.to_tensor(x_value, stop_gradient=False)
        out = cpu_kernels.layer_norm(norm, x) if fused else norm(x)
        (out * weights).sum().backward()
        results.append([out.numpy(), x.grad.numpy().copy(), norm.weight.grad.numpy().copy(),
                        norm.bias.grad.numpy().copy()])
        norm.clear_gradients()
    for name, fused, reference in zip(["y", "dx", "dgamma", "dbeta"], results[1], results[0]):
        np.testing.assert_allclose(fused, reference, rtol=1e-4, atol=1e-4, err_msg=name)


def test_normalize_features_matches_paddle(ops):
    """(feats - mean) * istd, 0 past each row's length, as [B, 1, D, T]: against Paddle's ops, with
    150 frames (three blocks of 64, the last part-filled) and lengths 0, 1, 64, 150."""
    rng = np.random.default_rng(8)
    feats_value = rng.normal(2.0, 3.0, (4, 150, 7)).astype(np.float32)
    mean_value, istd_value = rng.normal(size=7).astype(np.float32), rng.uniform(0.5, 2.0, 7).astype(np.float32)
    lens = paddle.to_tensor([0, 1, 64, 150], dtype="int64")
    feats, mean, istd = map(paddle.to_tensor, (feats_value, mean_value, istd_value))
    fused = cpu_kernels.normalize_features(feats, lens, mean, istd).numpy()
    mask = (np.arange(150)[None, :] < lens.numpy()[:, None]).astype(np.float32)
    reference = ((feats_value - mean_value) * istd_value * mask[:, :, None]).transpose(0, 2, 1)[:, None]
    assert fused.shape == (4, 1, 7, 150)
    np.testing.assert_allclose(fused, reference, rtol=1e-6, atol=1e-6)
    assert not fused[0].any() and not fused[2, :, :, 64:].any()


@pytest.mark.parametrize("masked", [True, False])
def test_batch_norm_clip_matches_paddle(ops, masked):
    """clip(norm(x)) then the padding mask, Paddle's ops against ours: output, gradients of x,
    gamma and beta, and the running statistics after two steps."""
    paddle.seed(8)
    rng = np.random.default_rng(9)
    x_value = rng.normal(0.3, 2.0, (4, 3, 5, 7)).astype(np.float32)
    lens = paddle.to_tensor(np.array([7, 5, 3, 6], np.int64))
    weights = paddle.to_tensor(rng.normal(0.0, 1.0, x_value.shape).astype(np.float32))
    results = []
    for fused in (False, True):
        norm, clip = paddle.nn.BatchNorm2D(3), paddle.nn.Hardtanh(0.0, 2.0)  # a low clip: both sides clip
        norm.weight.set_value(np.array([1.0, 0.5, 2.0], np.float32))
        norm.bias.set_value(np.array([0.2, -0.1, 0.5], np.float32))
        for _ in range(2):
            x = paddle.to_tensor(x_value, stop_gradient=False)
            if fused:
                out = cpu_kernels.batch_norm_clip(norm, clip, x, lens if masked else None)
            else:
                out = clip(norm(x))
                if masked:
                    out = out * (paddle.arange(7).unsqueeze(0) < lens.unsqueeze(1)).astype("float32").unsqueeze(
                        1).unsqueeze(1).expand(out.shape)
            (out * weights).sum().backward()
            grads = [x.grad.numpy().copy(), norm.weight.grad.numpy().copy(), norm.bias.grad.numpy().copy()]
            norm.clear_gradients()
        results.append([out.numpy(), *grads, norm._mean.numpy().copy(), norm._variance.numpy().copy()])
    assert 0 < (results[0][0] == 2.0).mean() < 0.5  # the upper clip acts
    for name, fused, reference in zip(["y", "dx", "dgamma", "dbeta", "running mean", "running var"], results[1],
                                      results[0]):
        np.testing.assert_allclose(fused, reference, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("shape", [[2, 3, 5, 7], [3, 32, 20, 75]])  # tiles part-filled; many tiles
def test_frame_rows_is_the_transpose_both_ways(ops, shape):
    rng = np.random.default_rng(10)
    x_value = rng.normal(0.0, 1.0, shape).astype(np.float32)
    batch, channels, dim, steps = shape
    weights = paddle.to_tensor(rng.normal(0.0, 1.0, (batch, steps, channels * dim)).astype(np.float32))
    results = []
    for fused in (False, True):
        x = paddle.to_tensor(x_value, stop_gradient=False)
        y = (cpu_kernels.frame_rows(x) if fused else
             x.transpose([0, 3, 1, 2]).reshape([batch, steps, channels * dim]))
        (y * weights).sum().backward()
        results.append((y.numpy(), x.grad.numpy()))
    assert np.array_equal(results[1][0], results[0][0]) and np.array_equal(results[1][1], results[0][1])


def ctc_reference(logits: np.ndarray, label: list[int], blank: int = 0) -> tuple[float, np.ndarray]:
    """The CTC loss of one utterance (logits [T, V]) and its gradient, in float64 with numpy."""
    x = logits.astype(np.float64)
    lp = x - np.logaddexp.reduce(x, axis=1, keepdims=True)
    ext = [blank] + [token for l in label for token in (l, blank)]
    frames, states = len(lp), len(ext)
    alpha, beta = np.full((frames, states), -np.inf), np.full((frames, states), -np.inf)
    alpha[0, :2], beta[-1, -2:] = lp[0, ext[:2]], lp[-1, ext[-2:]]
    for t in range(1, frames):
        for s in range(states):
            skip = s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]
            alpha[t, s] = np.logaddexp.reduce(alpha[t - 1, max(0, s - (2 if skip else 1)):s + 1]) + lp[t, ext[s]]
    for t in range(frames - 2, -1, -1):
        for s in range(states):
            skip = s + 2 < states and ext[s] != blank and ext[s] != ext[s + 2]
            beta[t, s] = np.logaddexp.reduce(beta[t + 1, s:s + (3 if skip else 2)]) + lp[t, ext[s]]
    log_p = np.logaddexp.reduce(alpha[-1, -2:])
    grad = np.exp(lp)
    for s, token in enumerate(ext):
        grad[:, token] -= np.exp(alpha[:, s] + beta[:, s] - lp[:, token] - log_p)
    return -log_p, grad


def ctc_both(logits: np.ndarray, frames: list[int], labels: list[list[int]]):
    """(loss, gradient) of Paddle's ctc_loss and ours, the losses weighted by 1, 2, 3... before the
    backward pass (so that the gradient's scaling by each row's loss gradient is checked too)."""
    width = max(1, max(len(label) for label in labels))
    label_array = np.array([label + [1] * (width - len(label)) for label in labels], np.int32)
    inputs = [paddle.to_tensor(np.array(frames, np.int64)), paddle.to_tensor(label_array),
              paddle.to_tensor(np.array([len(label) for label in labels], np.int64))]
    weights = paddle.arange(1, len(frames) + 1, dtype="float32")
    results = []
    for fused in (False, True):
        x = paddle.to_tensor(logits, stop_gradient=False)
        loss = (cpu_kernels.ctc_loss(x, *inputs, blank=0) if fused else
                paddle.nn.functional.ctc_loss(x.transpose([1, 0, 2]), *[inputs[1], inputs[0], inputs[2]], blank=0,
                                              reduction="none").reshape([-1]))
        (loss * weights).sum().backward()
        results.append((loss.numpy(), x.grad.numpy()))
    return results


def test_ctc_loss_matches_paddle_and_float64(ops):
    """Rows of different lengths (the batch padded), repeated labels, one label, labels that need
    every frame, and a row too short for its labels (loss 0, no gradient, as Paddle's)."""
    rng = np.random.default_rng(11)
    frames = [30, 25, 12, 7, 30, 4]
    labels = [[1, 2, 3, 4, 5, 6, 1, 2], [3, 3, 3, 2], [5], [1, 2, 3, 4, 5, 6, 1], [2, 2, 4, 4, 6, 6, 1], [1, 1, 1]]
    logits = (rng.normal(0.0, 3.0, (6, 30, 7))).astype(np.float32)
    (paddle_loss, paddle_grad), (loss, grad) = ctc_both(logits, frames, labels)
    np.testing.assert_allclose(loss, paddle_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, paddle_grad, atol=5e-4)  # both float32, rows weighted up to 6
    for row, (count, label) in enumerate(zip(frames, labels)):
        if row == 5:  # 1, 1, 1 needs 5 frames, has 4
            assert loss[row] == 0.0 and not grad[row].any()
            continue
        expected_loss, expected_grad = ctc_reference(logits[row, :count], label)
        assert loss[row] == pytest.approx(expected_loss, rel=1e-5)
        np.testing.assert_allclose(grad[row, :count], (row + 1) * expected_grad, atol=1e-4)
        assert not grad[row, count:].any()  # padding frames
    assert loss[0] == pytest.approx(52.60128, rel=1e-5)  # pinned: a change in the kernel shows


def test_ctc_loss_of_longer_rows_is_the_same_run_after_run(ops):
    """16 rows of 150 frames (the demo's batch): both threads busy; the result must not depend on
    which thread took which row (a dynamic schedule once gave wrong losses that changed run to run)."""
    rng = np.random.default_rng(12)
    logits = rng.normal(0.0, 1.0, (16, 150, 29)).astype(np.float32)
    labels = [list(rng.integers(1, 29, 40)) for _ in range(16)]
    runs = [ctc_both(logits, [150] * 16, labels)[1] for _ in range(3)]
    for loss, grad in runs[1:]:
        assert np.array_equal(loss, runs[0][0]) and np.array_equal(grad, runs[0][1])
    (paddle_loss, paddle_grad), _ = ctc_both(logits, [150] * 16, labels)
    np.testing.assert_allclose(runs[0][0], paddle_loss, rtol=1e-5)
    np.testing.assert_allclose(runs[0][1], paddle_grad, atol=2e-2)  # 16 x 150 x 29 values, float32 sums
    expected_loss, expected_grad = ctc_reference(logits[3], labels[3])
    assert runs[0][0][3] == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(runs[0][1][3], 4 * expected_grad, atol=1e-3)


def test_ctc_loss_of_an_empty_label_is_all_blanks(ops):
    """No labels: the loss is minus the log-probability of blank in every frame (Paddle's kernel
    stops the process with SIGFPE on this input)."""
    rng = np.random.default_rng(13)
    logits = rng.normal(0.0, 1.0, (1, 5, 4)).astype(np.float32)
    x = paddle.to_tensor(logits)
    loss = cpu_kernels.ctc_loss(x, paddle.to_tensor([5]), paddle.to_tensor([[1]], dtype="int32"),
                                paddle.to_tensor([0]), blank=0)
    lp = logits[0] - np.logaddexp.reduce(logits[0].astype(np.float64), axis=1, keepdims=True)
    assert float(loss) == pytest.approx(-lp[:, 0].sum(), rel=1e-6)


def test_ctc_loss_refuses_labels_outside_the_vocabulary(ops):
    x = paddle.zeros([1, 4, 3])
    for bad in (0, 3, -1):  # blank, past the vocabulary, negative
        with pytest.raises(Exception, match="not a token of the 3 other than blank 0"):
            cpu_kernels.ctc_loss(x, paddle.to_tensor([4]), paddle.to_tensor([[1, bad]], dtype="int32"),
                                 paddle.to_tensor([2]), blank=0)


def test_conv2d_refuses_what_it_does_not_compute(ops):
    with pytest.raises(ValueError, match="without bias, groups or dilation"):
        cpu_kernels.conv2d(paddle.nn.Conv2D(1, 2, 3), paddle.ones([1, 1, 5, 5]))  # a bias


def test_choose(ops):
    assert cpu_kernels.choose("paddle", on_cpu=True)[0] is False
    assert cpu_kernels.choose("auto", on_cpu=False) == (
        False, "convolutions, norms, recurrent layers and CTC loss: Paddle's kernels (ours are for the CPU)")
    use, note = cpu_kernels.choose("auto", on_cpu=True)
    assert use and "our CPU kernels" in note
    with pytest.raises(ValueError, match="train.cpu_kernels must be one of auto, fused, paddle"):
        cpu_kernels.choose("cudnn", on_cpu=True)


def test_without_compiler_auto_falls_back_and_fused_says_why(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_ops", None)
    monkeypatch.setattr(cpu_kernels, "_build_error", None)
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: None)
    use, note = cpu_kernels.choose("auto", on_cpu=True)
    assert not use and "need g++ (apt-get install g++)" in note
    with pytest.raises(cpu_kernels.KernelsUnavailable, match="train.cpu_kernels=paddle"):
        cpu_kernels.choose("fused", on_cpu=True)


def test_an_unwritable_build_folder_falls_back_with_the_reason(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")  # mkdir under a file fails, even for root
    monkeypatch.setattr(cpu_kernels, "_ops", None)
    monkeypatch.setattr(cpu_kernels, "_build_error", None)
    monkeypatch.setattr(cpu_kernels, "BUILD_ROOT", blocker / "build")
    use, note = cpu_kernels.choose("auto", on_cpu=True)
    assert not use and f"cannot build in {blocker / 'build'}" in note and "train.cpu_kernels=paddle" in note

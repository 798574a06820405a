"""Our C++ CPU kernels for the training step (utils/csrc/), built on first use and called by the model.

Paddle's CPU kernels leave much of a 2-core CPU idle in a DeepSpeech2 step (README, "Benchmarks"):
- recurrent layers (csrc/rnn.cc): Paddle's GRU/LSTM spends about 130 us a frame and layer around
  its products; ours runs one packed MKL sgemm and one vectorized pass over the gates a frame;
- convolutions (csrc/conv.cc): Paddle's conv2d unfolds each image on one thread; ours unfolds
  and multiplies the batch's images on all OpenMP threads; the last one's output turned into the
  recurrent layers' frame rows by a tiled transpose (Paddle's: 6.3 ms a demo step, both ways);
- normalizations (csrc/norm.cc): the layer norm after the recurrent layers (Paddle's backward
  takes 8 ms a step), each convolution block's batch norm, clip and padding mask in one op
  (five of Paddle's, about 24 ms a step), and the features' normalization, mask and transpose
  (five of Paddle's, 3.1 ms a step of the peer config);
- the CTC loss (csrc/ctc.cc): Paddle's warp-ctc runs the batch on one thread, 13.7 ms forward and
  backward on the demo's [16, 150, 29] logits with 40 labels a row; ours runs one utterance per
  thread with vectorized log-space recursions, 2.1-2.7 ms;
- thread placement (csrc/threads.cc): pins each OpenMP thread of the pool MKL and these kernels
  share to a core (utils/placement.py says when and why).
The compute kernels read the model's own parameters and statistics (nn.GRU / nn.LSTM / nn.Conv2D /
nn.LayerNorm / nn.BatchNorm2D), so checkpoints, exports and the GPU path are unchanged;
tests/test_cpu_kernels.py pins outputs and gradients to Paddle's.

The kernels are compiled with g++ against the installed Paddle (about 15 s, once) into
build/cpu_kernels/<key>/, <key> covering the sources, the flags, the Paddle version and the CPU
(the build uses -march=native), and loaded from there afterwards.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import paddle
import paddle.nn as nn

from utils import native_build

SOURCES = [Path(__file__).with_name("csrc") / name for name in ("rnn.cc", "conv.cc", "norm.cc", "ctc.cc",
                                                                                "threads.cc")]
HEADERS = [Path(__file__).with_name("csrc") / "common.h"]  # in the build key, not compiled alone
BUILD_ROOT = native_build.BUILD_ROOT / "cpu_kernels"
EXTENSION_NAME = "ds2_cpu_kernels"
CHOICES = ("auto", "fused", "paddle")  # train.cpu_kernels
COVERS = "convolutions, norms, recurrent layers and CTC loss"  # what the choice's log line names
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]

_ops = None          # the loaded extension module
_build_error = None  # why it could not be built, once tried


class KernelsUnavailable(RuntimeError):
    pass


def build_directory() -> Path:
    return native_build.keyed_folder(BUILD_ROOT, SOURCES + HEADERS, COMPILE_FLAGS, paddle.__version__)


def load_ops():
    """The compiled operators, built on first use; KernelsUnavailable says why they cannot be."""
    global _ops, _build_error
    if _ops is not None:
        return _ops
    if _build_error is not None:
        raise KernelsUnavailable(_build_error)
    if shutil.which("g++") is None:
        _build_error = "our CPU kernels need g++ (apt-get install g++), or set train.cpu_kernels=paddle"
        raise KernelsUnavailable(_build_error)
    with warnings.catch_warnings():  # Paddle's import set every warning to "always", over utils/__init__.py's filter
        warnings.filterwarnings("ignore", message="No ccache found")  # a compiler cache we do not need
        from paddle.utils.cpp_extension import load
    logging.getLogger("utils.cpp_extension").setLevel(logging.WARNING)  # its INFO "using custom operator only"

    folder = build_directory()
    libs = Path(paddle.__file__).parent / "libs"  # Paddle's MKL (cblas_sgemm) and Intel OpenMP
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(native_build.build_lock(folder))
        except OSError as error:  # a read-only checkout, a full disk
            _build_error = f"cannot build in {folder} ({error}); set train.cpu_kernels=paddle to train without them"
            raise KernelsUnavailable(_build_error) from error
        chatter, build_stderr = io.StringIO(), []  # Paddle's builder prints its setup.py run
        try:
            with redirect_stdout(chatter), native_build.captured_stderr(build_stderr):
                _ops = load(name=EXTENSION_NAME, sources=[str(path) for path in SOURCES],
                            extra_cxx_cflags=COMPILE_FLAGS,
                            # Paddle's own OpenMP runtime (libiomp5, which also serves GCC's
                            # GOMP calls): one thread pool in the process, not two
                            extra_ldflags=[f"-L{libs}", "-l:libmklml_intel.so", "-l:libiomp5.so",
                                           f"-Wl,-rpath,{libs}"],
                            build_directory=str(folder), verbose=False)
        except Exception as error:  # a compiler error, a missing header: say where and what
            output = (chatter.getvalue() + "".join(build_stderr)).strip()[-1500:]
            _build_error = (f"building {', '.join(map(str, SOURCES))} in {folder} failed "
                            f"({type(error).__name__}: {error}){': ' + output if output else ''}; "
                            f"set train.cpu_kernels=paddle to train without them")
            raise KernelsUnavailable(_build_error) from error
    native_build.prune_stale(BUILD_ROOT, folder)  # builds of earlier sources or another Paddle
    return _ops


def choose(setting: str, on_cpu: bool) -> tuple[bool, str]:
    """train.cpu_kernels -> (use our kernels?, a log line naming the kernels and why).

    'auto' takes ours on the CPU when they build, 'fused' insists (the error says why they cannot),
    'paddle' keeps Paddle's; on a GPU Paddle's (cuDNN) run whatever the setting.
    """
    if setting not in CHOICES:
        raise ValueError(f"train.cpu_kernels must be one of {', '.join(CHOICES)}, not '{setting}'")
    if not on_cpu:
        return False, f"{COVERS}: Paddle's kernels (ours are for the CPU)"
    if setting == "paddle":
        return False, f"{COVERS}: Paddle's kernels (train.cpu_kernels=paddle)"
    try:
        load_ops()
    except KernelsUnavailable as error:
        if setting == "fused":
            raise
        return False, f"{COVERS}: Paddle's kernels ({error})"
    return True, f"{COVERS}: our CPU kernels (train.cpu_kernels={setting}; built in {build_directory()})"


def bind_threads(cores: list[int], one_each: bool) -> list[int]:
    """OpenMP thread t (0: the calling thread) on cores[t % len(cores)] alone (one_each), or every
    thread on all of `cores`; returns each thread's errno (0: placed)."""
    status = load_ops().ds2_bind_threads(paddle.to_tensor(cores, dtype="int32"), one_each)
    return [int(value) for value in status.numpy()]


def conv2d(conv: nn.Conv2D, x: paddle.Tensor) -> paddle.Tensor:
    """What `conv(x)` returns for an NCHW nn.Conv2D without bias, groups or dilation:
    x [B, C, H, W] -> [B, O, H', W']."""
    if conv._groups != 1 or list(conv._dilation) != [1, 1] or conv.bias is not None or conv._data_format != "NCHW":
        raise ValueError(f"cpu_kernels.conv2d handles NCHW convolutions without bias, groups or dilation, not {conv}")
    if isinstance(conv._padding, str) or len(conv._padding) != 2:
        raise ValueError(f"cpu_kernels.conv2d takes padding as [h, w], not {conv._padding}")
    return load_ops().ds2_fused_conv2d(x, conv.weight, list(conv._stride), list(conv._padding), not x.stop_gradient)


def batch_norm_clip(norm: nn.BatchNorm2D, clip: nn.Hardtanh, x: paddle.Tensor,
                    lens: paddle.Tensor | None) -> paddle.Tensor:
    """What training-mode `clip(norm(x))` returns, with frames w >= lens[b] set to 0 when lens is
    given: x [B, C, H, W] -> the same shape. Updates norm's running mean and variance as Paddle does
    (running = momentum * running + (1 - momentum) * batch, biased variance)."""
    if not norm.training or norm._data_format != "NCHW" or norm.weight is None or norm.bias is None:
        raise ValueError(f"cpu_kernels.batch_norm_clip handles an NCHW BatchNorm2D with weight and bias in "
                         f"training mode, not {norm}")
    mask = lens is not None
    lens = lens.astype("int32") if mask else paddle.zeros([x.shape[0]], "int32")
    out, mean, variance = load_ops().ds2_fused_batch_norm_clip(
        x, norm.weight, norm.bias, lens, float(norm._epsilon), float(clip._min), float(clip._max), mask)
    with paddle.no_grad():
        momentum = norm._momentum
        norm._mean.set_value(norm._mean * momentum + mean * (1.0 - momentum))
        norm._variance.set_value(norm._variance * momentum + variance * (1.0 - momentum))
    return out


def normalize_features(feats: paddle.Tensor, feat_lens: paddle.Tensor, mean: paddle.Tensor,
                       istd: paddle.Tensor) -> paddle.Tensor:
    """feats [B, T, D] -> [B, 1, D, T]: (feats - mean) * istd on frames t < feat_lens[b], 0 after,
    transposed for the convolutions (no gradient: the features are inputs)."""
    return load_ops().ds2_normalize_features(feats, mean, istd, feat_lens.astype("int32"))


def layer_norm(norm: nn.LayerNorm, x: paddle.Tensor) -> paddle.Tensor:
    """What `norm(x)` returns for a LayerNorm over the last axis (with its weight and bias): x [..., D]."""
    if len(norm._normalized_shape) != 1 or norm.weight is None or norm.bias is None:
        raise ValueError(f"cpu_kernels.layer_norm handles a LayerNorm over the last axis with weight and bias, "
                         f"not {norm}")
    return load_ops().ds2_fused_layer_norm(x, norm.weight, norm.bias, float(norm._epsilon))[0]


def frame_rows(x: paddle.Tensor) -> paddle.Tensor:
    """What x.transpose([0, 3, 1, 2]).reshape([B, T, C * D]) returns: the last convolution's
    output x [B, C, D, T] as the recurrent layers' input [B, T, C*D]."""
    return load_ops().ds2_frame_rows(x, x.shape[1])


def ctc_loss(logits: paddle.Tensor, logit_lens: paddle.Tensor, labels: paddle.Tensor, label_lens: paddle.Tensor,
             blank: int) -> paddle.Tensor:
    """What Paddle's ctc_loss(reduction="none") returns for batch-major logits [B, T', V]
    (unnormalized: the softmax is inside), logit_lens [B], labels [B, L], label_lens [B] -> loss [B].
    An utterance with fewer frames than its labels need gets loss 0 and no gradient, as in Paddle's."""
    return load_ops().ds2_ctc_loss(logits, logit_lens.astype("int32"), labels.astype("int32"),
                                   label_lens.astype("int32"), blank)[0]


def recurrent(rnn: nn.RNNBase, x: paddle.Tensor, lens: paddle.Tensor) -> paddle.Tensor:
    """What `rnn(x, sequence_length=lens)[0]` returns, through our recurrence kernel.

    rnn: the model's nn.GRU or nn.LSTM (batch-major, no projection); x [B, T, I] float32;
    lens [B] int32 -> [B, T, H * directions], 0 on frames at or past a row's length.
    """
    ops = load_ops()
    if rnn.mode not in ("GRU", "LSTM") or rnn.time_major or getattr(rnn, "proj_size", 0):
        raise ValueError(f"cpu_kernels.recurrent handles batch-major GRU and LSTM without projection, not {rnn}")
    op = ops.ds2_fused_gru if rnn.mode == "GRU" else ops.ds2_fused_lstm
    suffixes = ["", "_reverse"][:rnn.num_directions]
    for layer in range(rnn.num_layers):
        outputs = []
        for suffix in suffixes:
            def weight(name):
                return getattr(rnn, f"{name}_l{layer}{suffix}")
            gates_x = paddle.matmul(x, weight("weight_ih"), transpose_y=True)  # [B, T, G*H]
            outputs.append(op(gates_x, weight("bias_ih"), weight("weight_hh"), weight("bias_hh"), lens,
                              suffix == "_reverse")[0])  # [B, T, H]
        x = outputs[0] if len(outputs) == 1 else paddle.concat(outputs, axis=-1)  # [B, T, H*dirs]
        if rnn.dropout and layer < rnn.num_layers - 1:
            x = nn.functional.dropout(x, rnn.dropout, training=rnn.training)
    return x

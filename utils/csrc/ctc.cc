// The CTC loss and its gradient for training on the CPU, as a Paddle custom operator
// (utils/cpu_kernels.py builds and calls it).
//
// Paddle's CPU ctc_loss (warp-ctc) takes 13.7 ms forward and backward on the demo's batch
// ([16, 150, 29] logits, 40 labels a row; README, "Benchmarks") on one thread, and its cost grows
// with frames x labels: 53 ms at [16, 300, 29] with 80 labels. Here each utterance is one job for
// an OpenMP thread, and the recursions run over the extended label sequence in log space without
// branches, so that the compiler vectorizes their exp and log.
//
// For one utterance with T frames, log-probabilities lp[t][k] = log_softmax(logits[t])[k] and the
// extended labels ext[0..S) = (blank, l1, blank, l2, ..., blank), S = 2L + 1:
//   alpha[t][s] = lse(alpha[t-1][s], alpha[t-1][s-1], alpha[t-1][s-2] if skip[s]) + lp[t][ext[s]]
//   beta[t][s]  = lse(beta[t+1][s], beta[t+1][s+1], beta[t+1][s+2] if skip[s+2]) + lp[t][ext[s]]
//   skip[s]: ext[s] is a label unlike ext[s-2];  log p = lse(alpha[T-1][S-1], alpha[T-1][S-2])
//   loss = -log p;  d loss / d logits[t][k] = softmax[t][k] - sum over s with ext[s] = k of
//   exp(alpha[t][s] + beta[t][s] - lp[t][ext[s]] - log p)
// alpha is kept for every frame, beta for two: the gradient of frame t is made on the way back.
// The gradient is computed in the forward pass (as warp-ctc does) and scaled by the loss's
// gradient in the backward pass.
//
// An utterance with fewer frames than its labels need (L plus one per repeated neighbour) gets
// loss 0 and no gradient, as Paddle's warp-ctc gives it, so that both kernels train alike.
// Compiled with -ffast-math: "impossible" is kLogZero, a finite number, never an infinity.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "paddle/extension.h"

namespace {

constexpr float kLogZero = -1e30f;        // log 0; sums of a few stay far inside float's range
constexpr float kImpossible = -1e29f;     // at or below this, a log-probability is 0

struct Utterance {
  int frames, labels;
};

// exp(x) for x <= 0, x bounded first: differences of kLogZero reach -2e30, where -ffast-math
// promises nothing, and exp(-100) is 0 to float anyway
inline float ExpOfNegative(float x) { return std::exp(std::max(x, -100.0f)); }

// log(exp(a) + exp(b) + exp(c)) without branches; kLogZero terms add nothing
inline float LogSumExp3(float a, float b, float c) {
  const float m = std::max(a, std::max(b, c));
  return m + std::log(ExpOfNegative(a - m) + ExpOfNegative(b - m) + ExpOfNegative(c - m));
}

// Frames the labels need at least: one each, and a blank between equal neighbours.
int FramesNeeded(const int* label, int count) {
  int needed = count;
  for (int i = 1; i < count; ++i) needed += label[i] == label[i - 1];
  return needed;
}

// One utterance: turns its rows of log_softmax(logits) [frames, vocab] into the rows of the loss's
// gradient and returns the loss. alpha: scratch, resized to frames x S.
float UtteranceLossAndGradient(float* grad, int frames, int vocab, const int* label, int count, int blank,
                               std::vector<float>& alpha) {
  const int states = 2 * count + 1;
  std::vector<int> ext(states);
  for (int s = 0; s < states; ++s) ext[s] = s % 2 ? label[s / 2] : blank;
  // 0 where a path may skip the blank between two different labels, kLogZero where not
  std::vector<float> skip_from_below(states, kLogZero), skip_from_above(states, kLogZero);
  for (int s = 1; s < states; s += 2) {
    if (s >= 2 && ext[s] != ext[s - 2]) skip_from_below[s] = 0.0f;
    if (s + 2 < states && ext[s] != ext[s + 2]) skip_from_above[s] = 0.0f;
  }
  std::vector<float> emit(states), occupancy(states);
  std::vector<float> next(states + 2, kLogZero), cur(states + 2, kLogZero);  // beta[t+1], beta[t]; 2 past the end
  alpha.assign(static_cast<size_t>(frames) * states, kLogZero);
  float* a = alpha.data();
  const float* lp = grad;
  a[0] = lp[blank];
  if (states > 1) a[1] = lp[ext[1]];
  for (int t = 1; t < frames; ++t) {
    const float* prev = a + static_cast<size_t>(t - 1) * states;
    float* row = a + static_cast<size_t>(t) * states;
    const float* lpt = lp + static_cast<size_t>(t) * vocab;
    for (int s = 0; s < states; ++s) emit[s] = lpt[ext[s]];
    row[0] = prev[0] + emit[0];
    if (states > 1) row[1] = LogSumExp3(prev[1], prev[0], kLogZero) + emit[1];
#pragma omp simd
    for (int s = 2; s < states; ++s) {
      row[s] = LogSumExp3(prev[s], prev[s - 1], prev[s - 2] + skip_from_below[s]) + emit[s];
    }
  }
  const float* last = a + static_cast<size_t>(frames - 1) * states;
  const float log_p = states > 1 ? LogSumExp3(last[states - 1], last[states - 2], kLogZero) : last[0];
  if (log_p <= kImpossible) {
    std::fill(grad, grad + static_cast<size_t>(frames) * vocab, 0.0f);
    return 0.0f;
  }
  // beta and the gradient, frame by frame from the last
  for (int t = frames - 1; t >= 0; --t) {
    float* g = grad + static_cast<size_t>(t) * vocab;
    for (int s = 0; s < states; ++s) emit[s] = g[ext[s]];
    if (t == frames - 1) {
      for (int s = 0; s < states; ++s) cur[s] = s >= states - 2 ? emit[s] : kLogZero;
    } else {
#pragma omp simd
      for (int s = 0; s < states; ++s) {
        cur[s] = LogSumExp3(next[s], next[s + 1], next[s + 2] + skip_from_above[s]) + emit[s];
      }
    }
    const float* row = a + static_cast<size_t>(t) * states;
#pragma omp simd
    for (int s = 0; s < states; ++s) occupancy[s] = ExpOfNegative(row[s] + cur[s] - emit[s] - log_p);
#pragma omp simd
    for (int k = 0; k < vocab; ++k) g[k] = ExpOfNegative(g[k]);  // softmax: lp <= 0
    for (int s = 0; s < states; ++s) g[ext[s]] -= occupancy[s];
    std::swap(cur, next);
  }
  return -log_p;
}

// logits [B, T, V], logit_lens [B], labels [B, L], label_lens [B] -> loss [B], grad [B, T, V]
std::vector<paddle::Tensor> CtcForward(const paddle::Tensor& logits, const paddle::Tensor& logit_lens,
                                       const paddle::Tensor& labels, const paddle::Tensor& label_lens, int blank) {
  PD_CHECK(logits.is_cpu() && logit_lens.is_cpu() && labels.is_cpu() && label_lens.is_cpu(),
           "ctc_loss runs on the CPU only");
  PD_CHECK(logits.dtype() == paddle::DataType::FLOAT32, "ctc_loss takes float32 logits");
  PD_CHECK(logit_lens.dtype() == paddle::DataType::INT32 && labels.dtype() == paddle::DataType::INT32 &&
               label_lens.dtype() == paddle::DataType::INT32,
           "ctc_loss takes int32 labels and lengths");
  const auto shape = logits.shape();
  PD_CHECK(shape.size() == 3, "ctc_loss: logits must be [B, T, V]");
  const int batch = static_cast<int>(shape[0]), steps = static_cast<int>(shape[1]), vocab = static_cast<int>(shape[2]);
  PD_CHECK(labels.shape().size() == 2 && labels.shape()[0] == batch, "ctc_loss: labels must be [B, L]");
  PD_CHECK(logit_lens.numel() == batch && label_lens.numel() == batch, "ctc_loss: one length per batch row");
  PD_CHECK(blank >= 0 && blank < vocab, "ctc_loss: blank ", blank, " is not a token of the ", vocab);
  const int width = static_cast<int>(labels.shape()[1]);
  const float* x = logits.data<float>();
  const int* frame_count = logit_lens.data<int>();
  const int* label_data = labels.data<int>();
  const int* label_count = label_lens.data<int>();
  std::vector<Utterance> rows(batch);
  for (int b = 0; b < batch; ++b) {
    rows[b] = {std::clamp(frame_count[b], 0, steps), std::clamp(label_count[b], 0, width)};
    for (int i = 0; i < rows[b].labels; ++i) {
      const int token = label_data[static_cast<size_t>(b) * width + i];
      PD_CHECK(token >= 0 && token < vocab && token != blank, "ctc_loss: row ", b, " has label ", token,
               ", not a token of the ", vocab, " other than blank ", blank);
    }
  }
  auto loss = paddle::empty({batch}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto grad = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* loss_data = loss.data<float>();
  float* grad_data = grad.data<float>();
  const int threads = std::max(1, std::min(omp_get_max_threads(), batch));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> alpha;
    // rows dealt out in turn: a batch's rows have similar lengths (SortaGrad, duration buckets).
    // Static: a dynamic schedule, which calls into the OpenMP runtime (here Paddle's libiomp5
    // serving GCC's GOMP entry points), gave wrong losses that changed from run to run.
#pragma omp for schedule(static, 1)
    for (int b = 0; b < batch; ++b) {
      const size_t offset = static_cast<size_t>(b) * steps * vocab;
      float* g = grad_data + offset;
      const int frames = rows[b].frames;
      const int* label = label_data + static_cast<size_t>(b) * width;
      std::fill(g + static_cast<size_t>(frames) * vocab, g + static_cast<size_t>(steps) * vocab, 0.0f);
      if (frames == 0 || frames < FramesNeeded(label, rows[b].labels)) {
        std::fill(g, g + static_cast<size_t>(frames) * vocab, 0.0f);
        loss_data[b] = 0.0f;
        continue;
      }
      for (int t = 0; t < frames; ++t) {  // log_softmax into the gradient's rows
        const float* in = x + offset + static_cast<size_t>(t) * vocab;
        float* out = g + static_cast<size_t>(t) * vocab;
        float m = in[0];
        for (int k = 1; k < vocab; ++k) m = std::max(m, in[k]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int k = 0; k < vocab; ++k) sum += ExpOfNegative(in[k] - m);
        const float shift = m + std::log(sum);
#pragma omp simd
        for (int k = 0; k < vocab; ++k) out[k] = in[k] - shift;
      }
      loss_data[b] = UtteranceLossAndGradient(g, frames, vocab, label, rows[b].labels, blank, alpha);
    }
  }
  return {loss, grad};
}

// d logits[b] = grad[b] * d loss[b]
std::vector<paddle::Tensor> CtcBackward(const paddle::Tensor& grad, const paddle::Tensor& loss_grad) {
  const auto shape = grad.shape();
  const int64_t batch = shape[0], row = shape[1] * shape[2];
  PD_CHECK(loss_grad.numel() == batch, "ctc_loss backward: one loss gradient per batch row");
  auto out = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* g = grad.data<float>();
  const float* scale = loss_grad.data<float>();
  float* o = out.data<float>();
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), batch)));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < batch; ++b) {
    const float factor = scale[b];
#pragma omp simd
    for (int64_t i = 0; i < row; ++i) o[b * row + i] = g[b * row + i] * factor;
  }
  return {out};
}

std::vector<std::vector<int64_t>> CtcShapes(const std::vector<int64_t>& logits, const std::vector<int64_t>& logit_lens,
                                            const std::vector<int64_t>& labels, const std::vector<int64_t>& label_lens,
                                            int blank) {
  return {{logits[0]}, logits};
}

std::vector<paddle::DataType> CtcTypes(const paddle::DataType& logits, const paddle::DataType& logit_lens,
                                       const paddle::DataType& labels, const paddle::DataType& label_lens) {
  return {logits, logits};
}

}  // namespace

PD_BUILD_OP(ds2_ctc_loss)
    .Inputs({"Logits", "LogitLens", "Labels", "LabelLens"})
    .Outputs({"Loss", "Grad"})
    .Attrs({"blank: int"})
    .SetKernelFn(PD_KERNEL(CtcForward))
    .SetInferShapeFn(PD_INFER_SHAPE(CtcShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(CtcTypes));

PD_BUILD_GRAD_OP(ds2_ctc_loss)
    .Inputs({"Grad", paddle::Grad("Loss")})
    .Outputs({paddle::Grad("Logits")})
    .SetKernelFn(PD_KERNEL(CtcBackward));

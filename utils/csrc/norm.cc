// Normalizations for training on the CPU, as Paddle custom operators (utils/cpu_kernels.py builds
// and calls them): the layer norm after the recurrent layers, each convolution block's batch
// norm with its clip and padding mask, and the features' mean/std normalization.
//
// Layer norm: Paddle's CPU layer_norm backward takes 8 ms on the demo's [16, 150, 320] (README,
// "Benchmarks"); here each row is one pass forward and two backward, rows split among the
// OpenMP threads.
//   y = (x - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + epsilon)
//   dx = rstd * (dy*gamma - mean(dy*gamma) - xhat * mean(dy*gamma * xhat)),  xhat = (x - mean) * rstd
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "paddle/extension.h"

namespace {

using ds2::ThreadSums;

struct Rows {
  int64_t count, width;
};

Rows CheckInputs(const paddle::Tensor& x, const paddle::Tensor& gamma, const paddle::Tensor& beta) {
  PD_CHECK(x.is_cpu() && gamma.is_cpu() && beta.is_cpu(), "fused_layer_norm runs on the CPU only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && gamma.dtype() == paddle::DataType::FLOAT32 &&
               beta.dtype() == paddle::DataType::FLOAT32,
           "fused_layer_norm takes float32");
  const auto shape = x.shape();
  PD_CHECK(!shape.empty(), "fused_layer_norm: x has no axes");
  const int64_t width = shape.back();
  PD_CHECK(gamma.numel() == width && beta.numel() == width, "fused_layer_norm: gamma and beta must have ", width,
           " values, the size of x's last axis");
  return {width == 0 ? 0 : x.numel() / width, width};
}

int Threads(int64_t rows) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), rows / 64)));
}

std::vector<paddle::Tensor> NormForward(const paddle::Tensor& x, const paddle::Tensor& gamma,
                                        const paddle::Tensor& beta, float epsilon) {
  const Rows r = CheckInputs(x, gamma, beta);
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto mean = paddle::empty({r.count}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto rstd = paddle::empty({r.count}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* g = gamma.data<float>();
  const float* bt = beta.data<float>();
  float* yd = y.data<float>();
  float* md = mean.data<float>();
  float* rd = rstd.data<float>();
  const int64_t width = r.width;
#pragma omp parallel for schedule(static) num_threads(Threads(r.count))
  for (int64_t n = 0; n < r.count; ++n) {
    const float* row = xd + n * width;
    float sum = 0.0f;
    for (int64_t j = 0; j < width; ++j) sum += row[j];
    const float mu = sum / width;
    float squares = 0.0f;
    for (int64_t j = 0; j < width; ++j) squares += (row[j] - mu) * (row[j] - mu);
    const float inv = 1.0f / std::sqrt(squares / width + epsilon);
    float* out = yd + n * width;
    for (int64_t j = 0; j < width; ++j) out[j] = (row[j] - mu) * inv * g[j] + bt[j];
    md[n] = mu;
    rd[n] = inv;
  }
  return {y, mean, rstd};
}

std::vector<paddle::Tensor> NormBackward(const paddle::Tensor& x, const paddle::Tensor& gamma,
                                         const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                         const paddle::Tensor& d_y, float epsilon) {
  const int64_t width = x.shape().back(), count = width == 0 ? 0 : x.numel() / width;
  auto d_x = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto d_gamma = paddle::empty({width}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto d_beta = paddle::empty({width}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* g = gamma.data<float>();
  const float* md = mean.data<float>();
  const float* rd = rstd.data<float>();
  const float* dyd = d_y.data<float>();
  float* dxd = d_x.data<float>();
  const int threads = Threads(count);
  ThreadSums gamma_sums(threads, width), beta_sums(threads, width);
#pragma omp parallel num_threads(threads)
  {
    float* part_gamma = gamma_sums.Part(omp_get_thread_num());
    float* part_beta = beta_sums.Part(omp_get_thread_num());
#pragma omp for schedule(static)
    for (int64_t n = 0; n < count; ++n) {
      const float* row = xd + n * width;
      const float* dy = dyd + n * width;
      const float mu = md[n], inv = rd[n];
      float mean_dyg = 0.0f, mean_dyg_xhat = 0.0f;
      for (int64_t j = 0; j < width; ++j) {
        const float xhat = (row[j] - mu) * inv;
        const float dyg = dy[j] * g[j];
        mean_dyg += dyg;
        mean_dyg_xhat += dyg * xhat;
        part_gamma[j] += dy[j] * xhat;
        part_beta[j] += dy[j];
      }
      mean_dyg /= width;
      mean_dyg_xhat /= width;
      float* out = dxd + n * width;
      for (int64_t j = 0; j < width; ++j) {
        const float xhat = (row[j] - mu) * inv;
        out[j] = inv * (dy[j] * g[j] - mean_dyg - xhat * mean_dyg_xhat);
      }
    }
  }
  gamma_sums.Write(d_gamma.data<float>());
  beta_sums.Write(d_beta.data<float>());
  return {d_x, d_gamma, d_beta};
}

std::vector<std::vector<int64_t>> NormShapes(const std::vector<int64_t>& x, const std::vector<int64_t>& gamma,
                                             const std::vector<int64_t>& beta, float epsilon) {
  int64_t rows = 1;
  for (size_t axis = 0; axis + 1 < x.size(); ++axis) rows *= x[axis];
  return {x, {rows}, {rows}};
}

std::vector<paddle::DataType> NormTypes(const paddle::DataType& x, const paddle::DataType& gamma,
                                        const paddle::DataType& beta) {
  return {x, x, x};
}

// ------------------------------------------------------------------ batch norm + clip + mask
// The end of each convolution block in training: y = clip(gamma * xhat + beta, clip_min, clip_max) * mask,
// xhat = (x - mean) * rstd with the batch's statistics per channel over [B, H, W] (biased
// variance, as Paddle's BatchNorm2D), mask 0 on frames w >= lens[b] when masking. Paddle runs
// these as five ops (batch_norm, hardtanh, expand, multiply, and their backward: about 24 ms of
// the demo step); here one pass for the statistics and one for the output, channels split
// among the OpenMP threads. The running statistics are updated by the caller from Mean/Var.

struct Image {
  int64_t batch, channels, height, width;
};

Image CheckImage(const paddle::Tensor& x, const paddle::Tensor& gamma, const paddle::Tensor& beta,
                 const paddle::Tensor& lens) {
  PD_CHECK(x.is_cpu() && gamma.is_cpu() && beta.is_cpu() && lens.is_cpu(), "fused_batch_norm runs on the CPU only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && gamma.dtype() == paddle::DataType::FLOAT32 &&
               beta.dtype() == paddle::DataType::FLOAT32 && lens.dtype() == paddle::DataType::INT32,
           "fused_batch_norm takes float32 x, gamma, beta and int32 lens");
  const auto shape = x.shape();
  PD_CHECK(shape.size() == 4, "fused_batch_norm takes x [B, C, H, W]");
  PD_CHECK(gamma.numel() == shape[1] && beta.numel() == shape[1], "fused_batch_norm: one gamma and beta a channel");
  PD_CHECK(lens.numel() == shape[0], "fused_batch_norm: one length a batch row");
  return {shape[0], shape[1], shape[2], shape[3]};
}

// Frames [0, kept) of row b stay, the rest is masked to 0.
inline int64_t KeptFrames(const int* lens, int64_t b, int64_t width, bool mask) {
  return mask ? std::min<int64_t>(std::max(lens[b], 0), width) : width;
}

int ChannelThreads(const Image& im) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), im.channels)));
}

std::vector<paddle::Tensor> BatchNormClipForward(const paddle::Tensor& x, const paddle::Tensor& gamma,
                                                 const paddle::Tensor& beta, const paddle::Tensor& lens,
                                                 float epsilon, float clip_min, float clip_max, bool mask) {
  const Image im = CheckImage(x, gamma, beta, lens);
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto mean = paddle::empty({im.channels}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto var = paddle::empty({im.channels}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* g = gamma.data<float>();
  const float* bt = beta.data<float>();
  const int* ld = lens.data<int>();
  float* yd = y.data<float>();
  float* md = mean.data<float>();
  float* vd = var.data<float>();
  const int64_t plane = im.height * im.width, count = im.batch * plane;
#pragma omp parallel for schedule(static) num_threads(ChannelThreads(im))
  for (int64_t c = 0; c < im.channels; ++c) {
    double sum = 0.0, squares = 0.0;
    for (int64_t b = 0; b < im.batch; ++b) {
      const float* in = xd + (b * im.channels + c) * plane;
      float part = 0.0f, part_squares = 0.0f;
      for (int64_t k = 0; k < plane; ++k) {
        part += in[k];
        part_squares += in[k] * in[k];
      }
      sum += part;
      squares += part_squares;
    }
    const double mu = sum / count, variance = std::max(0.0, squares / count - mu * mu);
    const float inv = static_cast<float>(1.0 / std::sqrt(variance + epsilon));
    const float scale = g[c] * inv, shift = bt[c] - static_cast<float>(mu) * scale;
    for (int64_t b = 0; b < im.batch; ++b) {
      const float* in = xd + (b * im.channels + c) * plane;
      float* out = yd + (b * im.channels + c) * plane;
      const int64_t kept = KeptFrames(ld, b, im.width, mask);
      for (int64_t h = 0; h < im.height; ++h) {
        const float* row = in + h * im.width;
        float* dst = out + h * im.width;
        for (int64_t w = 0; w < kept; ++w) dst[w] = std::min(std::max(row[w] * scale + shift, clip_min), clip_max);
        std::fill(dst + kept, dst + im.width, 0.0f);
      }
    }
    md[c] = static_cast<float>(mu);
    vd[c] = static_cast<float>(variance);
  }
  return {y, mean, var};
}

std::vector<paddle::Tensor> BatchNormClipBackward(const paddle::Tensor& x, const paddle::Tensor& gamma,
                                                  const paddle::Tensor& beta, const paddle::Tensor& lens,
                                                  const paddle::Tensor& mean, const paddle::Tensor& var,
                                                  const paddle::Tensor& d_y, float epsilon, float clip_min,
                                                  float clip_max, bool mask) {
  const Image im = CheckImage(x, gamma, beta, lens);
  auto d_x = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto d_gamma = paddle::empty({im.channels}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto d_beta = paddle::empty({im.channels}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* g = gamma.data<float>();
  const float* bt = beta.data<float>();
  const int* ld = lens.data<int>();
  const float* md = mean.data<float>();
  const float* vd = var.data<float>();
  const float* dyd = d_y.data<float>();
  float* dxd = d_x.data<float>();
  float* dgd = d_gamma.data<float>();
  float* dbd = d_beta.data<float>();
  const int64_t plane = im.height * im.width, count = im.batch * plane;
#pragma omp parallel for schedule(static) num_threads(ChannelThreads(im))
  for (int64_t c = 0; c < im.channels; ++c) {
    const float mu = md[c], inv = 1.0f / std::sqrt(vd[c] + epsilon);
    const float scale = g[c] * inv, shift = bt[c] - mu * scale;
    // pass 1: g = dy where the clip and the mask let it through; sums of g and g * xhat
    double sum_g = 0.0, sum_g_xhat = 0.0;
    for (int64_t b = 0; b < im.batch; ++b) {
      const float* in = xd + (b * im.channels + c) * plane;
      const float* dy = dyd + (b * im.channels + c) * plane;
      const int64_t kept = KeptFrames(ld, b, im.width, mask);
      float part_g = 0.0f, part_g_xhat = 0.0f;
      for (int64_t h = 0; h < im.height; ++h) {
        for (int64_t w = 0; w < kept; ++w) {
          const int64_t k = h * im.width + w;
          const float pre = in[k] * scale + shift;
          const float pass = (pre > clip_min && pre < clip_max) ? dy[k] : 0.0f;
          part_g += pass;
          part_g_xhat += pass * (in[k] - mu) * inv;
        }
      }
      sum_g += part_g;
      sum_g_xhat += part_g_xhat;
    }
    const float mean_g = static_cast<float>(sum_g / count), mean_g_xhat = static_cast<float>(sum_g_xhat / count);
    // pass 2: dx = gamma * rstd * (g - mean(g) - xhat * mean(g * xhat))
    for (int64_t b = 0; b < im.batch; ++b) {
      const float* in = xd + (b * im.channels + c) * plane;
      const float* dy = dyd + (b * im.channels + c) * plane;
      float* out = dxd + (b * im.channels + c) * plane;
      const int64_t kept = KeptFrames(ld, b, im.width, mask);
      for (int64_t h = 0; h < im.height; ++h) {
        for (int64_t w = 0; w < im.width; ++w) {
          const int64_t k = h * im.width + w;
          const float pre = in[k] * scale + shift;
          const float pass = (w < kept && pre > clip_min && pre < clip_max) ? dy[k] : 0.0f;
          const float xhat = (in[k] - mu) * inv;
          out[k] = scale * (pass - mean_g - xhat * mean_g_xhat);
        }
      }
    }
    dgd[c] = static_cast<float>(sum_g_xhat);
    dbd[c] = static_cast<float>(sum_g);
  }
  return {d_x, d_gamma, d_beta};
}

std::vector<std::vector<int64_t>> BatchNormShapes(const std::vector<int64_t>& x, const std::vector<int64_t>& gamma,
                                                  const std::vector<int64_t>& beta, const std::vector<int64_t>& lens,
                                                  float epsilon, float clip_min, float clip_max, bool mask) {
  return {x, {x[1]}, {x[1]}};
}

std::vector<paddle::DataType> BatchNormTypes(const paddle::DataType& x, const paddle::DataType& gamma,
                                             const paddle::DataType& beta, const paddle::DataType& lens) {
  return {x, x, x};
}

// ------------------------------------------------------------------------- feature normalizer
// The model's first step: feats [B, T, D] -> x [B, 1, D, T] = (feats - mean) * istd on frames
// t < lens[b], 0 on the padding, transposed for the convolutions. Paddle's five ops for it
// (subtract, multiply, mask, multiply, transpose) take 3.1 ms on [16, 300, 80], this op 0.55.
// No gradient: the features and the normalizer's statistics are constants.
constexpr int64_t kFrameBlock = 64;  // frames transposed at a time: [64, D] in, [D, 64] out, in L1

std::vector<paddle::Tensor> NormalizeFeatures(const paddle::Tensor& feats, const paddle::Tensor& mean,
                                              const paddle::Tensor& istd, const paddle::Tensor& lens) {
  PD_CHECK(feats.is_cpu() && mean.is_cpu() && istd.is_cpu() && lens.is_cpu(), "normalize_features runs on the CPU");
  PD_CHECK(feats.dtype() == paddle::DataType::FLOAT32 && mean.dtype() == paddle::DataType::FLOAT32 &&
               istd.dtype() == paddle::DataType::FLOAT32 && lens.dtype() == paddle::DataType::INT32,
           "normalize_features takes float32 features and statistics and int32 lengths");
  const auto shape = feats.shape();
  PD_CHECK(shape.size() == 3, "normalize_features: feats must be [B, T, D]");
  const int64_t batch = shape[0], steps = shape[1], dim = shape[2];
  PD_CHECK(mean.numel() == dim && istd.numel() == dim, "normalize_features: mean and istd must have ", dim, " values");
  PD_CHECK(lens.numel() == batch, "normalize_features: lens must have one value per batch row");
  auto out = paddle::empty({batch, 1, dim, steps}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* in = feats.data<float>();
  const float* mu = mean.data<float>();
  const float* scale = istd.data<float>();
  const int* len = lens.data<int>();
  float* x = out.data<float>();
  const int64_t blocks = (steps + kFrameBlock - 1) / kFrameBlock;  // jobs: (row, block of frames)
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), batch * blocks)));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t job = 0; job < batch * blocks; ++job) {
    const int64_t b = job / blocks, t0 = job % blocks * kFrameBlock, t1 = std::min(steps, t0 + kFrameBlock);
    const int64_t real = std::clamp<int64_t>(len[b], t0, t1);  // frames [t0, real) are real
    const float* rows = in + b * steps * dim;
    float* columns = x + b * dim * steps;
    for (int64_t d = 0; d < dim; ++d) {
      float* column = columns + d * steps;
      for (int64_t t = t0; t < real; ++t) column[t] = (rows[t * dim + d] - mu[d]) * scale[d];
      std::fill(column + real, column + t1, 0.0f);
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> NormalizeShapes(const std::vector<int64_t>& feats, const std::vector<int64_t>& mean,
                                                  const std::vector<int64_t>& istd, const std::vector<int64_t>& lens) {
  return {{feats[0], 1, feats[2], feats[1]}};
}

std::vector<paddle::DataType> NormalizeTypes(const paddle::DataType& feats, const paddle::DataType& mean,
                                             const paddle::DataType& istd, const paddle::DataType& lens) {
  return {feats};
}

}  // namespace

PD_BUILD_OP(ds2_normalize_features)
    .Inputs({"Feats", "Mean", "Istd", "Lens"})
    .Outputs({"X"})
    .SetKernelFn(PD_KERNEL(NormalizeFeatures))
    .SetInferShapeFn(PD_INFER_SHAPE(NormalizeShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(NormalizeTypes));

PD_BUILD_OP(ds2_fused_batch_norm_clip)
    .Inputs({"X", "Gamma", "Beta", "Lens"})
    .Outputs({"Y", "Mean", "Var"})
    .Attrs({"epsilon: float", "clip_min: float", "clip_max: float", "mask: bool"})
    .SetKernelFn(PD_KERNEL(BatchNormClipForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BatchNormShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(BatchNormTypes));

PD_BUILD_GRAD_OP(ds2_fused_batch_norm_clip)
    .Inputs({"X", "Gamma", "Beta", "Lens", "Mean", "Var", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Gamma"), paddle::Grad("Beta")})
    .Attrs({"epsilon: float", "clip_min: float", "clip_max: float", "mask: bool"})
    .SetKernelFn(PD_KERNEL(BatchNormClipBackward));

PD_BUILD_OP(ds2_fused_layer_norm)
    .Inputs({"X", "Gamma", "Beta"})
    .Outputs({"Y", "Mean", "Rstd"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(NormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(NormShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(NormTypes));

PD_BUILD_GRAD_OP(ds2_fused_layer_norm)
    .Inputs({"X", "Gamma", "Mean", "Rstd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Gamma"), paddle::Grad("Beta")})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(NormBackward));

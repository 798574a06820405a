// Layer normalization over the last axis for training on the CPU, as a Paddle custom operator
// (utils/cpu_kernels.py builds and calls it).
//
// Paddle's CPU layer_norm backward takes 8 ms on the demo's [16, 150, 320] (README,
// "Benchmarks"); here each row is one pass forward and two backward, rows split among the
// OpenMP threads.
//   y = (x - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + epsilon)
//   dx = rstd * (dy*gamma - mean(dy*gamma) - xhat * mean(dy*gamma * xhat)),  xhat = (x - mean) * rstd
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "paddle/extension.h"

namespace {

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
  std::vector<float> parts(2 * threads * width, 0.0f);  // per thread: d_gamma, d_beta
#pragma omp parallel num_threads(threads)
  {
    float* part_gamma = parts.data() + 2 * omp_get_thread_num() * width;
    float* part_beta = part_gamma + width;
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
  float* dg = d_gamma.data<float>();
  float* db = d_beta.data<float>();
  std::fill(dg, dg + width, 0.0f);
  std::fill(db, db + width, 0.0f);
  for (int t = 0; t < threads; ++t) {
    const float* part = parts.data() + 2 * t * width;
    for (int64_t j = 0; j < width; ++j) {
      dg[j] += part[j];
      db[j] += part[width + j];
    }
  }
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

}  // namespace

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

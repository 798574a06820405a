// 2-D convolution (NCHW, no bias, no dilation or groups) for training on the CPU, and the last
// convolution's output turned into the recurrent layers' frame rows (at the end), as Paddle custom
// operators (utils/cpu_kernels.py builds and calls them).
//
// Paddle's CPU conv2d runs the demo's 32 -> 32 channel 3x3 convolution (0.88 GFLOP forward) in
// 16 ms forward and 60 ms forward + backward on [16, 32, 40, 150], unfolding each image on one
// thread; ours takes 5 and 20 (README, "Benchmarks"). Here each image is unfolded (im2col), in
// the forward pass a band of output rows at a time, into columns [C*kh*kw, rows * W'] and
// multiplied by the weight [O, C*kh*kw] with one MKL sgemm; the backward pass unfolds the whole
// image again, takes dW = dY col^T and, a group of input channels at a time, dcol = W^T dY, and
// folds dcol back onto the image (col2im). Images run in parallel on the OpenMP threads Paddle
// uses (OMP_NUM_THREADS).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "paddle/extension.h"

namespace {

using namespace ds2;  // NOLINT: the CBLAS constants and ThreadSums of common.h

struct ConvShape {
  int64_t batch, channels, height, width;   // input
  int64_t out_channels, kernel_h, kernel_w;  // weight
  int64_t stride_h, stride_w, pad_h, pad_w;
  int64_t out_h, out_w;
  int64_t col_rows() const { return channels * kernel_h * kernel_w; }
  int64_t col_cols() const { return out_h * out_w; }
};

ConvShape MakeShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w, const std::vector<int>& strides,
                    const std::vector<int>& paddings) {
  PD_CHECK(x.size() == 4 && w.size() == 4, "fused_conv2d takes x [B, C, H, W] and weight [O, C, kh, kw]");
  PD_CHECK(x[1] == w[1], "fused_conv2d: x has ", x[1], " channels, the weight ", w[1]);
  PD_CHECK(strides.size() == 2 && paddings.size() == 2, "fused_conv2d: strides and paddings are [h, w]");
  ConvShape s{x[0], x[1], x[2], x[3], w[0], w[2], w[3], strides[0], strides[1], paddings[0], paddings[1], 0, 0};
  s.out_h = (s.height + 2 * s.pad_h - s.kernel_h) / s.stride_h + 1;
  s.out_w = (s.width + 2 * s.pad_w - s.kernel_w) / s.stride_w + 1;
  PD_CHECK(s.out_h > 0 && s.out_w > 0, "fused_conv2d: the input is smaller than the kernel");
  return s;
}

// The output columns ow whose input column ow * stride - pad + j lies inside [0, width): [first, last).
struct Span {
  int64_t first, last;
};

Span InsideColumns(const ConvShape& s, int64_t j) {
  const int64_t offset = j - s.pad_w;  // iw = ow * stride_w + offset
  int64_t first = offset >= 0 ? 0 : (-offset + s.stride_w - 1) / s.stride_w;
  int64_t last = (s.width - 1 - offset) / s.stride_w + 1;  // first ow with iw >= width
  if (s.width - 1 - offset < 0) last = 0;
  first = std::min(first, s.out_w);
  last = std::max(first, std::min(last, s.out_w));
  return {first, last};
}

// With a column stride above 1 the input rows are split by column phase, phases[row][p][k] =
// in[row][k * stride + p] (each phase phase_len = ceil(W / stride) long), so that every kernel
// column of Unfold copies, and of Fold adds, one phase in order instead of with a stride.
int64_t PhaseLength(const ConvShape& s) { return (s.width + s.stride_w - 1) / s.stride_w; }

// Floats of the phase buffer for `rows` input rows.
int64_t PhaseFloats(const ConvShape& s, int64_t rows) { return rows * s.stride_w * PhaseLength(s); }

// phases [rows, stride, phase_len] <- in [rows, W]
void SplitPhases(const float* __restrict in, const ConvShape& s, int64_t rows, float* __restrict phases) {
  const int64_t stride = s.stride_w, phase_len = PhaseLength(s), width = s.width;
  for (int64_t r = 0; r < rows; ++r, in += width, phases += stride * phase_len) {
    if (stride == 2 && width % 2 == 0) {  // the common case, in a loop g++ vectorizes
      float* __restrict even = phases;
      float* __restrict odd = phases + phase_len;
      for (int64_t k = 0; k < width / 2; ++k) {
        even[k] = in[2 * k];
        odd[k] = in[2 * k + 1];
      }
      continue;
    }
    for (int64_t p = 0; p < stride; ++p) {
      for (int64_t k = 0; k * stride + p < width; ++k) phases[p * phase_len + k] = in[k * stride + p];
    }
  }
}

// out [rows, W] <- phases [rows, stride, phase_len] (the inverse of SplitPhases)
void MergePhases(const float* __restrict phases, const ConvShape& s, int64_t rows, float* __restrict out) {
  const int64_t stride = s.stride_w, phase_len = PhaseLength(s), width = s.width;
  for (int64_t r = 0; r < rows; ++r, out += width, phases += stride * phase_len) {
    if (stride == 2 && width % 2 == 0) {
      const float* __restrict even = phases;
      const float* __restrict odd = phases + phase_len;
      for (int64_t k = 0; k < width / 2; ++k) {
        out[2 * k] = even[k];
        out[2 * k + 1] = odd[k];
      }
      continue;
    }
    for (int64_t p = 0; p < stride; ++p) {
      for (int64_t k = 0; k * stride + p < width; ++k) out[k * stride + p] = phases[p * phase_len + k];
    }
  }
}

// The input rows [first, last) that output rows [oh0, oh1) read, clipped to the image.
Span InputRows(const ConvShape& s, int64_t oh0, int64_t oh1) {
  return {std::max<int64_t>(0, oh0 * s.stride_h - s.pad_h),
          std::min<int64_t>(s.height, (oh1 - 1) * s.stride_h - s.pad_h + s.kernel_h)};
}

// Where kernel column j reads input row `row` (of rows laid out [row, W], or split by phase):
// from[ow] = in[row][ow * stride + j - pad] for the ow of InsideColumns(s, j).
inline int64_t ColumnStart(const ConvShape& s, int64_t row, int64_t j) {
  const int64_t offset = j - s.pad_w, stride = s.stride_w;
  if (stride == 1) return row * s.width + offset;
  const int64_t phase = ((offset % stride) + stride) % stride;
  return (row * stride + phase) * PhaseLength(s) + (offset - phase) / stride;
}

// Output rows [oh0, oh1) of one image [C, H, W] as columns: col [C*kh*kw, (oh1 - oh0) * W'] (row
// stride ld); 0 where the kernel reads the padding. phases: PhaseFloats(s, H) floats of scratch.
void Unfold(const float* __restrict image, const ConvShape& s, int64_t oh0, int64_t oh1, float* __restrict col,
            int64_t ld, float* __restrict phases) {
  const Span input = InputRows(s, oh0, oh1);
  for (int64_t c = 0; c < s.channels; ++c) {
    const float* channel = image + c * s.height * s.width;
    const float* rows_in = channel + input.first * s.width;  // input row `input.first` is row 0 below
    if (s.stride_w > 1) {
      SplitPhases(rows_in, s, input.last - input.first, phases);
      rows_in = phases;
    }
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      float* rows = col + (c * s.kernel_h + i) * s.kernel_w * ld;  // the kernel_w rows of (c, i)
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i;
        float* base = rows + (oh - oh0) * s.out_w;
        if (ih < 0 || ih >= s.height) {
          for (int64_t j = 0; j < s.kernel_w; ++j) std::fill(base + j * ld, base + j * ld + s.out_w, 0.0f);
          continue;
        }
        for (int64_t j = 0; j < s.kernel_w; ++j) {
          float* out = base + j * ld;
          const Span inside = InsideColumns(s, j);
          std::fill(out, out + inside.first, 0.0f);
          if (inside.last > inside.first) {
            const float* from = rows_in + ColumnStart(s, ih - input.first, j);
            std::memcpy(out + inside.first, from + inside.first, sizeof(float) * (inside.last - inside.first));
          }
          std::fill(out + inside.last, out + s.out_w, 0.0f);
        }
      }
    }
  }
}

// The given channels of image [C, H, W] = their columns [channels * kh*kw, H'*W'] folded back (the
// adjoint of Unfold over all rows); phases: PhaseFloats(s, H) floats of scratch.
void Fold(const float* __restrict col, const ConvShape& s, Span channels, float* __restrict image,
          float* __restrict phases) {
  for (int64_t c = channels.first; c < channels.last; ++c) {
    float* channel = image + c * s.height * s.width;
    float* sums = s.stride_w > 1 ? phases : channel;
    std::fill(sums, sums + (s.stride_w > 1 ? PhaseFloats(s, s.height) : s.height * s.width), 0.0f);
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      for (int64_t j = 0; j < s.kernel_w; ++j) {
        const float* row = col + (((c - channels.first) * s.kernel_h + i) * s.kernel_w + j) * s.col_cols();
        const Span inside = InsideColumns(s, j);
        for (int64_t oh = 0; oh < s.out_h; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_h + i;
          if (ih < 0 || ih >= s.height) continue;
          const float* __restrict in = row + oh * s.out_w;
          float* __restrict out = sums + ColumnStart(s, ih, j);
          for (int64_t ow = inside.first; ow < inside.last; ++ow) out[ow] += in[ow];
        }
      }
    }
    if (s.stride_w > 1) MergePhases(phases, s, s.height, channel);
  }
}

// The forward pass unfolds a band of output rows at a time, the band's columns about this many
// bytes, so that they stay in the core's L2 cache between the unfold and the product (a whole
// image's columns: 3.4 MB for the demo's second convolution). Banding, with a row-by-row phase
// split then: forward 5.2 -> 4.3 ms on the demo's second convolution, 4.1-4.4 -> 3.3-3.5 on the
// peer config's; splitting once per channel since: 3.6 -> 3.0 on the peer config's.
constexpr int64_t kBandBytes = int64_t{512} << 10;

int64_t BandRows(const ConvShape& s) {
  return std::max<int64_t>(1, kBandBytes / (s.col_rows() * s.out_w * static_cast<int64_t>(sizeof(float))));
}

// The backward pass takes dcol this many bytes at a time (whole input channels of an image), so
// that it is folded while still in L2: 8.0 -> 7.9 ms on the peer config's second convolution. Taking
// the unfold and dW the same way was slower (8.5 ms: the dW products get thin).
constexpr int64_t kGroupBytes = int64_t{256} << 10;

int64_t GroupChannels(const ConvShape& s) {
  const int64_t channel_bytes = s.kernel_h * s.kernel_w * s.col_cols() * static_cast<int64_t>(sizeof(float));
  return std::min(s.channels, std::max<int64_t>(1, kGroupBytes / channel_bytes));
}

// Each thread takes whole images; above this many bytes of an image's columns (the reference
// config's 21x11 kernel over 32 channels of a 20 s clip: about 1.2 GB) one thread unfolds and MKL
// alone spreads the (then large) products over the cores.
constexpr int64_t kColumnBytesPerThreadMax = int64_t{256} << 20;

int Threads(const ConvShape& s) {
  if (s.col_rows() * s.col_cols() * static_cast<int64_t>(sizeof(float)) > kColumnBytesPerThreadMax) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), s.batch)));
}

std::vector<paddle::Tensor> ConvForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                        const std::vector<int>& strides, const std::vector<int>& paddings,
                                        bool input_grad) {
  PD_CHECK(x.is_cpu() && weight.is_cpu(), "fused_conv2d runs on the CPU only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && weight.dtype() == paddle::DataType::FLOAT32,
           "fused_conv2d takes float32");
  const ConvShape s = MakeShape(x.shape(), weight.shape(), strides, paddings);
  auto y = paddle::empty({s.batch, s.out_channels, s.out_h, s.out_w}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* wd = weight.data<float>();
  float* yd = y.data<float>();
  const int threads = Threads(s);
  const int64_t band = std::min(BandRows(s), s.out_h);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> col(s.col_rows() * band * s.out_w), phases(PhaseFloats(s, s.height));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t oh0 = 0; oh0 < s.out_h; oh0 += band) {
        const int64_t oh1 = std::min(s.out_h, oh0 + band), ld = (oh1 - oh0) * s.out_w;
        Unfold(xd + b * s.channels * s.height * s.width, s, oh0, oh1, col.data(), ld, phases.data());
        // y_b [O, band's columns] = W [O, C*kh*kw] x col [C*kh*kw, band's columns]
        cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, s.out_channels, ld, s.col_rows(), 1.0f, wd, s.col_rows(),
                    col.data(), ld, 0.0f, yd + b * s.out_channels * s.col_cols() + oh0 * s.out_w, s.col_cols());
      }
    }
  }
  return {y};
}

std::vector<paddle::Tensor> ConvBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                         const paddle::Tensor& d_y, const std::vector<int>& strides,
                                         const std::vector<int>& paddings, bool input_grad) {
  const ConvShape s = MakeShape(x.shape(), weight.shape(), strides, paddings);
  auto d_x = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto d_w = paddle::empty(weight.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  const float* wd = weight.data<float>();
  const float* dyd = d_y.data<float>();
  float* dxd = d_x.data<float>();
  const int64_t image = s.channels * s.height * s.width, weights = s.out_channels * s.col_rows();
  if (!input_grad) std::memset(dxd, 0, sizeof(float) * d_x.numel());  // x needs none (the features)
  const int threads = Threads(s);
  ThreadSums d_w_parts(threads, weights);  // one dW per thread, summed below
  const int64_t per_channel = s.kernel_h * s.kernel_w, group = GroupChannels(s);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> col(s.col_rows() * s.col_cols()), phases(PhaseFloats(s, s.height));
    std::vector<float> d_col(input_grad ? group * per_channel * s.col_cols() : 0);
    float* d_w_part = d_w_parts.Part(omp_get_thread_num());
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.batch; ++b) {
      const float* dy = dyd + b * s.out_channels * s.col_cols();
      Unfold(xd + b * image, s, 0, s.out_h, col.data(), s.col_cols(), phases.data());
      // dW [O, C*kh*kw] += dY_b [O, H'W'] x col^T
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, s.out_channels, s.col_rows(), s.col_cols(), 1.0f, dy,
                  s.col_cols(), col.data(), s.col_cols(), 1.0f, d_w_part, s.col_rows());
      if (!input_grad) continue;
      for (int64_t c0 = 0; c0 < s.channels; c0 += group) {
        const Span channels{c0, std::min(s.channels, c0 + group)};
        const int64_t rows = (channels.last - channels.first) * per_channel, first_row = c0 * per_channel;
        // dcol [the group's rows, H'W'] = W^T x dY_b, then folded onto dx_b's channels
        cblas_sgemm(kRowMajor, kTrans, kNoTrans, rows, s.col_cols(), s.out_channels, 1.0f, wd + first_row,
                    s.col_rows(), dy, s.col_cols(), 0.0f, d_col.data(), s.col_cols());
        Fold(d_col.data(), s, channels, dxd + b * image, phases.data());
      }
    }
  }
  d_w_parts.Write(d_w.data<float>());
  return {d_x, d_w};
}

std::vector<std::vector<int64_t>> ConvShapes(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                             const std::vector<int>& strides, const std::vector<int>& paddings,
                                             bool input_grad) {
  const ConvShape s = MakeShape(x, w, strides, paddings);
  return {{s.batch, s.out_channels, s.out_h, s.out_w}};
}

std::vector<paddle::DataType> ConvTypes(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }

// ------------------------------------------------------------------------- frame rows
// The last convolution block's output x [B, C, D, T] as the recurrent layers' input [B, T, C*D]:
// per image a [C*D, T] -> [T, C*D] transpose in kTile x kTile tiles, which stay in L1, images and
// bands of rows split among the threads; the backward pass transposes back. Paddle's transpose
// and its gradient (one thread, element by element) took 3.4 and 2.9 ms of the demo's step.
constexpr int64_t kTile = 32;

// in [batch][rows][cols] -> out [batch][cols][rows]
void BatchedTranspose(const float* in, float* out, int64_t batch, int64_t rows, int64_t cols) {
  const int64_t bands = (rows + kTile - 1) / kTile, jobs = batch * bands;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), jobs)));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t b = job / bands, r0 = job % bands * kTile, r1 = std::min(rows, r0 + kTile);
    const float* src = in + b * rows * cols;
    float* dst = out + b * rows * cols;
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {  // writes along dst's rows, reads down a tile's column
        for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

std::vector<paddle::Tensor> FrameRowsForward(const paddle::Tensor& x, int channels) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "frame_rows takes a float32 CPU tensor");
  const auto shape = x.shape();
  PD_CHECK(shape.size() == 4 && shape[1] == channels, "frame_rows takes x [B, ", channels, ", D, T]");
  const int64_t batch = shape[0], features = shape[1] * shape[2], steps = shape[3];
  auto out = paddle::empty({batch, steps, features}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  BatchedTranspose(x.data<float>(), out.data<float>(), batch, features, steps);
  return {out};
}

std::vector<paddle::Tensor> FrameRowsBackward(const paddle::Tensor& dy, int channels) {
  const auto shape = dy.shape();  // [B, T, C*D]
  const int64_t batch = shape[0], steps = shape[1], features = shape[2];
  auto dx = paddle::empty({batch, channels, features / channels, steps}, paddle::DataType::FLOAT32,
                          paddle::CPUPlace());
  BatchedTranspose(dy.data<float>(), dx.data<float>(), batch, steps, features);
  return {dx};
}

std::vector<std::vector<int64_t>> FrameRowsShapes(const std::vector<int64_t>& x, int channels) {
  return {{x[0], x[3], x[1] * x[2]}};
}

std::vector<paddle::DataType> FrameRowsTypes(const paddle::DataType& x) { return {x}; }

}  // namespace

PD_BUILD_OP(ds2_fused_conv2d)
    .Inputs({"X", "Weight"})
    .Outputs({"Out"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "input_grad: bool"})
    .SetKernelFn(PD_KERNEL(ConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvTypes));

PD_BUILD_GRAD_OP(ds2_fused_conv2d)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "input_grad: bool"})
    .SetKernelFn(PD_KERNEL(ConvBackward));

PD_BUILD_OP(ds2_frame_rows)
    .Inputs({"X"})
    .Outputs({"Y"})
    .Attrs({"channels: int"})
    .SetKernelFn(PD_KERNEL(FrameRowsForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FrameRowsShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(FrameRowsTypes));

PD_BUILD_GRAD_OP(ds2_frame_rows)
    .Inputs({paddle::Grad("Y")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"channels: int"})
    .SetKernelFn(PD_KERNEL(FrameRowsBackward));

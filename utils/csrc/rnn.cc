// Frame-by-frame recurrence of GRU and LSTM layers for training on the CPU, as Paddle custom
// operators (utils/cpu_kernels.py builds and calls them).
//
// Paddle's own CPU RNN kernel spends about 130 us a frame and layer around its matrix products
// (README, "Benchmarks"). Here each frame costs one sgemm through the MKL that Paddle ships
// (h_prev [B, H] x W_hh^T [H, G*H]) plus one pass over the gates; the weight gradient is one
// large sgemm over all frames after the backward loop.
//
// Layout: batch-major, as the model's tensors are (no transposes). gates_x [B, T, G*H] holds
// x W_ih^T, computed outside with Paddle's matmul (autograd takes its gradient from there); the
// biases b_ih and b_hh [G*H] are added here (a broadcast add's backward costs Paddle 8 ms a layer);
// lens [B] int32; out [B, T, H] is 0 at t >= lens[b].
// Gate order is Paddle's: GRU [r, z, c], LSTM [i, f, g, o]. reverse runs each row from
// lens[b] - 1 down to 0, as the reverse direction of a bidirectional layer does.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.h"
#include "paddle/extension.h"

namespace {

using namespace ds2;  // NOLINT: the CBLAS constants and ThreadSums of common.h

// W_hh packed once for the frame-by-frame products C = A [rows, k] x op(W) [k, n], rows <= max_rows.
// On 2 cores [16, 320] x [320, 960] runs at about 255 GFLOP/s packed against 150 through plain
// sgemm (forward) and about 240 against 190 (backward).
class PackedWeight {
 public:
  PackedWeight(const float* weight, int trans, int max_rows, int n, int k, int ld) : n_(n), k_(k) {
    const size_t bytes = cblas_sgemm_pack_get_size(kMatrixB, max_rows, n, k);
    buffer_ = static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    PD_CHECK(buffer_ != nullptr, "cpu_kernels.recurrent: out of memory packing W_hh");
    cblas_sgemm_pack(kRowMajor, kMatrixB, trans, max_rows, n, k, 1.0f, weight, ld, buffer_);
  }
  ~PackedWeight() { std::free(buffer_); }
  PackedWeight(const PackedWeight&) = delete;
  PackedWeight& operator=(const PackedWeight&) = delete;
  // c [rows, n] = a [rows, k] x W (+ c when accumulate)
  void Multiply(const float* a, int rows, float* c, bool accumulate) const {
    if (rows == 0) return;
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, rows, n_, k_, a, k_, buffer_, k_, accumulate ? 1.0f : 0.0f,
                        c, n_);
  }

 private:
  int n_, k_;
  float* buffer_;
};

// exp only ever sees -|v|, so it never overflows: with -ffast-math an overflow to inf turned
// sigmoid and tanh into NaN (a Mandarin demo model's gates reached |v| > 44). A NaN in still
// gives a NaN out.
inline float Sigmoid(float v) {
  const float e = std::exp(-std::fabs(v));  // (0, 1]
  const float s = 1.0f / (1.0f + e);
  return v >= 0.0f ? s : e * s;
}
inline float Tanh(float v) {
  const float e = std::exp(-2.0f * std::fabs(v));  // (0, 1]
  return std::copysign((1.0f - e) / (1.0f + e), v);
}

struct Dims {
  int64_t steps, batch, hidden;
};

Dims CheckInputs(const paddle::Tensor& gates_x, const paddle::Tensor& b_ih, const paddle::Tensor& w_hh,
                 const paddle::Tensor& b_hh, const paddle::Tensor& lens, int gates) {
  PD_CHECK(gates_x.is_cpu() && b_ih.is_cpu() && w_hh.is_cpu() && b_hh.is_cpu() && lens.is_cpu(),
           "cpu_kernels.recurrent runs on the CPU only; on a GPU Paddle's nn.GRU/nn.LSTM run instead");
  PD_CHECK(gates_x.dtype() == paddle::DataType::FLOAT32 && b_ih.dtype() == paddle::DataType::FLOAT32 &&
               w_hh.dtype() == paddle::DataType::FLOAT32 && b_hh.dtype() == paddle::DataType::FLOAT32,
           "cpu_kernels.recurrent takes float32 gates and weights");
  PD_CHECK(lens.dtype() == paddle::DataType::INT32, "cpu_kernels.recurrent takes int32 lengths");
  auto shape = gates_x.shape();
  PD_CHECK(shape.size() == 3, "gates_x must be [B, T, G*H]");
  auto w_shape = w_hh.shape();
  PD_CHECK(w_shape.size() == 2 && w_shape[0] == gates * w_shape[1] && shape[2] == w_shape[0],
           "weight_hh must be [G*H, H] with G*H = gates_x.shape[2]");
  PD_CHECK(b_ih.numel() == w_shape[0] && b_hh.numel() == w_shape[0], "bias_ih and bias_hh must have G*H values");
  PD_CHECK(lens.numel() == shape[0], "lens must have one value per batch row");
  return {shape[1], shape[0], w_shape[1]};
}

// Rows [0, active) are the ones still running at step s when lens is non-increasing; otherwise
// every row goes through the product and the rows that ended are skipped in the gate pass.
int64_t ActiveRows(const std::vector<int>& lens, int64_t step, bool sorted) {
  if (!sorted) return static_cast<int64_t>(lens.size());
  int64_t active = 0;
  while (active < static_cast<int64_t>(lens.size()) && lens[active] > step) ++active;
  return active;
}

struct Lengths {
  std::vector<int> values;
  int max_len = 0;
  bool sorted = true;  // non-increasing
};

Lengths ReadLengths(const paddle::Tensor& lens, int64_t steps) {
  Lengths out;
  const int* data = lens.data<int>();
  out.values.assign(data, data + lens.numel());
  for (size_t b = 0; b < out.values.size(); ++b) {
    PD_CHECK(out.values[b] >= 0 && out.values[b] <= steps, "a length lies outside [0, T]");
    out.max_len = std::max(out.max_len, out.values[b]);
    if (b > 0 && out.values[b] > out.values[b - 1]) out.sorted = false;
  }
  return out;
}

inline int64_t TimeIndex(int len, int64_t step, bool reverse) { return reverse ? len - 1 - step : step; }

// [B, T, width], 0 on the frames t >= lens[b] (the rest is written frame by frame); the frames
// never read (gates, cells past a row's end) need no zeros, but the outputs and everything the
// weight-gradient product reads do.
paddle::Tensor PaddedWithZeros(const Lengths& len, int64_t steps, int64_t width) {
  const int64_t batch = static_cast<int64_t>(len.values.size());
  auto tensor = paddle::empty({batch, steps, width}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* data = tensor.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    std::fill(data + (b * steps + len.values[b]) * width, data + (b + 1) * steps * width, 0.0f);
  }
  return tensor;
}

paddle::Tensor Uninitialized(int64_t batch, int64_t steps, int64_t width) {
  return paddle::empty({batch, steps, width}, paddle::DataType::FLOAT32, paddle::CPUPlace());
}

// The gate pass of a frame is split by rows among the OpenMP threads (the sgemm before it uses
// the same threads, in MKL); a few rows are not worth waking them.
constexpr int64_t kRowsPerThread = 4;

int RowThreads(int64_t rows) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), rows / kRowsPerThread)));
}

// Bias gradients summed per thread in the frame loop, added up at the end.
struct BiasSums {
  BiasSums(int threads, int64_t width) : x(threads, width), h(threads, width) {}
  ThreadSums x, h;  // d(x W_ih^T) -> db_ih, d(h W_hh^T) -> db_hh
};

inline void Accumulate(float* __restrict sums, const float* __restrict values, int64_t width) {
  for (int64_t j = 0; j < width; ++j) sums[j] += values[j];
}

struct Grads {
  paddle::Tensor gates_x, bias_ih, weight_hh, bias_hh;
};

Grads AllocateGrads(const Lengths& len, int64_t steps, int64_t gate_width, int64_t hidden) {
  const auto place = paddle::CPUPlace();
  return {PaddedWithZeros(len, steps, gate_width), paddle::empty({gate_width}, paddle::DataType::FLOAT32, place),
          paddle::empty({gate_width, hidden}, paddle::DataType::FLOAT32, place),
          paddle::empty({gate_width}, paddle::DataType::FLOAT32, place)};
}

// After the frame loop: dW_hh [G*H, H] = sum over frames of d(h W_hh^T) [G*H] x h_prev [H] (one
// sgemm; both are 0 on padded frames), and the bias gradients.
// d_hh null: the same as d(x W_ih^T), grads.gates_x (an LSTM's), and so are the two bias gradients.
std::vector<paddle::Tensor> FinishGrads(Grads& grads, const BiasSums& sums, const float* d_hh, const float* h_prev,
                                        int64_t frames, int64_t gate_width, int64_t hidden) {
  const bool same = d_hh == nullptr;
  cblas_sgemm(kRowMajor, kTrans, kNoTrans, gate_width, hidden, frames, 1.0f, same ? grads.gates_x.data<float>() : d_hh,
              gate_width, h_prev, hidden, 0.0f, grads.weight_hh.data<float>(), hidden);
  sums.x.Write(grads.bias_ih.data<float>());
  (same ? sums.x : sums.h).Write(grads.bias_hh.data<float>());
  return {grads.gates_x, grads.bias_ih, grads.weight_hh, grads.bias_hh};
}

// The frame loop both cells share, forward: at step s, one product h W_hh^T for the running rows,
// then each running row b takes its frame (b, t), t = s or lens[b] - 1 - s in reverse:
// row(b, frame) runs the cell's gate pass on h[b] in place and saves what the backward pass needs.
template <typename Row>
void ForwardFrames(const Lengths& len, int64_t steps, int64_t hidden, const PackedWeight& weight, bool reverse,
                   std::vector<float>& h, std::vector<float>& hh, float* h_prev_all, float* out, Row row) {
  for (int64_t s = 0; s < len.max_len; ++s) {
    const int64_t rows = ActiveRows(len.values, s, len.sorted);
    weight.Multiply(h.data(), rows, hh.data(), false);
#pragma omp parallel for schedule(static) num_threads(RowThreads(rows))
    for (int64_t b = 0; b < rows; ++b) {
      if (s >= len.values[b]) continue;
      const int64_t frame = b * steps + TimeIndex(len.values[b], s, reverse);
      float* state = h.data() + b * hidden;
      std::memcpy(h_prev_all + frame * hidden, state, sizeof(float) * hidden);
      row(b, frame);
      std::memcpy(out + frame * hidden, state, sizeof(float) * hidden);
    }
  }
}

// Backward, from the last step down: row(b, frame, t, s, dh, d_x, d_hh, direct) takes the
// gradient dh reaching h at that frame and writes the row's d(x W_ih^T), d(h W_hh^T + b_hh) and
// `direct`, the part of dh_prev that skips W_hh; then dh_prev = direct + d_hh W_hh for all rows.
// d_hh_all [B, T, G*H] keeps d_hh frame by frame for the weight gradient; null when d_hh is d_x
// (an LSTM's), so that the weight gradient reads d_gates_x and nothing is copied or summed twice.
template <typename Row>
void BackwardFrames(const Lengths& len, int64_t steps, int64_t hidden, int64_t gate_width, const PackedWeight& weight,
                    bool reverse, float* d_gates_x, float* d_hh_all, BiasSums& sums, Row row) {
  const int64_t batch = static_cast<int64_t>(len.values.size());
  std::vector<float> dh(batch * hidden, 0.0f), dh_prev(batch * hidden, 0.0f), d_hh_step(batch * gate_width, 0.0f);
  for (int64_t s = len.max_len - 1; s >= 0; --s) {
    const int64_t rows = ActiveRows(len.values, s, len.sorted);
#pragma omp parallel for schedule(static) num_threads(RowThreads(rows))
    for (int64_t b = 0; b < rows; ++b) {
      float* dstep = d_hh_step.data() + b * gate_width;
      float* direct = dh_prev.data() + b * hidden;
      if (s >= len.values[b]) {  // ended: nothing flows back through this row yet
        std::fill(dstep, dstep + gate_width, 0.0f);
        std::fill(direct, direct + hidden, 0.0f);
        continue;
      }
      const int64_t t = TimeIndex(len.values[b], s, reverse), frame = b * steps + t;
      float* dx = d_gates_x + frame * gate_width;
      row(b, frame, t, s, dh.data() + b * hidden, dx, dstep, direct);
      Accumulate(sums.x.Part(omp_get_thread_num()), dx, gate_width);
      if (d_hh_all != nullptr) {
        std::memcpy(d_hh_all + frame * gate_width, dstep, sizeof(float) * gate_width);
        Accumulate(sums.h.Part(omp_get_thread_num()), dstep, gate_width);
      }
    }
    weight.Multiply(d_hh_step.data(), rows, dh_prev.data(), true);  // dh_prev = direct + d_hh W_hh
    std::copy(dh_prev.begin(), dh_prev.begin() + rows * hidden, dh.begin());
  }
}

// ------------------------------------------------------------------------------------- GRU
// r = sigmoid(x_r + h W_r + b_r), z = sigmoid(x_z + h W_z + b_z),
// c = tanh(x_c + r * (h W_c + b_c)), h' = z * h + (1 - z) * c
// Row functions take restrict pointers so that g++ vectorizes them, exp included (-ffast-math).

// One row of one frame: x = x W_ih^T [3H], hh = h W_hh^T [3H] -> gates [3H] (r, z, c), hidden_c [H], h in place.
void GruRowForward(const float* __restrict x, const float* __restrict bias_x, const float* __restrict hh,
                   const float* __restrict bias, float* __restrict gates, float* __restrict hidden_c,
                   float* __restrict h, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float r = Sigmoid(x[j] + bias_x[j] + hh[j] + bias[j]);
    const float z = Sigmoid(x[H + j] + bias_x[H + j] + hh[H + j] + bias[H + j]);
    const float hidden = hh[2 * H + j] + bias[2 * H + j];
    const float c = Tanh(x[2 * H + j] + bias_x[2 * H + j] + r * hidden);
    gates[j] = r;
    gates[H + j] = z;
    gates[2 * H + j] = c;
    hidden_c[j] = hidden;
    h[j] = z * h[j] + (1.0f - z) * c;
  }
}

// One row of one frame backward: grad_h = dh + dout -> d_x [3H] (pre-activation gradients),
// d_hh [3H] (gradient of h W_hh^T + b_hh) and the part of dh_prev that skips W_hh.
void GruRowBackward(const float* __restrict gates, const float* __restrict hidden_c,
                    const float* __restrict h_prev, const float* __restrict dh, const float* __restrict dout,
                    float* __restrict d_x, float* __restrict d_hh, float* __restrict dh_prev_direct, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float r = gates[j], z = gates[H + j], c = gates[2 * H + j];
    const float grad_h = dh[j] + dout[j];
    const float d_pre_c = grad_h * (1.0f - z) * (1.0f - c * c);
    const float d_pre_z = grad_h * (h_prev[j] - c) * z * (1.0f - z);
    const float d_pre_r = d_pre_c * hidden_c[j] * r * (1.0f - r);
    d_x[j] = d_pre_r;
    d_x[H + j] = d_pre_z;
    d_x[2 * H + j] = d_pre_c;
    d_hh[j] = d_pre_r;
    d_hh[H + j] = d_pre_z;
    d_hh[2 * H + j] = d_pre_c * r;
    dh_prev_direct[j] = grad_h * z;
  }
}

std::vector<paddle::Tensor> GruForward(const paddle::Tensor& gates_x, const paddle::Tensor& b_ih,
                                       const paddle::Tensor& w_hh, const paddle::Tensor& b_hh,
                                       const paddle::Tensor& lens, bool reverse) {
  const Dims d = CheckInputs(gates_x, b_ih, w_hh, b_hh, lens, 3);
  const int64_t H = d.hidden, G = 3 * d.hidden, B = d.batch, T = d.steps;
  const Lengths len = ReadLengths(lens, T);
  auto out = PaddedWithZeros(len, T, H);
  auto gates = Uninitialized(B, T, G);     // r, z, c after their nonlinearity
  auto hidden_c = Uninitialized(B, T, H);  // h W_c + b_c, which r scales
  auto h_prev_all = PaddedWithZeros(len, T, H);
  const PackedWeight weight(w_hh.data<float>(), kTrans, B, G, H, H);  // x W_hh^T
  std::vector<float> h(B * H, 0.0f), hh(B * G, 0.0f);
  const float* gx = gates_x.data<float>();
  const float* bias_x = b_ih.data<float>();
  const float* bias = b_hh.data<float>();
  float* gs = gates.data<float>();
  float* hc = hidden_c.data<float>();
  ForwardFrames(len, T, H, weight, reverse, h, hh, h_prev_all.data<float>(), out.data<float>(),
                [&](int64_t b, int64_t frame) {
                  GruRowForward(gx + frame * G, bias_x, hh.data() + b * G, bias, gs + frame * G, hc + frame * H,
                                h.data() + b * H, H);
                });
  return {out, gates, hidden_c, h_prev_all};
}

std::vector<paddle::Tensor> GruBackward(const paddle::Tensor& w_hh, const paddle::Tensor& lens,
                                        const paddle::Tensor& gates, const paddle::Tensor& hidden_c,
                                        const paddle::Tensor& h_prev_all, const paddle::Tensor& d_out,
                                        bool reverse) {
  const auto shape = gates.shape();
  const int64_t B = shape[0], T = shape[1], G = shape[2], H = G / 3;
  const Lengths len = ReadLengths(lens, T);
  Grads grads = AllocateGrads(len, T, G, H);
  auto d_hh_all = PaddedWithZeros(len, T, G);  // gradient of h W_hh^T + b_hh, frame by frame
  const PackedWeight weight(w_hh.data<float>(), kNoTrans, B, H, G, H);  // d_hh W_hh
  BiasSums sums(RowThreads(B), G);
  const float* gs = gates.data<float>();
  const float* hc = hidden_c.data<float>();
  const float* hp = h_prev_all.data<float>();
  const float* dout = d_out.data<float>();
  BackwardFrames(len, T, H, G, weight, reverse, grads.gates_x.data<float>(), d_hh_all.data<float>(), sums,
                 [&](int64_t b, int64_t frame, int64_t t, int64_t s, const float* dh, float* dx, float* dstep,
                     float* direct) {
                   GruRowBackward(gs + frame * G, hc + frame * H, hp + frame * H, dh, dout + frame * H, dx, dstep,
                                  direct, H);
                 });
  return FinishGrads(grads, sums, d_hh_all.data<float>(), hp, B * T, G, H);
}

// ------------------------------------------------------------------------------------ LSTM
// [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](x + h W_hh^T + b_hh),
// c' = f * c + i * g, h' = o * tanh(c')

// One row of one frame: x, hh [4H] -> gates [4H] (i, f, g, o), cell c and h in place.
void LstmRowForward(const float* __restrict x, const float* __restrict bias_x, const float* __restrict hh,
                    const float* __restrict bias, float* __restrict gates, float* __restrict cell,
                    float* __restrict h, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float in = Sigmoid(x[j] + bias_x[j] + hh[j] + bias[j]);
    const float forget = Sigmoid(x[H + j] + bias_x[H + j] + hh[H + j] + bias[H + j]);
    const float cand = Tanh(x[2 * H + j] + bias_x[2 * H + j] + hh[2 * H + j] + bias[2 * H + j]);
    const float og = Sigmoid(x[3 * H + j] + bias_x[3 * H + j] + hh[3 * H + j] + bias[3 * H + j]);
    const float c = forget * cell[j] + in * cand;
    gates[j] = in;
    gates[H + j] = forget;
    gates[2 * H + j] = cand;
    gates[3 * H + j] = og;
    cell[j] = c;
    h[j] = og * Tanh(c);
  }
}

// One row of one frame backward: c_prev is a row of zeros at a row's first frame (no branch in
// the loop: with one, g++ left it scalar and the backward gate pass cost twice as much);
// dc carries the cell gradient in place; d_x [4H] is also the gradient of h W_hh^T + b_hh.
void LstmRowBackward(const float* __restrict gates, const float* __restrict c_now, const float* __restrict c_prev,
                     const float* __restrict dh, const float* __restrict dout, float* __restrict dc,
                     float* __restrict d_x, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float in = gates[j], forget = gates[H + j], cand = gates[2 * H + j], og = gates[3 * H + j];
    const float grad_h = dh[j] + dout[j];
    const float tanh_c = Tanh(c_now[j]);
    const float grad_c = dc[j] + grad_h * og * (1.0f - tanh_c * tanh_c);
    const float before = c_prev[j];
    d_x[j] = grad_c * cand * in * (1.0f - in);
    d_x[H + j] = grad_c * before * forget * (1.0f - forget);
    d_x[2 * H + j] = grad_c * in * (1.0f - cand * cand);
    d_x[3 * H + j] = grad_h * tanh_c * og * (1.0f - og);
    dc[j] = grad_c * forget;
  }
}

std::vector<paddle::Tensor> LstmForward(const paddle::Tensor& gates_x, const paddle::Tensor& b_ih,
                                        const paddle::Tensor& w_hh, const paddle::Tensor& b_hh,
                                        const paddle::Tensor& lens, bool reverse) {
  const Dims d = CheckInputs(gates_x, b_ih, w_hh, b_hh, lens, 4);
  const int64_t H = d.hidden, G = 4 * d.hidden, B = d.batch, T = d.steps;
  const Lengths len = ReadLengths(lens, T);
  auto out = PaddedWithZeros(len, T, H);
  auto gates = Uninitialized(B, T, G);  // i, f, g, o after their nonlinearity
  auto cells = Uninitialized(B, T, H);  // c' of each frame
  auto h_prev_all = PaddedWithZeros(len, T, H);
  const PackedWeight weight(w_hh.data<float>(), kTrans, B, G, H, H);
  std::vector<float> h(B * H, 0.0f), cell(B * H, 0.0f), hh(B * G, 0.0f);
  const float* gx = gates_x.data<float>();
  const float* bias_x = b_ih.data<float>();
  const float* bias = b_hh.data<float>();
  float* gs = gates.data<float>();
  float* cs = cells.data<float>();
  ForwardFrames(len, T, H, weight, reverse, h, hh, h_prev_all.data<float>(), out.data<float>(),
                [&](int64_t b, int64_t frame) {
                  float* c_row = cell.data() + b * H;
                  LstmRowForward(gx + frame * G, bias_x, hh.data() + b * G, bias, gs + frame * G, c_row,
                                 h.data() + b * H, H);
                  std::memcpy(cs + frame * H, c_row, sizeof(float) * H);
                });
  return {out, gates, cells, h_prev_all};
}

std::vector<paddle::Tensor> LstmBackward(const paddle::Tensor& w_hh, const paddle::Tensor& lens,
                                         const paddle::Tensor& gates, const paddle::Tensor& cells,
                                         const paddle::Tensor& h_prev_all, const paddle::Tensor& d_out,
                                         bool reverse) {
  const auto shape = gates.shape();
  const int64_t B = shape[0], T = shape[1], G = shape[2], H = G / 4;
  const Lengths len = ReadLengths(lens, T);
  Grads grads = AllocateGrads(len, T, G, H);
  const PackedWeight weight(w_hh.data<float>(), kNoTrans, B, H, G, H);
  BiasSums sums(RowThreads(B), G);
  std::vector<float> dc(B * H, 0.0f);  // the cell gradient carried back, row by row
  const std::vector<float> no_cell(H, 0.0f);  // c before a row's first frame
  const float* gs = gates.data<float>();
  const float* cs = cells.data<float>();
  const float* dout = d_out.data<float>();
  BackwardFrames(len, T, H, G, weight, reverse, grads.gates_x.data<float>(), nullptr, sums,
                 [&](int64_t b, int64_t frame, int64_t t, int64_t s, const float* dh, float* dx, float* dstep,
                     float* direct) {
                   const int64_t before = reverse ? t + 1 : t - 1;  // the frame run just before this one
                   const float* c_prev = s == 0 ? no_cell.data() : cs + (b * T + before) * H;
                   LstmRowBackward(gs + frame * G, cs + frame * H, c_prev, dh, dout + frame * H, dc.data() + b * H,
                                   dx, H);
                   std::memcpy(dstep, dx, sizeof(float) * G);  // d(h W_hh^T) = d(x W_ih^T) for an LSTM
                   std::fill(direct, direct + H, 0.0f);  // h reaches the previous frame only through W_hh
                 });
  return FinishGrads(grads, sums, nullptr, h_prev_all.data<float>(), B * T, G, H);
}

std::vector<std::vector<int64_t>> ForwardShapes(const std::vector<int64_t>& gates_x, const std::vector<int64_t>& b_ih,
                                                const std::vector<int64_t>& w_hh, const std::vector<int64_t>& b_hh,
                                                const std::vector<int64_t>& lens) {
  const int64_t hidden = w_hh[1];
  const std::vector<int64_t> per_frame = {gates_x[0], gates_x[1], hidden};
  return {per_frame, gates_x, per_frame, per_frame};
}

std::vector<paddle::DataType> ForwardTypes(const paddle::DataType& gates_x, const paddle::DataType& b_ih,
                                           const paddle::DataType& w_hh, const paddle::DataType& b_hh,
                                           const paddle::DataType& lens) {
  return {gates_x, gates_x, gates_x, gates_x};
}

}  // namespace

PD_BUILD_OP(ds2_fused_gru)
    .Inputs({"GatesX", "BiasIH", "WeightHH", "BiasHH", "Lens"})
    .Outputs({"Out", "Gates", "HiddenC", "HPrev"})
    .Attrs({"reverse: bool"})
    .SetKernelFn(PD_KERNEL(GruForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ForwardShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(ForwardTypes));

PD_BUILD_GRAD_OP(ds2_fused_gru)
    .Inputs({"WeightHH", "Lens", "Gates", "HiddenC", "HPrev", paddle::Grad("Out")})
    .Outputs({paddle::Grad("GatesX"), paddle::Grad("BiasIH"), paddle::Grad("WeightHH"), paddle::Grad("BiasHH")})
    .Attrs({"reverse: bool"})
    .SetKernelFn(PD_KERNEL(GruBackward));

PD_BUILD_OP(ds2_fused_lstm)
    .Inputs({"GatesX", "BiasIH", "WeightHH", "BiasHH", "Lens"})
    .Outputs({"Out", "Gates", "Cells", "HPrev"})
    .Attrs({"reverse: bool"})
    .SetKernelFn(PD_KERNEL(LstmForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ForwardShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(ForwardTypes));

PD_BUILD_GRAD_OP(ds2_fused_lstm)
    .Inputs({"WeightHH", "Lens", "Gates", "Cells", "HPrev", paddle::Grad("Out")})
    .Outputs({paddle::Grad("GatesX"), paddle::Grad("BiasIH"), paddle::Grad("WeightHH"), paddle::Grad("BiasHH")})
    .Attrs({"reverse: bool"})
    .SetKernelFn(PD_KERNEL(LstmBackward));

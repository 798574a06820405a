// What the CPU kernels (rnn.cc, conv.cc, norm.cc) share: MKL's CBLAS entry points and the
// per-thread partial sums their backward passes add up.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

// MKL's CBLAS (Paddle ships libmklml_intel.so); declared here since Paddle ships no MKL headers
extern "C" {
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc);
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
void cblas_sgemm_pack(int order, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest);
void cblas_sgemm_compute(int order, int trans_a, int trans_b, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc);
}

namespace ds2 {

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;
constexpr int kPacked = 151;
constexpr int kMatrixB = 162;

// Partial sums of a [width] vector, one per OpenMP thread, added up in thread order at the end
// (the same result for the same thread count, run after run).
class ThreadSums {
 public:
  ThreadSums(int threads, int64_t width) : width_(width), parts_(static_cast<size_t>(threads) * width, 0.0f) {}
  float* Part(int thread) { return parts_.data() + thread * width_; }
  void Write(float* out) const {
    std::fill(out, out + width_, 0.0f);
    for (size_t start = 0; start < parts_.size(); start += width_) {
      for (int64_t j = 0; j < width_; ++j) out[j] += parts_[start + j];
    }
  }

 private:
  int64_t width_;
  std::vector<float> parts_;
};

}  // namespace ds2

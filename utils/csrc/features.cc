// The feature front end of utils/features.py in one pass over the samples: frames, Hann window,
// real FFT, power, mel filterbank (or none) and log; and the cubic resampler of the speed
// perturbation (utils/augment.py). A plain C ABI library (ctypes, no Paddle), so that forked
// DataLoader workers can call it; utils/feature_kernels.py builds and loads it.
//
// The FFT runs on kLanes frames at once: a radix-2 complex FFT of n_fft / 2 points over arrays
// [point][lane], whose innermost lane loops the compiler turns into SIMD instructions, followed by
// the split that turns the half-size complex transform into the real one. Decimation in frequency
// takes the frames in order and leaves the transform in bit-reversed order, which the split reads:
// a 3 s clip's fbank 222 -> 191 us against decimation in time, whose input had to be scattered.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif

namespace {

constexpr int kLanes = 8;  // frames per FFT pass: one AVX register of float32 per point

struct Plan {
  int half = 0;                        // n_fft / 2: the complex FFT's size
  std::vector<int> bit_reversed;       // [half]
  std::vector<float> twiddle_re, twiddle_im;  // [half]: e^{-2 pi i j / half}
  std::vector<float> split_re, split_im;      // [half + 1]: e^{-2 pi i k / n_fft}
};

bool MakePlan(int n_fft, Plan* plan) {
  if (n_fft < 4 || (n_fft & (n_fft - 1)) != 0) return false;
  const int half = n_fft / 2;
  plan->half = half;
  int bits = 0;
  while ((1 << bits) < half) ++bits;
  plan->bit_reversed.resize(half);
  for (int i = 0; i < half; ++i) {
    int reversed = 0;
    for (int b = 0; b < bits; ++b) reversed |= ((i >> b) & 1) << (bits - 1 - b);
    plan->bit_reversed[i] = reversed;
  }
  plan->twiddle_re.resize(half);
  plan->twiddle_im.resize(half);
  for (int j = 0; j < half; ++j) {
    const double angle = -2.0 * M_PI * j / half;
    plan->twiddle_re[j] = static_cast<float>(std::cos(angle));
    plan->twiddle_im[j] = static_cast<float>(std::sin(angle));
  }
  plan->split_re.resize(half + 1);
  plan->split_im.resize(half + 1);
  for (int k = 0; k <= half; ++k) {
    const double angle = -2.0 * M_PI * k / n_fft;
    plan->split_re[k] = static_cast<float>(std::cos(angle));
    plan->split_im[k] = static_cast<float>(std::sin(angle));
  }
  return true;
}

// In place over re/im [half][kLanes]: input in natural order, output in bit-reversed order
// (decimation in frequency), so that frames load into it in order (LoadFrames).
void ComplexFft(const Plan& plan, float* re, float* im) {
  const int half = plan.half;
  for (int size = half; size >= 4; size /= 2) {
    const int span = size / 2, step = half / size;
    for (int start = 0; start < half; start += size) {
      for (int j = 0; j < span; ++j) {
        const float wr = plan.twiddle_re[j * step], wi = plan.twiddle_im[j * step];
        float* ar = re + (start + j) * kLanes;
        float* ai = im + (start + j) * kLanes;
        float* br = re + (start + j + span) * kLanes;
        float* bi = im + (start + j + span) * kLanes;
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) {
          const float dr = ar[l] - br[l], di = ai[l] - bi[l];
          ar[l] += br[l];
          ai[l] += bi[l];
          br[l] = dr * wr - di * wi;
          bi[l] = dr * wi + di * wr;
        }
      }
    }
  }
  for (int start = 0; start < half; start += 2) {  // size 2, whose twiddle is 1
    float* ar = re + start * kLanes;
    float* ai = im + start * kLanes;
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float dr = ar[l] - ar[kLanes + l], di = ai[l] - ai[kLanes + l];
      ar[l] += ar[kLanes + l];
      ai[l] += ai[kLanes + l];
      ar[kLanes + l] = dr;
      ai[kLanes + l] = di;
    }
  }
}

// Frames first, first + stride, ... (`lanes` of them), times the window, into re/im [half][kLanes]:
// even samples to re, odd to im, in order; the points past the window and the lanes past `lanes` zero.
void LoadFrames(const float* first, int lanes, int window, int stride, const float* hann, int half,
                float* re, float* im) {
  const int pairs = window / 2, points = (window + 1) / 2;
  std::memset(re + points * kLanes, 0, (half - points) * kLanes * sizeof(float));
  std::memset(im + pairs * kLanes, 0, (half - pairs) * kLanes * sizeof(float));
  if (lanes == kLanes) {  // point by point, the lanes gathered from the eight frames: vectorized
    for (int n = 0; n < pairs; ++n) {
      const float even = hann[2 * n], odd = hann[2 * n + 1];
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        re[n * kLanes + l] = first[l * stride + 2 * n] * even;
        im[n * kLanes + l] = first[l * stride + 2 * n + 1] * odd;
      }
    }
  } else {  // a last, partial block: no reads past its last frame
    for (int l = 0; l < kLanes; ++l) {
      for (int n = 0; n < pairs; ++n) {
        re[n * kLanes + l] = l < lanes ? first[l * stride + 2 * n] * hann[2 * n] : 0.0f;
        im[n * kLanes + l] = l < lanes ? first[l * stride + 2 * n + 1] * hann[2 * n + 1] : 0.0f;
      }
    }
  }
  if (window % 2 == 1) {
    for (int l = 0; l < kLanes; ++l) re[pairs * kLanes + l] = l < lanes ? first[l * stride + window - 1] * hann[window - 1] : 0.0f;
  }
}

// Z = FFT_half(x[2m] + i x[2m+1]), bit-reversed -> power[k][lane] = |X[k]|^2 for k = 0..half, where
// X[k] = E + e^{-2 pi i k / n_fft} O, E = (Z[k] + conj(Z[half-k])) / 2, O = -i (Z[k] - conj(Z[half-k])) / 2.
void SplitPower(const Plan& plan, const float* re, const float* im, float* power) {
  const int half = plan.half;
  for (int k = 0; k <= half; ++k) {  // Z[k] lies at bit_reversed[k]
    const int a = plan.bit_reversed[k == half ? 0 : k] * kLanes, b = plan.bit_reversed[k == 0 ? 0 : half - k] * kLanes;
    const float wr = plan.split_re[k], wi = plan.split_im[k];
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float er = 0.5f * (re[a + l] + re[b + l]), ei = 0.5f * (im[a + l] - im[b + l]);
      const float or_ = 0.5f * (im[a + l] + im[b + l]), oi = -0.5f * (re[a + l] - re[b + l]);
      const float xr = er + wr * or_ - wi * oi, xi = ei + wr * oi + wi * or_;
      power[k * kLanes + l] = xr * xr + xi * xi;
    }
  }
}

}  // namespace

extern "C" {

// samples [num_samples] -> out [num_frames, dim], num_frames = 1 + (num_samples - window) / stride,
// dim = n_mels when mel is given ([n_mels, n_fft / 2 + 1], row-major) else n_fft / 2 + 1:
// out = log(mel @ |rfft(frame * hann, n_fft)|^2 + log_floor), or log(power + log_floor) without mel.
// Returns 0, or -1 when n_fft is not a power of two of at least 4 or the window exceeds it.
int ds2_log_power_features(const float* samples, int64_t num_samples, int window, int stride, int n_fft,
                           const float* hann, const float* mel, int n_mels, float log_floor, float* out) {
  thread_local Plan plan;  // made once per FFT size and thread: its cos and sin cost 5 us a call
  if (window > n_fft || window <= 0 || stride <= 0) return -1;
  if (plan.half * 2 != n_fft && !MakePlan(n_fft, &plan)) return -1;
  if (num_samples < window) return 0;
  const int64_t num_frames = 1 + (num_samples - window) / stride;
  const int half = plan.half, bins = half + 1, dim = mel != nullptr ? n_mels : bins;
  // each mel filter's non-zero bins [first, last): the triangles cover a few bins each
  std::vector<int> first(n_mels > 0 ? n_mels : 0), last(first.size());
  for (int m = 0; m < n_mels && mel != nullptr; ++m) {
    int lo = 0, hi = bins;
    while (lo < bins && mel[m * bins + lo] == 0.0f) ++lo;
    while (hi > lo && mel[m * bins + hi - 1] == 0.0f) --hi;
    first[m] = lo;
    last[m] = hi;
  }
  std::vector<float> re(half * kLanes), im(half * kLanes), power(bins * kLanes);
  std::vector<float> mel_energy(std::max(n_mels, 0) * kLanes), logs(dim * kLanes);
  for (int64_t block = 0; block < num_frames; block += kLanes) {
    const int lanes = static_cast<int>(std::min<int64_t>(kLanes, num_frames - block));
    LoadFrames(samples + block * stride, lanes, window, stride, hann, half, re.data(), im.data());
    ComplexFft(plan, re.data(), im.data());
    SplitPower(plan, re.data(), im.data(), power.data());
    const float* values = power.data();  // [dim][kLanes]
    if (mel != nullptr) {
      for (int m = 0; m < n_mels; ++m) {  // energy[m][lane] = sum_k mel[m][k] * power[k][lane]
        float* energy = mel_energy.data() + m * kLanes;
        std::fill(energy, energy + kLanes, 0.0f);
        for (int k = first[m]; k < last[m]; ++k) {
          const float weight = mel[m * bins + k];
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) energy[l] += weight * power[k * kLanes + l];
        }
      }
      values = mel_energy.data();
    }
    for (int i = 0; i < dim * kLanes; ++i) logs[i] = std::log(values[i] + log_floor);  // vectorized
    for (int l = 0; l < lanes; ++l) {
      float* row = out + (block + l) * dim;
      for (int d = 0; d < dim; ++d) row[d] = logs[d * kLanes + l];
    }
  }
  return 0;
}

// samples [num_samples] -> out [out_len], out[i] = the Catmull-Rom cubic through the four samples
// around position i * num_samples / out_len (the end samples repeat past the edges): what soxr's
// quick ("QQ") resampler computes, without its set-up per call. Positions are 32.32 fixed point
// (integer arithmetic: 1.5 ns an output against 3 with doubles, whose conversions do not vectorize).
void ds2_cubic_resample(const float* samples, int64_t num_samples, float* out, int64_t out_len) {
  if (num_samples <= 0 || out_len <= 0) return;
  constexpr double kOne = 4294967296.0;  // 2^32
  const uint64_t step = static_cast<uint64_t>(static_cast<double>(num_samples) / out_len * kOne);
  const int64_t last = num_samples - 1;
  const float kFraction = static_cast<float>(1.0 / kOne);
  auto cubic = [](float p0, float p1, float p2, float p3, float t) {
    return p1 + 0.5f * t * (p2 - p0 + t * (2.0f * p0 - 5.0f * p1 + 4.0f * p2 - p3 + t * (3.0f * (p1 - p2) + p3 - p0)));
  };
  auto one = [&](int64_t i) {
    const uint64_t position = static_cast<uint64_t>(i) * step;
    const int64_t j = static_cast<int64_t>(position >> 32);
    const float t = static_cast<float>(static_cast<uint32_t>(position)) * kFraction;
    if (j >= 1 && j + 2 <= last) {
      out[i] = cubic(samples[j - 1], samples[j], samples[j + 1], samples[j + 2], t);
    } else {  // the edges: clamped
      const int64_t k = std::min(j, last);
      out[i] = cubic(samples[k > 0 ? k - 1 : 0], samples[k], samples[std::min(k + 1, last)],
                     samples[std::min(k + 2, last)], k == j ? t : 0.0f);
    }
  };
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  // Eight outputs at a time where their samples lie inside the clip and within 16 of the first's
  // j - 1 (a rate up to 1.5: the speed perturbation's 0.9-1.1): positions in 64-bit lanes, the
  // 16 samples from j0 - 1 in one register, each output's four picked by permutes, not gathers.
  constexpr uint64_t kMaxStep = (uint64_t{3} << 32) / 2;  // rate 1.5: 8 outputs span at most 12 + 3 samples
  if (step <= kMaxStep) {
    while (i < out_len && (static_cast<uint64_t>(i) * step >> 32) < 1) one(i++);
    const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i group_step = _mm512_set1_epi64(static_cast<int64_t>(step * 8));
    const __m512i low_bits = _mm512_set1_epi64(0xffffffffLL);
    __m512i position = _mm512_mullo_epi64(_mm512_add_epi64(_mm512_set1_epi64(i), lanes),
                                          _mm512_set1_epi64(static_cast<int64_t>(step)));
    const __m256i one_more = _mm256_set1_epi32(1);
    const __m256 half = _mm256_set1_ps(0.5f), two = _mm256_set1_ps(2.0f), three = _mm256_set1_ps(3.0f);
    const __m256 four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f), fraction = _mm256_set1_ps(kFraction);
    for (; i + 8 <= out_len; i += 8) {
      const int64_t j0 = static_cast<int64_t>(static_cast<uint64_t>(i) * step >> 32);
      if (j0 + 15 > last) break;  // the 16 samples from j0 - 1 must lie inside the clip
      const __m512i j = _mm512_srli_epi64(position, 32);
      const __m256i k0 = _mm512_cvtepi64_epi32(_mm512_sub_epi64(j, _mm512_set1_epi64(j0)));  // 0..12
      const __m512 window = _mm512_loadu_ps(samples + j0 - 1);  // window[k] = samples[j0 - 1 + k]
      const __m256i k1 = _mm256_add_epi32(k0, one_more), k2 = _mm256_add_epi32(k1, one_more);
      const __m256i k3 = _mm256_add_epi32(k2, one_more);
      auto pick = [&](__m256i k) {
        return _mm512_castps512_ps256(_mm512_permutexvar_ps(_mm512_castsi256_si512(k), window));
      };
      const __m256 p0 = pick(k0), p1 = pick(k1), p2 = pick(k2), p3 = pick(k3);
      const __m256 t = _mm256_mul_ps(_mm512_cvtepu64_ps(_mm512_and_si512(position, low_bits)), fraction);
      // p1 + 0.5 t (p2 - p0 + t (2 p0 - 5 p1 + 4 p2 - p3 + t (3 (p1 - p2) + p3 - p0)))
      const __m256 inner = _mm256_add_ps(_mm256_mul_ps(three, _mm256_sub_ps(p1, p2)), _mm256_sub_ps(p3, p0));
      __m256 middle = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(two, p0), _mm256_mul_ps(four, p2)),
                                    _mm256_add_ps(_mm256_mul_ps(five, p1), p3));
      middle = _mm256_fmadd_ps(t, inner, middle);
      const __m256 outer = _mm256_fmadd_ps(t, middle, _mm256_sub_ps(p2, p0));
      _mm256_storeu_ps(out + i, _mm256_fmadd_ps(_mm256_mul_ps(half, t), outer, p1));
      position = _mm512_add_epi64(position, group_step);
    }
  }
#endif
  for (; i < out_len; ++i) one(i);
}

}  // extern "C"

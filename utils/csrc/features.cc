// The feature front end of utils/features.py in one pass over the samples: frames, Hann window,
// real FFT, power, mel filterbank (or none) and log; and the loader worker's other passes over a
// clip's samples: the 16-bit PCM WAV reader of utils/audio.py, and the cubic resampler, gain and
// noise mix of the augmentation (utils/augment.py); and a training sample's whole way from its
// decoded samples to its augmented features in one call (ds2_sample_features). A plain C ABI library
// (ctypes, no Paddle), so that forked DataLoader workers can call it; utils/feature_kernels.py builds
// and loads it.
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
#include <numeric>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__AVX__)
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

// One radix-2 decimation-in-frequency stage of block size `size` over re/im [half][kLanes].
void Radix2Stage(const Plan& plan, int size, float* re, float* im) {
  const int half = plan.half, span = size / 2, step = half / size;
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

// The radix-2 stages of block sizes `size` and size / 2 in one pass (radix 2^2): each quarter-block
// point j with its partners j + size/4, j + size/2, j + 3 size/4 is loaded and stored once, not
// twice, and the output keeps the radix-2 stages' order. With a = x[j], b, c, d the partners and
// W = e^{-2 pi i / size}: t0 = a + c, t1 = a - c, t2 = b + d, t3 = -i (b - d);
// out a = t0 + t2, b = (t0 - t2) W^2j, c = (t1 + t3) W^j, d = (t1 - t3) W^3j.
void Radix4Stage(const Plan& plan, int size, float* re, float* im) {
  const int half = plan.half, quarter = size / 4, step = half / size;
  for (int start = 0; start < half; start += size) {
    for (int j = 0; j < quarter; ++j) {
      const float w1r = plan.twiddle_re[j * step], w1i = plan.twiddle_im[j * step];
      const float w2r = plan.twiddle_re[2 * j * step], w2i = plan.twiddle_im[2 * j * step];
      const float w3r = plan.twiddle_re[3 * j * step], w3i = plan.twiddle_im[3 * j * step];
      float* ar = re + (start + j) * kLanes;
      float* ai = im + (start + j) * kLanes;
      float* br = ar + quarter * kLanes;
      float* bi = ai + quarter * kLanes;
      float* cr = br + quarter * kLanes;
      float* ci = bi + quarter * kLanes;
      float* dr = cr + quarter * kLanes;
      float* di = ci + quarter * kLanes;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const float t0r = ar[l] + cr[l], t0i = ai[l] + ci[l], t1r = ar[l] - cr[l], t1i = ai[l] - ci[l];
        const float t2r = br[l] + dr[l], t2i = bi[l] + di[l], t3r = bi[l] - di[l], t3i = dr[l] - br[l];
        const float ur = t0r - t2r, ui = t0i - t2i, vr = t1r + t3r, vi = t1i + t3i;
        const float xr = t1r - t3r, xi = t1i - t3i;
        ar[l] = t0r + t2r;
        ai[l] = t0i + t2i;
        br[l] = ur * w2r - ui * w2i;
        bi[l] = ur * w2i + ui * w2r;
        cr[l] = vr * w1r - vi * w1i;
        ci[l] = vr * w1i + vi * w1r;
        dr[l] = xr * w3r - xi * w3i;
        di[l] = xr * w3i + xi * w3r;
      }
    }
  }
}

// The last two stages (block sizes 4 and 2), whose twiddles are 1 and -i: no multiplies.
void LastRadix4Stage(int half, float* re, float* im) {
  for (int start = 0; start < half; start += 4) {
    float* ar = re + start * kLanes;
    float* ai = im + start * kLanes;
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float a_r = ar[l], a_i = ai[l], b_r = ar[kLanes + l], b_i = ai[kLanes + l];
      const float c_r = ar[2 * kLanes + l], c_i = ai[2 * kLanes + l], d_r = ar[3 * kLanes + l], d_i = ai[3 * kLanes + l];
      const float t0r = a_r + c_r, t0i = a_i + c_i, t1r = a_r - c_r, t1i = a_i - c_i;
      const float t2r = b_r + d_r, t2i = b_i + d_i, t3r = b_i - d_i, t3i = d_r - b_r;
      ar[l] = t0r + t2r;
      ai[l] = t0i + t2i;
      ar[kLanes + l] = t0r - t2r;
      ai[kLanes + l] = t0i - t2i;
      ar[2 * kLanes + l] = t1r + t3r;
      ai[2 * kLanes + l] = t1i + t3i;
      ar[3 * kLanes + l] = t1r - t3r;
      ai[3 * kLanes + l] = t1i - t3i;
    }
  }
}

// In place over re/im [half][kLanes]: input in natural order, output in bit-reversed order
// (decimation in frequency), so that frames load into it in order (LoadFrames). Stages go two at a
// time (Radix4Stage), after one radix-2 stage where their number is odd: the butterflies are bound
// by their loads and stores, which the pairing halves (a 3 s clip's fbank 188 -> 150 us).
void ComplexFft(const Plan& plan, float* re, float* im) {
  int size = plan.half, stages = 0;
  while ((1 << stages) < size) ++stages;
  if (stages % 2 == 1) {
    Radix2Stage(plan, size, re, im);
    size /= 2;
  }
  for (; size > 4; size /= 4) Radix4Stage(plan, size, re, im);
  if (size == 4) LastRadix4Stage(plan.half, re, im);
}

#if defined(__AVX__)
static_assert(kLanes == 8, "the transposes take eight lanes");

// r[0..7] (eight rows of eight floats) -> r[i] = their column i, in registers.
inline void Transpose8(__m256* r) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  // r[i]'s low half holds column i's rows 0..3, its high half column i + 4's; r[i + 4] rows 4..7
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}
#endif

// Frames first, first + stride, ... (`lanes` of them), times the window, into re/im [half][kLanes]:
// even samples to re, odd to im, in order; the points past the window and the lanes past `lanes` zero.
// Eight frames' eight samples at a time by an in-register transpose where AVX has it, instead of 64
// scalar loads (the gather was a fifth of the fbank's time).
void LoadFrames(const float* first, int lanes, int window, int stride, const float* hann, int half,
                float* re, float* im) {
  const int pairs = window / 2, points = (window + 1) / 2;
  std::memset(re + points * kLanes, 0, (half - points) * kLanes * sizeof(float));
  std::memset(im + pairs * kLanes, 0, (half - pairs) * kLanes * sizeof(float));
  if (lanes == kLanes) {
    int n = 0;
#if defined(__AVX__)
    for (; n + 4 <= pairs; n += 4) {  // samples 2n .. 2n + 7 of each frame, all inside the window
      __m256 r[8];
      for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(first + l * stride + 2 * n);
      Transpose8(r);  // r[j][l] = frame l's sample 2n + j
      for (int j = 0; j < 4; ++j) {
        _mm256_storeu_ps(re + (n + j) * kLanes, _mm256_mul_ps(r[2 * j], _mm256_set1_ps(hann[2 * (n + j)])));
        _mm256_storeu_ps(im + (n + j) * kLanes, _mm256_mul_ps(r[2 * j + 1], _mm256_set1_ps(hann[2 * (n + j) + 1])));
      }
    }
#endif
    for (; n < pairs; ++n) {  // point by point, the lanes gathered from the eight frames
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

// logs [dim][kLanes] -> rows [lanes][dim] (one frame a row): eight dimensions of the eight frames
// at a time by an in-register 8 x 8 transpose where AVX has it, instead of 64 scalar moves
// (a 3 s clip's fbank 150 -> 143 us).
void StoreRows(const float* logs, int lanes, int dim, float* rows) {
  int d = 0;
#if defined(__AVX__)
  if (lanes == kLanes) {
    for (; d + 8 <= dim; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(logs + (d + i) * kLanes);
      Transpose8(r);  // r[l] = frame l's dimensions d .. d + 7
      for (int l = 0; l < 8; ++l) _mm256_storeu_ps(rows + l * dim + d, r[l]);
    }
  }
#endif
  for (int l = 0; l < lanes; ++l) {
    for (int k = d; k < dim; ++k) rows[l * dim + k] = logs[k * kLanes + l];
  }
}

// path's bytes into *bytes; their count, or -1 when it cannot be opened or read.
int64_t ReadWholeFile(const char* path, std::vector<uint8_t>* bytes) {
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat info;
  int64_t length = -1;
  if (fstat(fd, &info) == 0 && info.st_size >= 0) {
    bytes->resize(static_cast<size_t>(info.st_size));
    length = 0;
    while (length < info.st_size) {
      const ssize_t got = read(fd, bytes->data() + length, static_cast<size_t>(info.st_size - length));
      if (got < 0) {
        length = -1;
        break;
      }
      if (got == 0) break;  // the file shrank: parse what came
      length += got;
    }
  }
  close(fd);
  return length;
}

// sum / count rounded as numpy rounds it: -ffast-math would multiply by a rounded 1 / count instead.
__attribute__((optimize("no-fast-math"), noinline)) float ExactQuotient(float sum, float count) {
  return sum / count;
}

// A WAV file's bytes [length] -> its 16-bit PCM samples mixed to mono in out: ds2_read_pcm16_wav.
int64_t ParsePcm16Wav(const uint8_t* data, int64_t length, float* out, int64_t capacity, uint32_t* rate) {
  if (length < 12 || std::memcmp(data, "RIFF", 4) != 0 || std::memcmp(data + 8, "WAVE", 4) != 0) return -1;
  auto u16 = [&](int64_t at) { return static_cast<uint32_t>(data[at] | data[at + 1] << 8); };
  auto u32 = [&](int64_t at) { return u16(at) | u16(at + 2) << 16; };
  int64_t position = 12;
  int channels = 0, bits = 0, tag = 0;
  bool have_format = false;
  while (position + 8 <= length) {
    const int64_t size = u32(position + 4), body = position + 8;
    if (std::memcmp(data + position, "fmt ", 4) == 0) {
      if (size < 16 || body + 16 > length) return -1;
      tag = static_cast<int>(u16(body));
      channels = static_cast<int>(u16(body + 2));
      *rate = u32(body + 4);
      bits = static_cast<int>(u16(body + 14));
      have_format = true;
    } else if (std::memcmp(data + position, "data", 4) == 0) {
      if (!have_format || size == 0 || tag != 1 || bits != 16 || channels < 1) return -1;
      const int64_t frames = (std::min(length, body + size) - body) / (2 * channels);
      if (frames > capacity) return -1;
      const uint8_t* pcm = data + body;  // little-endian int16, possibly at an odd offset
      constexpr float kScale = 1.0f / 32768.0f;
      auto sample = [&](int64_t at) {
        int16_t value;
        std::memcpy(&value, pcm + 2 * at, 2);
        return static_cast<float>(value) * kScale;
      };
      if (channels == 1) {
        for (int64_t i = 0; i < frames; ++i) out[i] = sample(i);
      } else {  // as numpy's float32 mean: the scaled values summed in order, then divided
        const float count = static_cast<float>(channels);
        for (int64_t i = 0; i < frames; ++i) {
          float sum = 0.0f;
          for (int c = 0; c < channels; ++c) sum += sample(i * channels + c);
          out[i] = ExactQuotient(sum, count);
        }
      }
      return frames;
    }
    position = body + size + (size & 1);
  }
  return -1;
}

}  // namespace

extern "C" {

// samples [num_samples] -> out [num_frames, dim], num_frames = 1 + (num_samples - window) / stride,
// dim = n_mels when mel is given ([n_mels, n_fft / 2 + 1], row-major) else n_fft / 2 + 1:
// out = log(mel @ |rfft(frame * hann, n_fft)|^2 + log_floor), or log(power + log_floor) without mel.
// mel_bins [n_mels][2]: each mel row's bins [first, last) outside which it is zero (the triangles
// cover a few bins each); the caller keeps them with the matrix, since scanning 80 rows for them
// cost a tenth of a 3 s clip's fbank.
// Returns 0, or -1 when n_fft is not a power of two of at least 4 or the window exceeds it.
int ds2_log_power_features(const float* samples, int64_t num_samples, int window, int stride, int n_fft,
                           const float* hann, const float* mel, const int32_t* mel_bins, int n_mels,
                           float log_floor, float* out) {
  thread_local Plan plan;  // made once per FFT size and thread: its cos and sin cost 5 us a call
  if (window > n_fft || window <= 0 || stride <= 0) return -1;
  if (plan.half * 2 != n_fft && !MakePlan(n_fft, &plan)) return -1;
  if (num_samples < window) return 0;
  const int64_t num_frames = 1 + (num_samples - window) / stride;
  const int half = plan.half, bins = half + 1, dim = mel != nullptr ? n_mels : bins;
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
        const int lo = std::max(0, mel_bins[2 * m]), hi = std::min(bins, mel_bins[2 * m + 1]);  // never outside the row
        for (int k = lo; k < hi; ++k) {
          const float weight = mel[m * bins + k];
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) energy[l] += weight * power[k * kLanes + l];
        }
      }
      values = mel_energy.data();
    }
    for (int i = 0; i < dim * kLanes; ++i) logs[i] = std::log(values[i] + log_floor);  // vectorized
    StoreRows(logs.data(), lanes, dim, out + block * dim);
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

// The samples of a 16-bit PCM WAV file at path, mixed to mono (the channels' mean), into
// out [capacity] as float32 in [-1, 1) (libsndfile's scale, 1 / 32768), and its sample rate into *rate.
// The RIFF chunks are walked as utils/audio.read_pcm16_wav walks them (odd chunks padded to even, a
// cut last frame left out). Returns the frames written, or -1 for any other file, an unreadable one,
// an empty data chunk or too small an out: the caller reads it another way and reports.
int64_t ds2_read_pcm16_wav(const char* path, float* out, int64_t capacity, uint32_t* rate) {
  constexpr size_t kKeptBytes = 16 << 20;  // a longer file's buffer is freed after it: long audio in infer.py
  thread_local std::vector<uint8_t> bytes;  // the whole file; reused, so that it stays in cache
  const int64_t length = ReadWholeFile(path, &bytes);
  const int64_t frames = length < 0 ? -1 : ParsePcm16Wav(bytes.data(), length, out, capacity, rate);
  if (bytes.capacity() > kKeptBytes) std::vector<uint8_t>().swap(bytes);
  return frames;
}

// out [n] = clip(samples * gain, -1, 1): the volume perturbation in one pass (numpy's takes two).
void ds2_scale_clip(const float* samples, int64_t n, float gain, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = std::fmin(1.0f, std::fmax(-1.0f, samples[i] * gain));
}

// out [n] = clip(samples + noise * scale, -1, 1): the noise mix in one pass (numpy's takes three).
void ds2_mix_clip(const float* samples, const float* noise, int64_t n, float scale, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = std::fmin(1.0f, std::fmax(-1.0f, samples[i] + noise[i] * scale));
}

}  // extern "C"

namespace {

// The feature front end's settings and tables (ds2_log_power_features' arguments but the samples and
// out), made once per feature config and band limit by utils/features.front_end.
struct FrontEnd {
  int32_t window, stride, n_fft, n_mels;  // n_mels 0: no mel matrix (the power spectrum's bins)
  float log_floor;
  const float* hann;        // [window]
  const float* mel;         // [n_mels][n_fft / 2 + 1] or null
  const int32_t* mel_bins;  // [n_mels][2] or null
};

// The noise clips of the augmentation: clips[i] holds lengths[i] samples.
struct NoiseClips {
  int64_t count;
  const float* const* clips;
  const int64_t* lengths;
};

// Row kinds of a sample's plan (utils/augment.py's STEP_* and EDIT_*, which must match).
enum PlanKind : int {
  kSpeed = 0,      // resample to a samples (cubic)
  kGain = 1,       // times a, clipped to [-1, 1]
  kShift = 2,      // by a samples (later where positive), silence filling, 0 < |a| < length
  kNoise = 3,      // noise clip a from its sample b on (repeating), mixed at c dB SNR, clipped
  kFill = 10,      // the fill of the masks after it := the features' mean
  kFreqMask = 11,  // bands [a, a + b) := fill
  kTimeMask = 12,  // frames [a, a + b) := fill
  kCopy = 13,      // frames [a, a + b) := frames [c, c + b)
};

double SumOfSquares(const float* values, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(values[i]) * values[i];
  return sum;
}

// out [n] = clip(samples + scale * the noise clip's samples from `start` on, repeating, -1, 1), where
// scale sets the mix's signal-to-noise ratio to snr_db (both powers + 1e-10 as utils/augment.add_noise).
void MixNoise(const float* samples, int64_t n, const float* clip, int64_t clip_length, int64_t start, double snr_db,
              float* out) {
  double noise_sum = 0.0;
  for (int64_t done = 0; done < n;) {  // the stretch's power, one contiguous piece of the clip at a time
    const int64_t at = (start + done) % clip_length, piece = std::min(n - done, clip_length - at);
    noise_sum += SumOfSquares(clip + at, piece);
    done += piece;
  }
  const double signal_power = SumOfSquares(samples, n) / n + 1e-10, noise_power = noise_sum / n + 1e-10;
  const float scale = static_cast<float>(std::sqrt(signal_power / (noise_power * std::pow(10.0, snr_db / 10.0))));
  for (int64_t done = 0; done < n;) {
    const int64_t at = (start + done) % clip_length, piece = std::min(n - done, clip_length - at);
    ds2_mix_clip(samples + done, clip + at, piece, scale, out + done);
    done += piece;
  }
}

// features [steps, dim] edited in place by the edit rows of a plan (kinds kFill..kCopy), in order,
// as utils/augment.apply_feature_edits edits them; ranges are cut to the features. False for a row
// of another kind.
bool EditFeatures(float* features, int64_t steps, int dim, const double* rows, int count) {
  auto clamp = [](int64_t value, int64_t limit) { return std::min(std::max<int64_t>(value, 0), limit); };
  float fill = 0.0f;
  for (int r = 0; r < count; ++r) {
    const double* row = rows + 4 * r;
    const int64_t a = static_cast<int64_t>(row[1]), b = static_cast<int64_t>(row[2]), c = static_cast<int64_t>(row[3]);
    switch (static_cast<int>(row[0])) {
      case kFill:  // numpy's float32 pairwise sum agrees within a few float32 roundings
        fill = steps * dim > 0 ? static_cast<float>(
            std::accumulate(features, features + steps * dim, 0.0) / static_cast<double>(steps * dim)) : 0.0f;
        break;
      case kFreqMask:
        if (b > 0)  // a negative width would make the range run backwards, off the buffer
          for (int64_t t = 0; t < steps; ++t) std::fill(features + t * dim + clamp(a, dim), features + t * dim + clamp(a + b, dim), fill);
        break;
      case kTimeMask:
        if (b > 0) std::fill(features + clamp(a, steps) * dim, features + clamp(a + b, steps) * dim, fill);
        break;
      case kCopy:
        if (a >= 0 && c >= 0 && a < steps && c < steps) {
          const int64_t rows_copied = std::min({b, steps - a, steps - c});
          if (rows_copied > 0) std::memmove(features + a * dim, features + c * dim, rows_copied * dim * sizeof(float));
        }
        break;
      default:
        return false;
    }
  }
  return true;
}

}  // namespace

extern "C" {

// One training sample's features from its decoded audio samples [num_samples] and its plan
// [num_rows][4] (utils/augment.py's Augmentation.draw_plan): the audio rows in order (kSpeed..kNoise),
// the features of the result into out [out_rows][dim] (ds2_log_power_features with front_end's
// settings), then the edit rows (kFill..kCopy) on them. What a loader worker did in a dozen numpy
// and ctypes calls a sample, in one, through two buffers per thread that are reused.
// Returns the frames written, or -1 for a row of an unknown kind or out of order, a noise clip that
// does not exist, a front end it cannot compute, or out_rows other than the result's frame count.
int64_t ds2_sample_features(const float* samples, int64_t num_samples, const double* plan, int num_rows,
                            const NoiseClips* noise, const FrontEnd* front_end, float* out, int64_t out_rows) {
  constexpr size_t kKeptFloats = 4 << 20;  // buffers past 16 MB are freed after the call (long audio)
  thread_local std::vector<float> buffers[2];
  const float* current = samples;
  int64_t length = num_samples;
  int row = 0, next = 0;
  for (; row < num_rows && plan[4 * row] < kFill; ++row) {
    const double* step = plan + 4 * row;
    const int kind = static_cast<int>(step[0]);
    const int64_t new_length = kind == kSpeed ? static_cast<int64_t>(step[1]) : length;
    if (new_length <= 0) return -1;
    std::vector<float>& target = buffers[next];
    if (target.size() < static_cast<size_t>(new_length)) target.resize(new_length);
    float* to = target.data();
    if (kind == kSpeed) {
      ds2_cubic_resample(current, length, to, new_length);
    } else if (kind == kGain) {
      ds2_scale_clip(current, length, static_cast<float>(step[1]), to);
    } else if (kind == kShift) {
      const int64_t shift = static_cast<int64_t>(step[1]);
      if (shift == 0 || std::abs(shift) >= length) return -1;
      if (shift > 0) {
        std::fill(to, to + shift, 0.0f);
        std::memcpy(to + shift, current, (length - shift) * sizeof(float));
      } else {
        std::memcpy(to, current - shift, (length + shift) * sizeof(float));
        std::fill(to + length + shift, to + length, 0.0f);
      }
    } else if (kind == kNoise) {
      const int64_t clip = static_cast<int64_t>(step[1]), start = static_cast<int64_t>(step[2]);
      if (noise == nullptr || clip < 0 || clip >= noise->count || noise->lengths[clip] <= 0 || start < 0) return -1;
      MixNoise(current, length, noise->clips[clip], noise->lengths[clip], start, step[3], to);
    } else {
      return -1;
    }
    current = to;
    length = new_length;
    next = 1 - next;
  }
  int64_t frames = -1;
  const int64_t expected = length < front_end->window ? 0 : 1 + (length - front_end->window) / front_end->stride;
  if (expected == out_rows &&
      ds2_log_power_features(current, length, front_end->window, front_end->stride, front_end->n_fft, front_end->hann,
                             front_end->mel, front_end->mel_bins, front_end->n_mels, front_end->log_floor, out) == 0) {
    const int dim = front_end->mel != nullptr ? front_end->n_mels : front_end->n_fft / 2 + 1;
    if (EditFeatures(out, out_rows, dim, plan + 4 * row, num_rows - row)) frames = out_rows;
  }
  for (std::vector<float>& buffer : buffers) {
    if (buffer.capacity() > kKeptFloats) std::vector<float>().swap(buffer);
  }
  return frames;
}

}  // extern "C"

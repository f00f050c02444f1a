// CPU kernels for the interaction family: one pass over x per sample, parallel over the batch
// (at::parallel_for), inner loops over the embedding dim written for the compiler to vectorise.
// Everything accumulates in fp32; fp16/bf16 are converted on load and on store.
#include "cpu/interaction.h"

#include <ATen/Parallel.h>

#include <vector>

#include "cpu/alloc.h"
#include "registration.h"

namespace rankops::cpu {
namespace {

// Samples per task: enough work per task to amortise scheduling, few enough to balance cores.
int64_t grain(int64_t per_sample_work) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_sample_work)); }

template <typename T>
inline void load_row(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<float>(src[d]);
}

// FM works on column chunks of kChunk dims: the chunk's field sums live in registers while the
// loop runs over the sample's fields (which sit in L1), instead of round-tripping through memory.
constexpr int64_t kChunk = 16;

// s[t] = sum_f x[f, d0+t], q[t] = sum_f x[f, d0+t]^2 for t < n (n == kChunk when kFull: unrolled).
template <typename T, bool kFull>
inline void chunk_sums(const T* xb, int64_t F, int64_t D, int64_t d0, float* s, float* q) {
  const int64_t n = kFull ? kChunk : D - d0;
  for (int64_t t = 0; t < kChunk; ++t) s[t] = q[t] = 0.f;
  for (int64_t f = 0; f < F; ++f) {
    const T* row = xb + f * D + d0;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) {
      const float v = static_cast<float>(row[t]);
      s[t] += v;
      q[t] += v * v;
    }
  }
}

template <typename T, bool kFull>
inline float fm_forward_chunk(const T* xb, T* ob, int64_t F, int64_t D, int64_t d0, bool reduce) {
  const int64_t n = kFull ? kChunk : D - d0;
  float s[kChunk], q[kChunk];
  chunk_sums<T, kFull>(xb, F, D, d0, s, q);
  float acc = 0.f;
  if (reduce) {
#pragma omp simd reduction(+ : acc)
    for (int64_t t = 0; t < n; ++t) acc += s[t] * s[t] - q[t];
  } else {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) ob[d0 + t] = static_cast<T>(0.5f * (s[t] * s[t] - q[t]));
  }
  return acc;
}

// Wide rows (D >= kWide): the sample's rows are read in order, each whole, with the field sums of
// every column in a D-float buffer (L1). Chunk by chunk the read would hop 2*D bytes between rows and
// restart at each chunk: a pattern DRAM prefetching serves worse than one sequential stream once x
// no longer fits in the last-level cache (22% of bandwidth at D=128 against 97% at D=16).
constexpr int64_t kWide = 64;

template <typename T>
inline void row_sums(const T* xb, int64_t F, int64_t D, float* s, float* q) {
  for (int64_t d = 0; d < D; ++d) s[d] = 0.f;
  if (q != nullptr)
    for (int64_t d = 0; d < D; ++d) q[d] = 0.f;
  for (int64_t f = 0; f < F; ++f) {
    const T* row = xb + f * D;
    if (q != nullptr) {
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        const float v = static_cast<float>(row[d]);
        s[d] += v;
        q[d] += v * v;
      }
    } else {
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) s[d] += static_cast<float>(row[d]);
    }
  }
}

template <typename T>
void fm_forward_kernel(const T* x, T* out, int64_t B, int64_t F, int64_t D, bool reduce) {
  if (D >= kWide) {
    at::parallel_for(0, B, grain(F * D), [&](int64_t b0, int64_t b1) {
      std::vector<float> buf(2 * D);
      float *s = buf.data(), *q = s + D;
      for (int64_t b = b0; b < b1; ++b) {
        row_sums(x + b * F * D, F, D, s, q);
        if (reduce) {
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t d = 0; d < D; ++d) acc += s[d] * s[d] - q[d];
          out[b] = static_cast<T>(0.5f * acc);
        } else {
          T* ob = out + b * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) ob[d] = static_cast<T>(0.5f * (s[d] * s[d] - q[d]));
        }
      }
    });
    return;
  }
  at::parallel_for(0, B, grain(F * D), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = x + b * F * D;
      T* ob = out + b * D;  // unused when reduce
      float total = 0.f;
      int64_t d0 = 0;
      for (; d0 + kChunk <= D; d0 += kChunk) total += fm_forward_chunk<T, true>(xb, ob, F, D, d0, reduce);
      if (d0 < D) total += fm_forward_chunk<T, false>(xb, ob, F, D, d0, reduce);
      if (reduce) out[b] = static_cast<T>(0.5f * total);
    }
  });
}

// d out / d x[f,d] = g * (s[d] - x[f,d]); s is recomputed per chunk (the sample's rows are in L1).
template <typename T, bool kFull>
inline void fm_backward_chunk(const T* gb, const T* xb, T* gxb, int64_t F, int64_t D, int64_t d0, bool reduce) {
  const int64_t n = kFull ? kChunk : D - d0;
  float s[kChunk], q[kChunk], g[kChunk];
  chunk_sums<T, kFull>(xb, F, D, d0, s, q);  // q is dead: the compiler drops it
  for (int64_t t = 0; t < kChunk; ++t) g[t] = reduce ? static_cast<float>(gb[0]) : (t < n ? static_cast<float>(gb[d0 + t]) : 0.f);
  for (int64_t f = 0; f < F; ++f) {
    const T* row = xb + f * D + d0;
    T* grow = gxb + f * D + d0;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) grow[t] = static_cast<T>(g[t] * (s[t] - static_cast<float>(row[t])));
  }
}

template <typename T>
void fm_backward_kernel(const T* grad, const T* x, T* gx, int64_t B, int64_t F, int64_t D, bool reduce) {
  if (D >= kWide) {  // rows in order (see kWide): the second read of the sample's rows hits L1/L2
    at::parallel_for(0, B, grain(2 * F * D), [&](int64_t b0, int64_t b1) {
      std::vector<float> buf(2 * D);
      float *s = buf.data(), *g = s + D;
      for (int64_t b = b0; b < b1; ++b) {
        const T* xb = x + b * F * D;
        T* gxb = gx + b * F * D;
        row_sums<T>(xb, F, D, s, nullptr);
        for (int64_t d = 0; d < D; ++d) g[d] = static_cast<float>(reduce ? grad[b] : grad[b * D + d]);
        for (int64_t f = 0; f < F; ++f) {
          const T* row = xb + f * D;
          T* grow = gxb + f * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) grow[d] = static_cast<T>(g[d] * (s[d] - static_cast<float>(row[d])));
        }
      }
    });
    return;
  }
  at::parallel_for(0, B, grain(2 * F * D), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* gb = grad + (reduce ? b : b * D);
      const T* xb = x + b * F * D;
      T* gxb = gx + b * F * D;
      int64_t d0 = 0;
      for (; d0 + kChunk <= D; d0 += kChunk) fm_backward_chunk<T, true>(gb, xb, gxb, F, D, d0, reduce);
      if (d0 < D) fm_backward_chunk<T, false>(gb, xb, gxb, F, D, d0, reduce);
    }
  });
}

constexpr int64_t kLanes = 8;  // floats per AVX2 register
constexpr int64_t kRows = 4;   // rows of the output computed together (4 x 2 accumulator registers)

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Gram lower triangle of one sample. x is transposed into xt[d][j] (fields padded with zeros to a
// multiple of 2*kLanes) so that a block of kRows rows i times 2*kLanes partners j accumulates in
// registers over d: each xt load feeds kRows FMAs and nothing is summed horizontally.
template <typename T>
void dot_forward_kernel(const T* x, T* out, int64_t B, int64_t F, int64_t D, bool self) {
  const int64_t P = self ? F * (F + 1) / 2 : F * (F - 1) / 2;
  constexpr int64_t W = 2 * kLanes;
  const int64_t Fp = round_up(F, W);
  at::parallel_for(0, B, grain(F * F * D / 2 + 1), [&](int64_t b0, int64_t b1) {
    std::vector<float> xt_buf(D * Fp, 0.f), xi_buf(kRows * D, 0.f);
    float* xt = xt_buf.data();
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = x + b * F * D;
      for (int64_t f = 0; f < F; ++f)
        for (int64_t d = 0; d < D; ++d) xt[d * Fp + f] = static_cast<float>(xb[f * D + d]);
      T* ob = out + b * P;
      for (int64_t i0 = 0; i0 < F; i0 += kRows) {
        const int64_t rows = std::min(kRows, F - i0);
        const int64_t n_max = self ? i0 + rows : i0 + rows - 1;  // partners j < n_max cover every row
        for (int64_t jb = 0; jb < n_max; jb += W) {
          float acc[kRows][W] = {};
          for (int64_t d = 0; d < D; ++d) {
            const float* col = xt + d * Fp + jb;
            for (int64_t r = 0; r < kRows; ++r) {
              // no `r < rows` test: rows past F read xt's zero padding (i0 + r < Fp, as i0 and Fp
              // are multiples of kRows); the test made GCC keep acc on the stack, one store per FMA
              const float xi = xt[d * Fp + i0 + r];
#pragma omp simd
              for (int64_t t = 0; t < W; ++t) acc[r][t] += xi * col[t];
            }
          }
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            const int64_t n = self ? i + 1 : i;  // row i's partners: j < n
            const int64_t row_start = self ? i * (i + 1) / 2 : i * (i - 1) / 2;
            for (int64_t t = 0; t < W && jb + t < n; ++t) ob[row_start + jb + t] = static_cast<T>(acc[r][t]);
          }
        }
      }
    }
  });
}

// gx = (G + G^T) x with G the lower triangle of grad (the diagonal counted twice with self).
// Blocks of kRows output rows times 2*kLanes dims accumulate in registers over the partner j.
template <typename T>
void dot_backward_kernel(const T* grad, const T* x, T* gx, int64_t B, int64_t F, int64_t D, bool self) {
  const int64_t P = self ? F * (F + 1) / 2 : F * (F - 1) / 2;
  constexpr int64_t W = 2 * kLanes;
  const int64_t Dp = round_up(D, W);
  const int64_t Fr = round_up(F, kRows);
  at::parallel_for(0, B, grain(F * F * D + 1), [&](int64_t b0, int64_t b1) {
    std::vector<float> sym_buf(Fr * F), x_buf(F * Dp, 0.f);
    float* sym = sym_buf.data();
    float* xf = x_buf.data();
    for (int64_t b = b0; b < b1; ++b) {
      const T* gb = grad + b * P;
      std::fill(sym, sym + Fr * F, 0.f);
      int64_t p = 0;
      for (int64_t i = self ? 0 : 1; i < F; ++i) {
        const int64_t n = self ? i + 1 : i;
        for (int64_t j = 0; j < n; ++j, ++p) {
          const float g = static_cast<float>(gb[p]);
          sym[i * F + j] += g;
          sym[j * F + i] += g;
        }
      }
      const T* xb = x + b * F * D;
      for (int64_t f = 0; f < F; ++f) load_row(xb + f * D, xf + f * Dp, D);
      T* out = gx + b * F * D;
      for (int64_t i0 = 0; i0 < F; i0 += kRows) {
        const int64_t rows = std::min(kRows, F - i0);
        for (int64_t d0 = 0; d0 < D; d0 += W) {
          float acc[kRows][W] = {};
          for (int64_t j = 0; j < F; ++j) {
            const float* xj = xf + j * Dp + d0;
            for (int64_t r = 0; r < kRows; ++r) {
              const float w = sym[(i0 + r) * F + j];  // rows past F are zero padding
#pragma omp simd
              for (int64_t t = 0; t < W; ++t) acc[r][t] += w * xj[t];
            }
          }
          const int64_t width = std::min(W, D - d0);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t t = 0; t < width; ++t) out[(i0 + r) * D + d0 + t] = static_cast<T>(acc[r][t]);
        }
      }
    }
  });
}

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be [B, F, D], got ", x.sizes());
}

}  // namespace

at::Tensor fm_interaction(const at::Tensor& x_, bool reduce) {
  check_x(x_, "fm_interaction");
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  auto out = at::empty({B, reduce ? 1 : D}, x.options());
  RANKOPS_DISPATCH_FLOAT(x.scalar_type(), "fm_interaction", [&] {
    fm_forward_kernel(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, F, D, reduce);
  });
  return out;
}

at::Tensor fm_interaction_backward(const at::Tensor& grad_, const at::Tensor& x_, bool reduce) {
  check_x(x_, "fm_interaction_backward");
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  const auto grad = grad_.to(x.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == B * (reduce ? 1 : D), "fm_interaction_backward: grad has shape ", grad.sizes());
  auto gx = empty_large_like(x);  // huge pages, reused: a fresh [B, F, D] of torch faults 4 KiB at a time
  RANKOPS_DISPATCH_FLOAT(x.scalar_type(), "fm_interaction_backward", [&] {
    fm_backward_kernel(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), B, F, D, reduce);
  });
  return gx;
}

at::Tensor dot_interaction(const at::Tensor& x_, bool self_interaction) {
  check_x(x_, "dot_interaction");
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  const int64_t P = self_interaction ? F * (F + 1) / 2 : F * (F - 1) / 2;
  auto out = at::empty({B, P}, x.options());
  RANKOPS_DISPATCH_FLOAT(x.scalar_type(), "dot_interaction", [&] {
    dot_forward_kernel(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, F, D, self_interaction);
  });
  return out;
}

at::Tensor dot_interaction_backward(const at::Tensor& grad_, const at::Tensor& x_, bool self_interaction) {
  check_x(x_, "dot_interaction_backward");
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  const int64_t P = self_interaction ? F * (F + 1) / 2 : F * (F - 1) / 2;
  const auto grad = grad_.to(x.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == B * P, "dot_interaction_backward: grad has shape ", grad.sizes());
  auto gx = empty_large_like(x);  // huge pages, reused: a fresh [B, F, D] of torch faults 4 KiB at a time
  RANKOPS_DISPATCH_FLOAT(x.scalar_type(), "dot_interaction_backward", [&] {
    dot_backward_kernel(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), B, F, D,
                        self_interaction);
  });
  return gx;
}

}  // namespace rankops::cpu

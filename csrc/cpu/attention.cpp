// CPU kernels for target attention (padded and jagged), forward and backward.
//
// One task per (sample, head), parallel over B*H (at::parallel_for). A task reads its keys and
// values once, in blocks of kBlock rows, for all Q queries of the sample (online softmax,
// FlashAttention's recurrence): the many candidates of one user share one pass over its sequence.
// Each block is converted to fp32 and transposed (kT[d][j]) so that the score loop runs over keys
// with broadcast query elements (FMAs over contiguous keys, no horizontal sums), then reused from L1
// by every query. The backward recomputes the probabilities from the saved log-sum-exp and owns
// dq, dk, dv of its (sample, head): no atomics, no second pass.
#include "cpu/attention.h"
#include "cpu/fast_math.h"
#include "cpu/parallel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "registration.h"

namespace rankops::cpu {
namespace {

constexpr int64_t kBlock = 64;  // keys per block: kT / vT blocks of 64 x d floats stay in L1 for d <= 64


// Where the keys of task (b, h) live: row j at base + j * stride (elements); len valid rows.
struct KeyRows {
  int64_t base, stride, len;
  int64_t pad = 0;  // rows after len that belong to this task alone (padded inputs), contiguous
};

// dk, dv of the padding are 0. Written by the task that owns them, right after its own rows: one
// touch of fresh memory instead of a zero fill of the whole tensor and then a second pass.
template <typename T>
inline void zero_padding(const KeyRows& rows, T* dk, T* dv) {
  if (rows.pad == 0) return;
  const int64_t start = rows.base + rows.len * rows.stride;
  std::fill(dk + start, dk + start + rows.pad * rows.stride, static_cast<T>(0.f));
  std::fill(dv + start, dv + start + rows.pad * rows.stride, static_cast<T>(0.f));
}

template <typename T>
inline void to_float(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// rows [n][d] (strided in the source) -> dst row-major [n][d] and transposed dstT [d][kBlock].
template <typename T>
inline void load_block(const T* src, int64_t stride, int64_t n, int64_t d, float* dst, float* dstT) {
  for (int64_t j = 0; j < n; ++j) {
    const T* row = src + j * stride;
    float* out = dst ? dst + j * d : nullptr;
    for (int64_t c = 0; c < d; ++c) {
      const float x = static_cast<float>(row[c]);
      if (out) out[c] = x;
      dstT[c * kBlock + j] = x;
    }
  }
}

// s[j] = sum_c a[c] * bT[c][j] for j < n.
inline void scores(const float* a, const float* bT, int64_t n, int64_t d, float* s) {
  std::fill(s, s + n, 0.f);
  for (int64_t c = 0; c < d; ++c) {
    const float x = a[c];
    const float* col = bT + c * kBlock;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] += x * col[j];
  }
}

int64_t grain(int64_t work_per_task) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work_per_task)); }

template <typename T, typename Locate>
void forward_generic(const T* q, const T* k, const T* v, T* out, float* lse, int64_t BH, int64_t Q, int64_t d,
                    int64_t avg_len, float scale, Locate locate) {
  at::parallel_for(0, BH, grain(Q * d * (avg_len + 1)), [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(2 * Q * d + 2 * Q + 2 * kBlock * d + kBlock);
    float* qf = buf.data();  // scaled queries [Q][d]
    float* acc = qf + Q * d;  // unnormalised outputs [Q][d]
    float* m = acc + Q * d;  // running max of each row
    float* l = m + Q;  // running sum of exp(s - m)
    float* kT = l + Q;  // [d][kBlock]
    float* vb = kT + kBlock * d;  // [kBlock][d]
    float* s = vb + kBlock * d;  // [kBlock]
    for (int64_t t = t0; t < t1; ++t) {
      const KeyRows rows = locate(t);
      const T* qt = q + t * Q * d;
      T* ot = out + t * Q * d;
      float* lt = lse + t * Q;
      if (rows.len == 0) {
        std::fill(ot, ot + Q * d, static_cast<T>(0.f));
        std::fill(lt, lt + Q, -std::numeric_limits<float>::infinity());
        continue;
      }
      to_float(qt, qf, Q * d);
#pragma omp simd
      for (int64_t i = 0; i < Q * d; ++i) qf[i] *= scale;
      std::fill(acc, acc + Q * d, 0.f);
      std::fill(m, m + Q, -std::numeric_limits<float>::infinity());
      std::fill(l, l + Q, 0.f);
      for (int64_t j0 = 0; j0 < rows.len; j0 += kBlock) {
        const int64_t n = std::min(kBlock, rows.len - j0);
        const int64_t off = rows.base + j0 * rows.stride;
        load_block(k + off, rows.stride, n, d, nullptr, kT);
        for (int64_t j = 0; j < n; ++j) to_float(v + off + j * rows.stride, vb + j * d, d);
        for (int64_t i = 0; i < Q; ++i) {
          scores(qf + i * d, kT, n, d, s);
          float mx = m[i];
          for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
          const float alpha = exp_nonpos(m[i] - mx);  // m[i] = -inf on the first block: alpha = ~0
          float sum = 0.f;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < n; ++j) {
            s[j] = exp_nonpos(s[j] - mx);
            sum += s[j];
          }
          l[i] = l[i] * alpha + sum;
          m[i] = mx;
          float* a = acc + i * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) a[c] *= alpha;
          for (int64_t j = 0; j < n; ++j) {
            const float p = s[j];
            const float* vr = vb + j * d;
#pragma omp simd
            for (int64_t c = 0; c < d; ++c) a[c] += p * vr[c];
          }
        }
      }
      for (int64_t i = 0; i < Q; ++i) {
        const float inv = 1.f / l[i];
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) ot[i * d + c] = static_cast<T>(acc[i * d + c] * inv);
        lt[i] = m[i] + std::log(l[i]);
      }
    }
  });
}

// dq, dk, dv of one (sample, head): P = exp(scale*S - lse), D_i = dO_i . O_i, dV = P^T dO,
// dS = P * (dO V^T - D), dQ = scale * dS K, dK = scale * dS^T Q. dk/dv rows past len are left to
// the caller (zeroed for padded inputs; jagged inputs have none).
template <typename T, typename Locate>
void backward_generic(const T* grad, const T* q, const T* k, const T* v, const T* out, const float* lse, T* dq,
                     T* dk, T* dv, int64_t BH, int64_t Q, int64_t d, int64_t avg_len, float scale, Locate locate) {
  at::parallel_for(0, BH, grain(3 * Q * d * (avg_len + 1)), [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(4 * Q * d + Q + 5 * kBlock * d + 2 * kBlock);
    float* qf = buf.data();  // queries [Q][d], pre-multiplied by scale so that dK = dS^T qf
    float* g = qf + Q * d;  // dO [Q][d]
    float* dqf = g + Q * d;  // dQ / scale [Q][d]
    float* tmp = dqf + Q * d;  // O [Q][d], only to form delta
    float* delta = tmp + Q * d;  // D_i = dO_i . O_i [Q]
    float* kb = delta + Q;  // key block [kBlock][d]
    float* kT = kb + kBlock * d;  // its transpose [d][kBlock]
    float* vT = kT + kBlock * d;  // value block transposed [d][kBlock]
    float* dkv = vT + kBlock * d;  // dK block [kBlock][d]
    float* dvb = dkv + kBlock * d;  // dV block [kBlock][d]
    float* p = dvb + kBlock * d;  // probabilities of one query row [kBlock]
    float* ds = p + kBlock;  // dS of one query row [kBlock]
    for (int64_t t = t0; t < t1; ++t) {
      const KeyRows rows = locate(t);
      T* dqt = dq + t * Q * d;
      zero_padding(rows, dk, dv);
      if (rows.len == 0) {
        std::fill(dqt, dqt + Q * d, static_cast<T>(0.f));
        continue;
      }
      to_float(q + t * Q * d, qf, Q * d);
#pragma omp simd
      for (int64_t i = 0; i < Q * d; ++i) qf[i] *= scale;
      to_float(grad + t * Q * d, g, Q * d);
      to_float(out + t * Q * d, tmp, Q * d);
      for (int64_t i = 0; i < Q; ++i) {
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < d; ++c) acc += g[i * d + c] * tmp[i * d + c];
        delta[i] = acc;
      }
      std::fill(dqf, dqf + Q * d, 0.f);
      const float* lt = lse + t * Q;
      for (int64_t j0 = 0; j0 < rows.len; j0 += kBlock) {
        const int64_t n = std::min(kBlock, rows.len - j0);
        const int64_t off = rows.base + j0 * rows.stride;
        load_block(k + off, rows.stride, n, d, kb, kT);
        load_block(v + off, rows.stride, n, d, nullptr, vT);
        std::fill(dkv, dkv + n * d, 0.f);
        std::fill(dvb, dvb + n * d, 0.f);
        for (int64_t i = 0; i < Q; ++i) {
          const float* qi = qf + i * d;
          const float* gi = g + i * d;
          scores(qi, kT, n, d, p);
          scores(gi, vT, n, d, ds);
          const float li = lt[i], di = delta[i];
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            p[j] = exp_nonpos(p[j] - li);
            ds[j] = p[j] * (ds[j] - di);
          }
          float* dqi = dqf + i * d;
          for (int64_t j = 0; j < n; ++j) {
            const float pj = p[j], sj = ds[j];
            const float* kr = kb + j * d;
            float* dkr = dkv + j * d;
            float* dvr = dvb + j * d;
#pragma omp simd
            for (int64_t c = 0; c < d; ++c) {
              dvr[c] += pj * gi[c];
              dkr[c] += sj * qi[c];  // qi carries the scale
              dqi[c] += sj * kr[c];
            }
          }
        }
        for (int64_t j = 0; j < n; ++j) {
          T* dkr = dk + off + j * rows.stride;
          T* dvr = dv + off + j * rows.stride;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) {
            dkr[c] = static_cast<T>(dkv[j * d + c]);
            dvr[c] = static_cast<T>(dvb[j * d + c]);
          }
        }
      }
#pragma omp simd
      for (int64_t i = 0; i < Q * d; ++i) dqt[i] = static_cast<T>(dqf[i] * scale);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Register-blocked kernels for head dims up to 64 (GCC/Clang vector extensions: 8 floats, one AVX
// register). A key block is 64 keys = 8 vectors; scores of one query against the block stay in 8
// registers while streaming the transposed block kT[d][64]; outputs of one row (d <= 64 floats)
// stay in DV = ceil(d/8) registers. DV is a template parameter so those arrays are indexed by
// constants only and never spill to the stack.

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8 ld(const float* p) {
  v8 r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
inline void st(float* p, v8 x) { std::memcpy(p, &x, sizeof(x)); }
inline float hsum(v8 x) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += x[i];
  return s;
}
inline float hmax(v8 x) {
  float m = x[0];
  for (int i = 1; i < 8; ++i) m = std::max(m, x[i]);
  return m;
}

// exp_nonpos on 8 lanes; round-to-nearest by the 1.5*2^23 trick (|t| < 2^22 after the clamp).
inline v8 vexp_nonpos(v8 x) {
  x = x < -87.0f ? v8{} - 87.0f : x;
  const v8 t = x * 1.44269504088896341f;
  const v8 r = (t + 12582912.0f) - 12582912.0f;
  const v8 f = t - r;
  v8 p = v8{} + 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const v8i e = (__builtin_convertvector(r, v8i) + 127) << 23;
  return p * (v8)e;  // a vector cast reinterprets the bits
}

// s[0:64] = sum_c a[c] * bT[c][0:64], left in 8 registers.
inline void block_scores(const float* a, const float* bT, int64_t d, v8 (&s)[8]) {
#pragma GCC unroll 8
  for (int jv = 0; jv < 8; ++jv) s[jv] = v8{};
  for (int64_t c = 0; c < d; ++c) {
    const float x = a[c];
    const float* row = bT + c * kBlock;
#pragma GCC unroll 8
    for (int jv = 0; jv < 8; ++jv) s[jv] += x * ld(row + 8 * jv);
  }
}

// A block of n <= 64 key rows -> rows [64][8*DV] (zero padded) and/or transposed [d][64] (zero padded).
template <int DV, typename T>
inline void load_block_fast(const T* src, int64_t stride, int64_t n, int64_t d, float* rows, float* colsT) {
  constexpr int64_t dp = 8 * DV;
  if (colsT) std::fill(colsT, colsT + d * kBlock, 0.f);
  if (rows) std::fill(rows + n * dp, rows + kBlock * dp, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const T* r = src + j * stride;
    float* out = rows ? rows + j * dp : nullptr;
    for (int64_t c = 0; c < d; ++c) {
      const float x = static_cast<float>(r[c]);
      if (out) out[c] = x;
      if (colsT) colsT[c * kBlock + j] = x;
    }
    if (out) std::fill(out + d, out + dp, 0.f);
  }
}

template <int DV, typename T>
inline void load_rows_padded(const T* src, int64_t rows, int64_t d, float* dst) {
  constexpr int64_t dp = 8 * DV;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < d; ++c) dst[i * dp + c] = static_cast<float>(src[i * d + c]);
    for (int64_t c = d; c < dp; ++c) dst[i * dp + c] = 0.f;
  }
}

template <int DV, int R>
inline void accumulate_rows(float* acc, const float* alpha, const float* P, const float* vb, int64_t n) {
  constexpr int64_t dp = 8 * DV;
  v8 a[R][DV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int cv = 0; cv < DV; ++cv) a[r][cv] = ld(acc + r * dp + 8 * cv) * alpha[r];
  for (int64_t j = 0; j < n; ++j) {
    v8 vr[DV];
#pragma GCC unroll 8
    for (int cv = 0; cv < DV; ++cv) vr[cv] = ld(vb + j * dp + 8 * cv);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float pj = P[r * kBlock + j];
#pragma GCC unroll 8
      for (int cv = 0; cv < DV; ++cv) a[r][cv] += pj * vr[cv];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int cv = 0; cv < DV; ++cv) st(acc + r * dp + 8 * cv, a[r][cv]);
}

template <int DV, typename T, typename Locate>
void forward_fast(const T* q, const T* k, const T* v, T* out, float* lse, int64_t BH, int64_t Q, int64_t d,
                  int64_t avg_len, float scale, Locate locate) {
  constexpr int64_t dp = 8 * DV;
  at::parallel_for(0, BH, grain(Q * d * (avg_len + 1)), [&](int64_t t0, int64_t t1) {
    constexpr int R = DV >= 8 ? 1 : (DV >= 3 ? 2 : 4);
    std::vector<float> buf(2 * Q * dp + 3 * Q + kBlock * d + kBlock * dp + Q * kBlock);
    float* qs = buf.data();  // scaled queries [Q][dp]
    float* acc = qs + Q * dp;  // unnormalised outputs [Q][dp]
    float* m = acc + Q * dp;
    float* l = m + Q;
    float* alpha = l + Q;  // rescale of each row's acc for the current block
    float* kT = alpha + Q;  // [d][64]
    float* vb = kT + kBlock * d;  // [64][dp]
    float* P = vb + kBlock * dp;  // [Q][64]
    for (int64_t t = t0; t < t1; ++t) {
      const KeyRows rows = locate(t);
      T* ot = out + t * Q * d;
      float* lt = lse + t * Q;
      if (rows.len == 0) {
        std::fill(ot, ot + Q * d, static_cast<T>(0.f));
        std::fill(lt, lt + Q, -std::numeric_limits<float>::infinity());
        continue;
      }
      load_rows_padded<DV>(q + t * Q * d, Q, d, qs);
      for (int64_t i = 0; i < Q * dp; ++i) qs[i] *= scale;
      std::fill(acc, acc + Q * dp, 0.f);
      std::fill(m, m + Q, -std::numeric_limits<float>::infinity());
      std::fill(l, l + Q, 0.f);
      for (int64_t j0 = 0; j0 < rows.len; j0 += kBlock) {
        const int64_t n = std::min(kBlock, rows.len - j0);
        const int64_t off = rows.base + j0 * rows.stride;
        load_block_fast<DV>(k + off, rows.stride, n, d, nullptr, kT);
        load_block_fast<DV>(v + off, rows.stride, n, d, vb, nullptr);
        // phase 1: the probabilities of every query row against the block, and the rescale factors
        for (int64_t i = 0; i < Q; ++i) {
          v8 s[8];
          block_scores(qs + i * dp, kT, d, s);
          float* p = P + i * kBlock;
#pragma GCC unroll 8
          for (int jv = 0; jv < 8; ++jv) st(p + 8 * jv, s[jv]);
          for (int64_t j = n; j < kBlock; ++j) p[j] = -std::numeric_limits<float>::infinity();
          v8 mv = ld(p);
#pragma GCC unroll 8
          for (int jv = 1; jv < 8; ++jv) {
            const v8 x = ld(p + 8 * jv);
            mv = mv > x ? mv : x;
          }
          const float mx = std::max(m[i], hmax(mv));
          alpha[i] = exp_nonpos(m[i] - mx);
          v8 sum = v8{};
#pragma GCC unroll 8
          for (int jv = 0; jv < 8; ++jv) {
            const v8 e = vexp_nonpos(ld(p + 8 * jv) - mx);
            st(p + 8 * jv, e);
            sum += e;
          }
          float tail = 0.f;  // exp of the -inf padding is clamped to ~1e-38, not 0: take it out
          for (int64_t j = n; j < kBlock; ++j) {
            tail += p[j];
            p[j] = 0.f;
          }
          l[i] = l[i] * alpha[i] + (hsum(sum) - tail);
          m[i] = mx;
        }
        // phase 2: acc = alpha * acc + P V, R query rows at a time so that each value row loaded
        // feeds R * DV independent FMA chains (d = 16 alone would leave 2 chains, latency-bound)
        int64_t i = 0;
        for (; i + R <= Q; i += R) accumulate_rows<DV, R>(acc + i * dp, alpha + i, P + i * kBlock, vb, n);
        for (; i < Q; ++i) accumulate_rows<DV, 1>(acc + i * dp, alpha + i, P + i * kBlock, vb, n);
      }
      for (int64_t i = 0; i < Q; ++i) {
        const float inv = 1.f / l[i];
        for (int64_t c = 0; c < d; ++c) ot[i * d + c] = static_cast<T>(acc[i * dp + c] * inv);
        lt[i] = m[i] + std::log(l[i]);
      }
    }
  });
}

// outT[c][0:64] = sum_i x[i][c] * Y[i][0:64] for c < d (x rows of stride dp, Y rows of 64).
inline void transposed_products(const float* x, const float* Y, int64_t Q, int64_t d, int64_t dp, float* outT) {
  for (int64_t c = 0; c < d; ++c) {
    v8 a[8];
#pragma GCC unroll 8
    for (int jv = 0; jv < 8; ++jv) a[jv] = v8{};
    for (int64_t i = 0; i < Q; ++i) {
      const float xc = x[i * dp + c];
      const float* Yi = Y + i * kBlock;
#pragma GCC unroll 8
      for (int jv = 0; jv < 8; ++jv) a[jv] += xc * ld(Yi + 8 * jv);
    }
#pragma GCC unroll 8
    for (int jv = 0; jv < 8; ++jv) st(outT + c * kBlock + 8 * jv, a[jv]);
  }
}

template <int DV, typename T, typename Locate>
void backward_fast(const T* grad, const T* q, const T* k, const T* v, const T* out, const float* lse, T* dq, T* dk,
                   T* dv, int64_t BH, int64_t Q, int64_t d, int64_t avg_len, float scale, Locate locate) {
  constexpr int64_t dp = 8 * DV;
  at::parallel_for(0, BH, grain(3 * Q * d * (avg_len + 1)), [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(4 * Q * dp + Q + 2 * Q * kBlock + 4 * kBlock * d + kBlock * dp);
    float* qs = buf.data();  // queries * scale [Q][dp]
    float* g = qs + Q * dp;  // dO [Q][dp]
    float* dqf = g + Q * dp;  // dQ / scale [Q][dp]
    float* o = dqf + Q * dp;  // O [Q][dp]
    float* delta = o + Q * dp;  // [Q]
    float* P = delta + Q;  // [Q][64]
    float* dS = P + Q * kBlock;  // [Q][64]
    float* kT = dS + Q * kBlock;  // [d][64]
    float* vT = kT + kBlock * d;  // [d][64]
    float* dkT = vT + kBlock * d;  // [d][64]
    float* dvT = dkT + kBlock * d;  // [d][64]
    float* kb = dvT + kBlock * d;  // [64][dp]
    for (int64_t t = t0; t < t1; ++t) {
      const KeyRows rows = locate(t);
      T* dqt = dq + t * Q * d;
      zero_padding(rows, dk, dv);
      if (rows.len == 0) {
        std::fill(dqt, dqt + Q * d, static_cast<T>(0.f));
        continue;
      }
      load_rows_padded<DV>(q + t * Q * d, Q, d, qs);
      for (int64_t i = 0; i < Q * dp; ++i) qs[i] *= scale;
      load_rows_padded<DV>(grad + t * Q * d, Q, d, g);
      load_rows_padded<DV>(out + t * Q * d, Q, d, o);
      for (int64_t i = 0; i < Q; ++i) {
        v8 a = v8{};
#pragma GCC unroll 8
        for (int cv = 0; cv < DV; ++cv) a += ld(g + i * dp + 8 * cv) * ld(o + i * dp + 8 * cv);
        delta[i] = hsum(a);
      }
      std::fill(dqf, dqf + Q * dp, 0.f);
      const float* lt = lse + t * Q;
      for (int64_t j0 = 0; j0 < rows.len; j0 += kBlock) {
        const int64_t n = std::min(kBlock, rows.len - j0);
        const int64_t off = rows.base + j0 * rows.stride;
        load_block_fast<DV>(k + off, rows.stride, n, d, kb, kT);
        load_block_fast<DV>(v + off, rows.stride, n, d, nullptr, vT);
        // per query: P and dS rows of the block, and its dQ contribution while dS is hot
        for (int64_t i = 0; i < Q; ++i) {
          v8 s[8], dpv[8];
          block_scores(qs + i * dp, kT, d, s);
          block_scores(g + i * dp, vT, d, dpv);
          const float li = lt[i], di = delta[i];
          float* Pi = P + i * kBlock;
          float* dSi = dS + i * kBlock;
#pragma GCC unroll 8
          for (int jv = 0; jv < 8; ++jv) {
            const v8 pv = vexp_nonpos(s[jv] - li);
            st(Pi + 8 * jv, pv);
            st(dSi + 8 * jv, pv * (dpv[jv] - di));
          }
          for (int64_t j = n; j < kBlock; ++j) Pi[j] = dSi[j] = 0.f;
          v8 a[DV];
          float* dqi = dqf + i * dp;
#pragma GCC unroll 8
          for (int cv = 0; cv < DV; ++cv) a[cv] = ld(dqi + 8 * cv);
          for (int64_t j = 0; j < n; ++j) {
            const float sj = dSi[j];
            const float* kr = kb + j * dp;
#pragma GCC unroll 8
            for (int cv = 0; cv < DV; ++cv) a[cv] += sj * ld(kr + 8 * cv);
          }
#pragma GCC unroll 8
          for (int cv = 0; cv < DV; ++cv) st(dqi + 8 * cv, a[cv]);
        }
        // dV^T[c] = sum_i dO[i][c] P[i],  dK^T[c] = sum_i (scale q[i][c]) dS[i]: 8 accumulators over
        // i, one product at a time (both at once would need all 16 AVX2 registers plus operands)
        transposed_products(g, P, Q, d, dp, dvT);
        transposed_products(qs, dS, Q, d, dp, dkT);
        for (int64_t j = 0; j < n; ++j) {
          T* dkr = dk + off + j * rows.stride;
          T* dvr = dv + off + j * rows.stride;
          for (int64_t c = 0; c < d; ++c) {
            dkr[c] = static_cast<T>(dkT[c * kBlock + j]);
            dvr[c] = static_cast<T>(dvT[c * kBlock + j]);
          }
        }
      }
      for (int64_t i = 0; i < Q; ++i)
        for (int64_t c = 0; c < d; ++c) dqt[i * d + c] = static_cast<T>(dqf[i * dp + c] * scale);
    }
  });
}

// Head dims up to 64 take the register-blocked kernels; larger ones the generic loops.
template <typename T, typename Locate>
void forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, int64_t BH, int64_t Q, int64_t d,
                    int64_t avg_len, float scale, Locate locate) {
  switch ((d + 7) / 8) {
#define RANKOPS_FWD_CASE(DV) \
  case DV: return forward_fast<DV>(q, k, v, out, lse, BH, Q, d, avg_len, scale, locate);
    RANKOPS_FWD_CASE(1) RANKOPS_FWD_CASE(2) RANKOPS_FWD_CASE(3) RANKOPS_FWD_CASE(4)
    RANKOPS_FWD_CASE(5) RANKOPS_FWD_CASE(6) RANKOPS_FWD_CASE(7) RANKOPS_FWD_CASE(8)
#undef RANKOPS_FWD_CASE
    default: return forward_generic(q, k, v, out, lse, BH, Q, d, avg_len, scale, locate);
  }
}

template <typename T, typename Locate>
void backward_kernel(const T* grad, const T* q, const T* k, const T* v, const T* out, const float* lse, T* dq,
                     T* dk, T* dv, int64_t BH, int64_t Q, int64_t d, int64_t avg_len, float scale, Locate locate) {
  switch ((d + 7) / 8) {
#define RANKOPS_BWD_CASE(DV) \
  case DV: return backward_fast<DV>(grad, q, k, v, out, lse, dq, dk, dv, BH, Q, d, avg_len, scale, locate);
    RANKOPS_BWD_CASE(1) RANKOPS_BWD_CASE(2) RANKOPS_BWD_CASE(3) RANKOPS_BWD_CASE(4)
    RANKOPS_BWD_CASE(5) RANKOPS_BWD_CASE(6) RANKOPS_BWD_CASE(7) RANKOPS_BWD_CASE(8)
#undef RANKOPS_BWD_CASE
    default: return backward_generic(grad, q, k, v, out, lse, dq, dk, dv, BH, Q, d, avg_len, scale, locate);
  }
}

void check_common(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t kdim, const char* op) {
  TORCH_CHECK_VALUE(q.dim() == 4, op, ": q must be [B, H, Q, d], got ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == kdim && k.sizes() == v.sizes(), op, ": k and v must be ", kdim, "-D of one shape, got ",
                    k.sizes(), " and ", v.sizes());
  TORCH_CHECK_VALUE(k.size(-1) == q.size(-1) && k.size(kdim - (kdim == 4 ? 3 : 2)) == q.size(1), op,
                    ": q and k disagree on heads or head dim: ", q.sizes(), " vs ", k.sizes());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
                   ": q, k, v must share a dtype");
}

// Per-task key locations. Padded k [B,H,L,d]: task (b,h) = t at t*L*d, stride d.
struct PaddedRows {
  const int64_t* lengths;
  int64_t H, L, d;
  KeyRows operator()(int64_t t) const {
    const int64_t len = lengths[t / H];
    return {t * L * d, d, len, L - len};
  }
};
// Jagged k [S,H,d]: task (b,h) at (offsets[b]*H + h)*d, stride H*d.
struct JaggedRows {
  const int64_t* offsets;
  int64_t H, d;
  KeyRows operator()(int64_t t) const {
    const int64_t b = t / H, h = t % H;
    return {(offsets[b] * H + h) * d, H * d, offsets[b + 1] - offsets[b], 0};
  }
};

void check_lengths(const at::Tensor& lengths, int64_t B, int64_t L) {
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == B && lengths.scalar_type() == at::kLong,
                    "target_attention: lengths must be int64 [B]");
  const int64_t* p = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(p[b] >= 0 && p[b] <= L, "target_attention: lengths[", b, "] = ", p[b], " is outside [0, ", L,
                      "]");
}

void check_offsets(const at::Tensor& offsets, int64_t B, int64_t S) {
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) == B + 1 && offsets.scalar_type() == at::kLong,
                    "jagged_target_attention: offsets must be int64 [B+1]");
  const int64_t* p = offsets.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(p[0] == 0 && p[B] == S, "jagged_target_attention: offsets must run from 0 to S = ", S);
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(p[b + 1] >= p[b], "jagged_target_attention: offsets must be non-decreasing");
}

template <typename Locate>
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           int64_t avg_len, double scale, Locate locate) {
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), d = q.size(3);
  auto out = at::empty_like(q);
  auto lse = at::empty({B, H, Q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) {
    lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, lse};
  }
  RANKOPS_DISPATCH_FLOAT(q.scalar_type(), "target_attention", [&] {
    forward_kernel(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                   lse.data_ptr<float>(), B * H, Q, d, avg_len, static_cast<float>(scale), locate);
  });
  return {out, lse};
}

template <typename Locate>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_, const at::Tensor& q,
                                                        const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& out_, const at::Tensor& lse_,
                                                        int64_t avg_len, double scale, Locate locate) {
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), d = q.size(3);
  const auto grad = grad_.to(q.scalar_type()).contiguous();
  const auto out = out_.to(q.scalar_type()).contiguous();
  const auto lse = lse_.to(at::kFloat).contiguous();
  TORCH_CHECK_VALUE(grad.sizes() == q.sizes() && out.sizes() == q.sizes(), "target_attention_backward: grad ",
                    grad.sizes(), " and out ", out.sizes(), " must match q ", q.sizes());
  TORCH_CHECK_VALUE(lse.numel() == B * H * Q, "target_attention_backward: lse has shape ", lse.sizes());
  auto dq = at::empty_like(q);
  // Every row is written by the kernel: the valid ones with their gradient, the padding with 0.
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  if (q.numel() == 0 || d == 0) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  RANKOPS_DISPATCH_FLOAT(q.scalar_type(), "target_attention_backward", [&] {
    backward_kernel(grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                    v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<float>(), dq.data_ptr<scalar_t>(),
                    dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), B * H, Q, d, avg_len,
                    static_cast<float>(scale), locate);
  });
  return {dq, dk, dv};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> target_attention(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                    const at::Tensor& lengths_, double scale) {
  check_common(q_, k_, v_, 4, "target_attention");
  TORCH_CHECK_VALUE(k_.size(0) == q_.size(0), "target_attention: q and k disagree on the batch");
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto lengths = lengths_.to(at::kLong).contiguous();
  const int64_t H = q.size(1), L = k.size(2), d = q.size(3);
  check_lengths(lengths, q.size(0), L);
  return forward(q, k, v, L, scale, PaddedRows{lengths.data_ptr<int64_t>(), H, L, d});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> target_attention_backward(const at::Tensor& grad, const at::Tensor& q_,
                                                                         const at::Tensor& k_, const at::Tensor& v_,
                                                                         const at::Tensor& lengths_,
                                                                         const at::Tensor& out, const at::Tensor& lse,
                                                                         double scale) {
  check_common(q_, k_, v_, 4, "target_attention_backward");
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto lengths = lengths_.to(at::kLong).contiguous();
  const int64_t H = q.size(1), L = k.size(2), d = q.size(3);
  check_lengths(lengths, q.size(0), L);
  return backward(grad, q, k, v, out, lse, L, scale, PaddedRows{lengths.data_ptr<int64_t>(), H, L, d});
}

std::tuple<at::Tensor, at::Tensor> jagged_target_attention(const at::Tensor& q_, const at::Tensor& k_,
                                                           const at::Tensor& v_, const at::Tensor& offsets_,
                                                           double scale) {
  check_common(q_, k_, v_, 3, "jagged_target_attention");
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto offsets = offsets_.to(at::kLong).contiguous();
  const int64_t B = q.size(0), H = q.size(1), d = q.size(3), S = k.size(0);
  check_offsets(offsets, B, S);
  return forward(q, k, v, B ? S / B : 0, scale, JaggedRows{offsets.data_ptr<int64_t>(), H, d});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> jagged_target_attention_backward(
    const at::Tensor& grad, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& offsets_, const at::Tensor& out, const at::Tensor& lse, double scale) {
  check_common(q_, k_, v_, 3, "jagged_target_attention_backward");
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto offsets = offsets_.to(at::kLong).contiguous();
  const int64_t B = q.size(0), H = q.size(1), d = q.size(3), S = k.size(0);
  check_offsets(offsets, B, S);
  // Every packed row belongs to exactly one sample and is written by its tasks: no zero fill.
  return backward(grad, q, k, v, out, lse, B ? S / B : 0, scale,
                  JaggedRows{offsets.data_ptr<int64_t>(), H, d});
}

}  // namespace rankops::cpu

// ---------------------------------------------------------------------------------------------
// DIN's activation unit, inference. One task per sample: the first layer is reduced to
// h1 = c_q + M_q k (c_q = (Wa + Wc) q + b1, M_q = Wb - Wc + Wd diag(q), computed once per sample and
// stored transposed so that each key's product runs over H1 contiguous lanes), then the second
// layer, the score and the pooling, key by key: nothing of size [L, H] is ever stored.

namespace rankops::cpu {
namespace {


struct DinAct {
  int64_t kind;  // 0 sigmoid, 1 prelu, 2 dice
  const float* alpha;
  const float* mean;
  const float* rstd;
};

// y[o] = bias[o] + sum_i x[i] * wT[i * n_out + o]: one dense layer with its weight stored
// input-major, so the inner loop runs over contiguous outputs (FMAs with a broadcast of x[i]). The
// outputs go in register tiles of W (64, 32, 16, 8, then one at a time) held across the whole i loop:
// accumulating into y in memory made every FMA wait on the store of the previous i (store-to-load
// forwarding), a chain per output vector.
template <int NV>  // NV vectors of 8 outputs, in registers (v8 indexed by constants only)
inline void affine_tile(float* y, const float* bias, const float* x, int64_t n_in, const float* wT, int64_t n_out) {
  v8 acc[NV];
#pragma GCC unroll 8
  for (int k = 0; k < NV; ++k) acc[k] = ld(bias + 8 * k);
  for (int64_t i = 0; i < n_in; ++i) {
    const v8 xi = v8{} + x[i];
    const float* row = wT + i * n_out;
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) acc[k] += xi * ld(row + 8 * k);
  }
#pragma GCC unroll 8
  for (int k = 0; k < NV; ++k) st(y + 8 * k, acc[k]);
}

inline void affine(float* y, const float* bias, const float* x, int64_t n_in, const float* wT, int64_t n_out) {
  int64_t o = 0;
  for (; o + 64 <= n_out; o += 64) affine_tile<8>(y + o, bias + o, x, n_in, wT + o, n_out);
  if (o + 32 <= n_out) affine_tile<4>(y + o, bias + o, x, n_in, wT + o, n_out), o += 32;
  if (o + 16 <= n_out) affine_tile<2>(y + o, bias + o, x, n_in, wT + o, n_out), o += 16;
  if (o + 8 <= n_out) affine_tile<1>(y + o, bias + o, x, n_in, wT + o, n_out), o += 8;
  for (; o < n_out; ++o) {  // the last n_out % 8 outputs
    float s = bias[o];
    for (int64_t i = 0; i < n_in; ++i) s += x[i] * wT[i * n_out + o];
    y[o] = s;
  }
}

inline void activate(float* h, int64_t n, const DinAct& a) {
  if (a.kind == 0) {
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) h[o] = sigmoid_f(h[o]);
  } else if (a.kind == 1) {
    const float* __restrict alpha = a.alpha;
    float* __restrict hv = h;
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) {
      const float v = hv[o];
      hv[o] = v > 0.f ? v : alpha[o] * v;
    }
  } else {
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) {
      const float p = sigmoid_f((h[o] - a.mean[o]) * a.rstd[o]);
      h[o] = h[o] * (p + (1.f - p) * a.alpha[o]);
    }
  }
}

template <typename T>
void din_kernel(const T* q, const T* keys, const int64_t* lengths, const float* w1, const float* b1,
                const float* w2T, const float* b2, const float* wout, float bout, DinAct act1, DinAct act2,
                bool normalize, T* out, int64_t B, int64_t L, int64_t d, int64_t H1, int64_t H2) {
  const int64_t Hl = H2 > 0 ? H2 : H1;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
    std::vector<float> buf(d + d * H1 + H1 + H1 + (H2 > 0 ? H2 : 0) + 2 * d);
    float* qf = buf.data();
    float* MT = qf + d;  // [d][H1]
    float* c = MT + d * H1;  // [H1]
    float* h1 = c + H1;
    float* h2 = h1 + H1;
    float* kf = h2 + (H2 > 0 ? H2 : 0);
    float* acc = kf + d;
    for (int64_t b = b0; b < b1_; ++b) {
      const int64_t len = lengths[b];
      T* ob = out + b * d;
      if (len == 0) {
        std::fill(ob, ob + d, static_cast<T>(0.f));
        continue;
      }
      for (int64_t e = 0; e < d; ++e) qf[e] = static_cast<float>(q[b * d + e]);
      // c[o] = sum_e (Wa + Wc)[o][e] q[e] + b1[o];  MT[e][o] = Wb[o][e] - Wc[o][e] + Wd[o][e] q[e]
      for (int64_t o = 0; o < H1; ++o) {
        const float* w = w1 + o * 4 * d;
        float s = b1[o];
        for (int64_t e = 0; e < d; ++e) {
          s += (w[e] + w[2 * d + e]) * qf[e];
          MT[e * H1 + o] = w[d + e] - w[2 * d + e] + w[3 * d + e] * qf[e];
        }
        c[o] = s;
      }
      std::fill(acc, acc + d, 0.f);
      float m = -std::numeric_limits<float>::infinity(), l = 0.f;
      for (int64_t j = 0; j < len; ++j) {
        const T* kr = keys + (b * L + j) * d;
        for (int64_t e = 0; e < d; ++e) kf[e] = static_cast<float>(kr[e]);
        affine(h1, c, kf, d, MT, H1);
        activate(h1, H1, act1);
        const float* last = h1;
        if (H2 > 0) {
          affine(h2, b2, h1, H1, w2T, H2);
          activate(h2, H2, act2);
          last = h2;
        }
        float score = bout;
#pragma omp simd reduction(+ : score)
        for (int64_t o = 0; o < Hl; ++o) score += wout[o] * last[o];
        float w = score;
        if (normalize) {  // online softmax over the keys
          const float mx = std::max(m, score);
          const float alpha = std::exp(m - mx);
          w = std::exp(score - mx);
          l = l * alpha + w;
          m = mx;
#pragma omp simd
          for (int64_t e = 0; e < d; ++e) acc[e] *= alpha;
        }
#pragma omp simd
        for (int64_t e = 0; e < d; ++e) acc[e] += w * kf[e];
      }
      const float inv = normalize ? 1.f / l : 1.f;
      for (int64_t e = 0; e < d; ++e) ob[e] = static_cast<T>(acc[e] * inv);
    }
  });
}

}  // namespace

at::Tensor din_attention_inference(const at::Tensor& q_, const at::Tensor& keys_, const at::Tensor& lengths_,
                                   const at::Tensor& w1_, const at::Tensor& b1_, const at::Tensor& w2_,
                                   const at::Tensor& b2_, const at::Tensor& w_out_, const at::Tensor& b_out_,
                                   int64_t act, bool normalize, const at::Tensor& alpha1_, const at::Tensor& alpha2_,
                                   const at::Tensor& mean1_, const at::Tensor& var1_, const at::Tensor& mean2_,
                                   const at::Tensor& var2_, double eps) {
  TORCH_CHECK_VALUE(q_.dim() == 2 && keys_.dim() == 3 && keys_.size(0) == q_.size(0) && keys_.size(2) == q_.size(1),
                    "din_attention: q must be [B, d] and keys [B, L, d], got ", q_.sizes(), " and ", keys_.sizes());
  TORCH_CHECK_VALUE(act >= 0 && act <= 2, "din_attention: unknown activation code ", act);
  const auto q = q_.contiguous(), keys = keys_.to(q.scalar_type()).contiguous();
  const int64_t B = keys.size(0), L = keys.size(1), d = keys.size(2);
  const auto lengths = lengths_.to(at::kLong).contiguous();
  check_lengths(lengths, B, L);
  const auto f = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const auto w1 = f(w1_), b1 = f(b1_), w_out = f(w_out_).reshape({-1}), b_out = f(b_out_).reshape({-1});
  const int64_t H1 = w1.size(0), H2 = w2_.numel() ? w2_.size(0) : 0;
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == 4 * d && b1.numel() == H1, "din_attention: w1 must be [H1, 4d]");
  at::Tensor w2T, b2;
  if (H2 > 0) {
    TORCH_CHECK_VALUE(w2_.dim() == 2 && w2_.size(1) == H1 && b2_.numel() == H2, "din_attention: w2 must be [H2, H1]");
    w2T = f(w2_).t().contiguous();  // [H1][H2]: each hidden unit's row of products is contiguous
    b2 = f(b2_);
  }
  TORCH_CHECK_VALUE(w_out.numel() == (H2 > 0 ? H2 : H1) && b_out.numel() == 1, "din_attention: w_out / b_out shapes");
  // per-layer activation parameters (Dice: rstd = 1/sqrt(var + eps) once, not per key)
  std::vector<at::Tensor> keep;
  auto layer = [&](const at::Tensor& alpha, const at::Tensor& mean, const at::Tensor& var, int64_t n) {
    DinAct a{act, nullptr, nullptr, nullptr};
    if (act >= 1) {
      TORCH_CHECK_VALUE(alpha.numel() == n, "din_attention: alpha has ", alpha.numel(), " entries, expected ", n);
      keep.push_back(f(alpha));
      a.alpha = keep.back().data_ptr<float>();
    }
    if (act == 2) {
      TORCH_CHECK_VALUE(mean.numel() == n && var.numel() == n, "din_attention: Dice statistics need ", n, " entries");
      keep.push_back(f(mean));
      a.mean = keep.back().data_ptr<float>();
      keep.push_back((f(var) + eps).rsqrt());
      a.rstd = keep.back().data_ptr<float>();
    }
    return a;
  };
  keep.reserve(6);
  const DinAct a1 = layer(alpha1_, mean1_, var1_, H1);
  const DinAct a2 = H2 > 0 ? layer(alpha2_, mean2_, var2_, H2) : DinAct{act, nullptr, nullptr, nullptr};
  auto out = at::empty({B, d}, q.options());
  if (out.numel() == 0) return out;
  RANKOPS_DISPATCH_FLOAT(q.scalar_type(), "din_attention", [&] {
    din_kernel(q.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), lengths.data_ptr<int64_t>(), w1.data_ptr<float>(),
               b1.data_ptr<float>(), H2 > 0 ? w2T.data_ptr<float>() : nullptr,
               H2 > 0 ? b2.data_ptr<float>() : nullptr, w_out.data_ptr<float>(), b_out.item<float>(), a1, a2,
               normalize, out.data_ptr<scalar_t>(), B, L, d, H1, H2);
  });
  return out;
}


// ---------------------------------------------------------------------------------------------
// DIN's activation unit, backward. One task per chunk of samples; per sample two passes over its
// valid keys, nothing of size [L, H] stored:
//   pass 1: each key's score a_j (the forward's layers) and G . k_j, G = dL/dout[b];
//   then the pooling weights' gradients da_j (softmax's Jacobian when normalize);
//   pass 2: each key again, backward through the score, layer 2 and layer 1 (pre-activations
//   recomputed), dk_j = w_j G + M_q^T dz1, and the sample's sums dc = sum_j dz1, dM = sum_j dz1 k_j^T,
//   which give dq, dW1 and db1 through c_q = (Wa + Wc) q + b1 and M_q = Wb - Wc + Wd diag(q).
// Weight gradients are summed per chunk (fp32) and the chunks added in order (deterministic).

namespace {

// h = act(z) in place, with dh/dz in dz and dh/dalpha in da (when the activation has a slope). One
// loop per kind (a kind test inside the loop kept it scalar).
inline void activate_grad(float* __restrict z, float* __restrict dz, float* __restrict da, int64_t n,
                          const DinAct& a) {
  if (a.kind == 0) {
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) {
      const float h = sigmoid_f(z[o]);
      z[o] = h;
      dz[o] = h * (1.f - h);
    }
  } else if (a.kind == 1) {
    const float* __restrict alpha = a.alpha;
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) {
      const float x = z[o];
      const bool pos = x > 0.f;
      z[o] = pos ? x : alpha[o] * x;
      dz[o] = pos ? 1.f : alpha[o];
      da[o] = pos ? 0.f : x;
    }
  } else {
    const float *__restrict alpha = a.alpha, *__restrict mean = a.mean, *__restrict rstd = a.rstd;
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) {
      const float x = z[o];
      const float p = sigmoid_f((x - mean[o]) * rstd[o]);
      const float g = p + (1.f - p) * alpha[o];
      z[o] = x * g;
      dz[o] = g + x * (1.f - alpha[o]) * p * (1.f - p) * rstd[o];
      da[o] = x * (1.f - p);
    }
  }
}

struct DinGrads {  // one chunk's sums
  float *w1, *b1, *w2T, *b2, *wout, *bout, *alpha1, *alpha2;
};

template <typename T>
void din_backward_kernel(const T* g, const T* q, const T* keys, const int64_t* lengths, const float* w1,
                         const float* b1, const float* w2T, const float* b2, const float* wout, float bout,
                         DinAct act1, DinAct act2, bool normalize, T* dq, T* dkeys, float* part, int64_t part_size,
                         int64_t chunks, int64_t B, int64_t L, int64_t d, int64_t H1, int64_t H2) {
  const int64_t Hl = H2 > 0 ? H2 : H1, H2n = H2 > 0 ? H2 : 0;
  for_chunks(B, chunks, [&](int64_t ch, int64_t r0, int64_t r1) {
    float* base = part + ch * part_size;
    DinGrads acc{base, base + H1 * 4 * d, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    acc.w2T = acc.b1 + H1;
    acc.b2 = acc.w2T + H1 * H2n;
    acc.wout = acc.b2 + H2n;
    acc.bout = acc.wout + Hl;
    acc.alpha1 = acc.bout + 1;
    acc.alpha2 = acc.alpha1 + H1;
    std::vector<float> buf(3 * d + 2 * d * H1 + 2 * H1 + 3 * H1 + 3 * H2n + 2 * L);
    float* qf = buf.data();
    float* gf = qf + d;
    float* kf = gf + d;
    float* MT = kf + d;       // [d][H1]
    float* dMT = MT + d * H1;  // [d][H1]
    float* c = dMT + d * H1;
    float* dc = c + H1;
    float* z1 = dc + H1;  // pre-activation, then h1
    float* dz1 = z1 + H1;
    float* da1 = dz1 + H1;
    float* z2 = da1 + H1;
    float* dz2 = z2 + H2n;
    float* da2 = dz2 + H2n;
    float* score = da2 + H2n;  // [L]: a_j, then the pooling weight w_j
    float* dscore = score + L;  // [L]: G . k_j, then da_j
    for (int64_t b = r0; b < r1; ++b) {
      const int64_t len = lengths[b];
      T* dqb = dq + b * d;
      T* dkb = dkeys + b * L * d;
      std::fill(dkb + len * d, dkb + L * d, static_cast<T>(0.f));
      if (len == 0) {
        std::fill(dqb, dqb + d, static_cast<T>(0.f));
        continue;
      }
      for (int64_t e = 0; e < d; ++e) {
        qf[e] = static_cast<float>(q[b * d + e]);
        gf[e] = static_cast<float>(g[b * d + e]);
      }
      for (int64_t o = 0; o < H1; ++o) {
        const float* w = w1 + o * 4 * d;
        float sc = b1[o];
        for (int64_t e = 0; e < d; ++e) {
          sc += (w[e] + w[2 * d + e]) * qf[e];
          MT[e * H1 + o] = w[d + e] - w[2 * d + e] + w[3 * d + e] * qf[e];
        }
        c[o] = sc;
      }
      auto layers = [&](const T* kr) {  // kf, z1 (= h1), z2 (= h2) and their derivatives; returns the last
        for (int64_t e = 0; e < d; ++e) kf[e] = static_cast<float>(kr[e]);
        affine(z1, c, kf, d, MT, H1);
        activate_grad(z1, dz1, da1, H1, act1);
        if (H2 > 0) {
          affine(z2, b2, z1, H1, w2T, H2);
          activate_grad(z2, dz2, da2, H2, act2);
          return static_cast<const float*>(z2);
        }
        return static_cast<const float*>(z1);
      };
      for (int64_t j = 0; j < len; ++j) {
        const float* last = layers(keys + (b * L + j) * d);
        float a = bout, gk = 0.f;
#pragma omp simd reduction(+ : a)
        for (int64_t o = 0; o < Hl; ++o) a += wout[o] * last[o];
#pragma omp simd reduction(+ : gk)
        for (int64_t e = 0; e < d; ++e) gk += gf[e] * kf[e];
        score[j] = a;
        dscore[j] = gk;
      }
      if (normalize) {  // w = softmax(a); da_j = w_j (G.k_j - sum_i w_i G.k_i)
        float m = -std::numeric_limits<float>::infinity(), sum = 0.f, dot = 0.f;
        for (int64_t j = 0; j < len; ++j) m = std::max(m, score[j]);
        for (int64_t j = 0; j < len; ++j) sum += (score[j] = std::exp(score[j] - m));
        for (int64_t j = 0; j < len; ++j) dot += (score[j] /= sum) * dscore[j];
        for (int64_t j = 0; j < len; ++j) dscore[j] = score[j] * (dscore[j] - dot);
      }
      std::fill(dc, dc + H1, 0.f);
      std::fill(dMT, dMT + d * H1, 0.f);
      for (int64_t j = 0; j < len; ++j) {
        const float* last = layers(keys + (b * L + j) * d);
        const float da = dscore[j];
        *acc.bout += da;
        float* dlast = H2 > 0 ? dz2 : dz1;  // dh = da * wout, then dz = dh * act'(z), in place
        float* dal = H2 > 0 ? da2 : da1;
        float* gal = H2 > 0 ? acc.alpha2 : acc.alpha1;
        const bool slope = act1.kind >= 1;
#pragma omp simd
        for (int64_t o = 0; o < Hl; ++o) {
          acc.wout[o] += da * last[o];
          const float dh = da * wout[o];
          gal[o] += slope ? dh * dal[o] : 0.f;
          dlast[o] *= dh;
        }
        if (H2 > 0) {  // dW2 += dz2 h1^T, db2 += dz2, dh1 = W2^T dz2 -> dz1
          for (int64_t i = 0; i < H1; ++i) {
            const float* row = w2T + i * H2;
            float* grow = acc.w2T + i * H2;
            const float hi = z1[i];
            float dh = 0.f;
#pragma omp simd reduction(+ : dh)
            for (int64_t o = 0; o < H2; ++o) {
              grow[o] += hi * dz2[o];
              dh += row[o] * dz2[o];
            }
            if (act1.kind >= 1) acc.alpha1[i] += dh * da1[i];
            dz1[i] *= dh;
          }
          for (int64_t o = 0; o < H2; ++o) acc.b2[o] += dz2[o];
        }
        // dk_j = w_j G + M_q^T dz1; dc += dz1; dM += dz1 k_j^T
        T* dkr = dkb + j * d;
        const float wj = score[j];
        for (int64_t e = 0; e < d; ++e) {
          const float* mrow = MT + e * H1;
          float* dmrow = dMT + e * H1;
          const float ke = kf[e];
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t o = 0; o < H1; ++o) {
            s += mrow[o] * dz1[o];
            dmrow[o] += ke * dz1[o];
          }
          dkr[e] = static_cast<T>(wj * gf[e] + s);
        }
#pragma omp simd
        for (int64_t o = 0; o < H1; ++o) dc[o] += dz1[o];
      }
      // c = (Wa + Wc) q + b1, M = Wb - Wc + Wd diag(q)
      for (int64_t e = 0; e < d; ++e) {
        float s = 0.f;
        for (int64_t o = 0; o < H1; ++o) {
          const float* w = w1 + o * 4 * d;
          s += (w[e] + w[2 * d + e]) * dc[o] + dMT[e * H1 + o] * w[3 * d + e];
        }
        dqb[e] = static_cast<T>(s);
      }
      for (int64_t o = 0; o < H1; ++o) {
        float* gw = acc.w1 + o * 4 * d;
        acc.b1[o] += dc[o];
        for (int64_t e = 0; e < d; ++e) {
          const float dm = dMT[e * H1 + o], cq = dc[o] * qf[e];
          gw[e] += cq;
          gw[d + e] += dm;
          gw[2 * d + e] += cq - dm;
          gw[3 * d + e] += dm * qf[e];
        }
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> din_attention_backward(const at::Tensor& grad_, const at::Tensor& q_, const at::Tensor& keys_,
                                               const at::Tensor& lengths_, const at::Tensor& w1_,
                                               const at::Tensor& b1_, const at::Tensor& w2_, const at::Tensor& b2_,
                                               const at::Tensor& w_out_, const at::Tensor& b_out_, int64_t act,
                                               bool normalize, const at::Tensor& alpha1_, const at::Tensor& alpha2_,
                                               const at::Tensor& mean1_, const at::Tensor& var1_,
                                               const at::Tensor& mean2_, const at::Tensor& var2_, double eps) {
  TORCH_CHECK_VALUE(q_.dim() == 2 && keys_.dim() == 3 && keys_.size(0) == q_.size(0) && keys_.size(2) == q_.size(1),
                    "din_attention_backward: q must be [B, d] and keys [B, L, d], got ", q_.sizes(), " and ",
                    keys_.sizes());
  TORCH_CHECK_VALUE(act >= 0 && act <= 2, "din_attention_backward: unknown activation code ", act);
  const auto q = q_.contiguous(), keys = keys_.to(q.scalar_type()).contiguous();
  const auto g = grad_.to(q.scalar_type()).contiguous();
  const int64_t B = keys.size(0), L = keys.size(1), d = keys.size(2);
  TORCH_CHECK_VALUE(g.sizes() == q.sizes(), "din_attention_backward: grad must be [B, d]");
  const auto lengths = lengths_.to(at::kLong).contiguous();
  check_lengths(lengths, B, L);
  const auto f = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const auto w1 = f(w1_), b1 = f(b1_), w_out = f(w_out_).reshape({-1}), b_out = f(b_out_).reshape({-1});
  const int64_t H1 = w1.size(0), H2 = w2_.numel() ? w2_.size(0) : 0, Hl = H2 > 0 ? H2 : H1;
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == 4 * d && b1.numel() == H1, "din_attention: w1 must be [H1, 4d]");
  at::Tensor w2T, b2;
  if (H2 > 0) {
    TORCH_CHECK_VALUE(w2_.dim() == 2 && w2_.size(1) == H1 && b2_.numel() == H2, "din_attention: w2 must be [H2, H1]");
    w2T = f(w2_).t().contiguous();
    b2 = f(b2_);
  }
  TORCH_CHECK_VALUE(w_out.numel() == Hl && b_out.numel() == 1, "din_attention: w_out / b_out shapes");
  std::vector<at::Tensor> keep;
  keep.reserve(6);
  auto layer = [&](const at::Tensor& alpha, const at::Tensor& mean, const at::Tensor& var, int64_t n) {
    DinAct a{act, nullptr, nullptr, nullptr};
    if (act >= 1) {
      TORCH_CHECK_VALUE(alpha.numel() == n, "din_attention: alpha has ", alpha.numel(), " entries, expected ", n);
      keep.push_back(f(alpha));
      a.alpha = keep.back().data_ptr<float>();
    }
    if (act == 2) {
      TORCH_CHECK_VALUE(mean.numel() == n && var.numel() == n, "din_attention: Dice statistics need ", n, " entries");
      keep.push_back(f(mean));
      a.mean = keep.back().data_ptr<float>();
      keep.push_back((f(var) + eps).rsqrt());
      a.rstd = keep.back().data_ptr<float>();
    }
    return a;
  };
  const DinAct a1 = layer(alpha1_, mean1_, var1_, H1);
  const DinAct a2 = H2 > 0 ? layer(alpha2_, mean2_, var2_, H2) : DinAct{act, nullptr, nullptr, nullptr};
  const int64_t H2n = H2 > 0 ? H2 : 0;
  const int64_t part_size = H1 * 4 * d + H1 + H1 * H2n + H2n + Hl + 1 + H1 + H2n;
  const int64_t chunks = num_chunks(B, 4);
  auto part = at::zeros({chunks, part_size}, at::kFloat);
  auto dq = at::empty_like(q), dkeys = at::empty_like(keys);
  if (B > 0 && d > 0) {
    RANKOPS_DISPATCH_FLOAT(q.scalar_type(), "din_attention_backward", [&] {
      din_backward_kernel(g.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(),
                          lengths.data_ptr<int64_t>(), w1.data_ptr<float>(), b1.data_ptr<float>(),
                          H2 > 0 ? w2T.data_ptr<float>() : nullptr, H2 > 0 ? b2.data_ptr<float>() : nullptr,
                          w_out.data_ptr<float>(), b_out.item<float>(), a1, a2, normalize, dq.data_ptr<scalar_t>(),
                          dkeys.data_ptr<scalar_t>(), part.data_ptr<float>(), part_size, chunks, B, L, d, H1, H2);
    });
  } else {
    dq.zero_();
    dkeys.zero_();
  }
  const auto sum = part.sum(0);
  int64_t at_ = 0;
  auto take = [&](int64_t n) {
    auto t = sum.narrow(0, at_, n);
    at_ += n;
    return t;
  };
  // views of one buffer: copied out (the outputs of an op must not alias each other)
  auto like = [](const at::Tensor& t, const at::Tensor& src) {
    return t.reshape(src.sizes()).to(src.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  };
  auto dw1 = like(take(H1 * 4 * d), w1_), db1 = like(take(H1), b1_);
  auto dw2T = take(H1 * H2n), db2 = take(H2n);
  auto dw2 = H2 > 0 ? like(dw2T.reshape({H1, H2}).t().contiguous(), w2_) : w2_.new_zeros(w2_.sizes());
  auto db2o = H2 > 0 ? like(db2, b2_) : b2_.new_zeros(b2_.sizes());
  auto dwout = like(take(Hl), w_out_), dbout = like(take(1), b_out_);
  auto dalpha1 = take(H1), dalpha2 = take(H2n);
  auto da1 = act >= 1 ? like(dalpha1, alpha1_) : alpha1_.new_zeros(alpha1_.sizes());
  auto da2 = act >= 1 && H2 > 0 ? like(dalpha2, alpha2_) : alpha2_.new_zeros(alpha2_.sizes());
  return {dq, dkeys, dw1, db1, dw2, db2o, dwout, dbout, da1, da2};
}

}  // namespace rankops::cpu

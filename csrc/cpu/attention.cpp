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

#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "registration.h"

namespace rankops::cpu {
namespace {

constexpr int64_t kBlock = 64;  // keys per block: kT / vT blocks of 64 x d floats stay in L1 for d <= 64

// exp(x) for x <= 0 (scores minus a running max), branch-free so the key loops vectorise.
// 2^t = 2^round(t) * 2^f, |f| <= 1/2, 2^f from Cephes' exp2f polynomial (rel. error ~2e-7).
inline float exp_nonpos(float x) {
  x = std::max(x, -87.0f);  // exp(-87) ~ 1.6e-38: underflows to nothing in an fp32 sum of ones
  const float t = x * 1.44269504088896341f;
  const float r = std::floor(t + 0.5f);
  const float f = t - r;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t e = static_cast<int32_t>(r) + 127;
  return p * std::bit_cast<float>(e << 23);
}

// Where the keys of task (b, h) live: row j at base + j * stride (elements); len valid rows.
struct KeyRows {
  int64_t base, stride, len;
};

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
void forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, int64_t BH, int64_t Q, int64_t d,
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
void backward_kernel(const T* grad, const T* q, const T* k, const T* v, const T* out, const float* lse, T* dq,
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
  KeyRows operator()(int64_t t) const { return {t * L * d, d, lengths[t / H]}; }
};
// Jagged k [S,H,d]: task (b,h) at (offsets[b]*H + h)*d, stride H*d.
struct JaggedRows {
  const int64_t* offsets;
  int64_t H, d;
  KeyRows operator()(int64_t t) const {
    const int64_t b = t / H, h = t % H;
    return {(offsets[b] * H + h) * d, H * d, offsets[b + 1] - offsets[b]};
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
                                                        int64_t avg_len, double scale, bool zero_kv, Locate locate) {
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), d = q.size(3);
  const auto grad = grad_.to(q.scalar_type()).contiguous();
  const auto out = out_.to(q.scalar_type()).contiguous();
  const auto lse = lse_.to(at::kFloat).contiguous();
  TORCH_CHECK_VALUE(grad.sizes() == q.sizes() && out.sizes() == q.sizes(), "target_attention_backward: grad ",
                    grad.sizes(), " and out ", out.sizes(), " must match q ", q.sizes());
  TORCH_CHECK_VALUE(lse.numel() == B * H * Q, "target_attention_backward: lse has shape ", lse.sizes());
  auto dq = at::empty_like(q);
  // Padded rows past each length are never visited by the kernel; their gradient is 0.
  auto dk = zero_kv ? at::zeros_like(k) : at::empty_like(k);
  auto dv = zero_kv ? at::zeros_like(v) : at::empty_like(v);
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
  return backward(grad, q, k, v, out, lse, L, scale, true, PaddedRows{lengths.data_ptr<int64_t>(), H, L, d});
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
  return backward(grad, q, k, v, out, lse, B ? S / B : 0, scale, false,
                  JaggedRows{offsets.data_ptr<int64_t>(), H, d});
}

}  // namespace rankops::cpu

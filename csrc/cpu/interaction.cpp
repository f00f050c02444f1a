// CPU kernels for the interaction family: one pass over x per sample, parallel over the batch
// (at::parallel_for), inner loops over the embedding dim written for the compiler to vectorise.
// Everything accumulates in fp32; fp16/bf16 are converted on load and on store.
#include "cpu/interaction.h"

#include <ATen/Parallel.h>

#include <vector>

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

// s[d] = sum_f x[f,d] over one sample; q[d] = sum_f x[f,d]^2 when q is given.
template <typename T>
inline void field_sums(const T* xb, int64_t F, int64_t D, float* s, float* q) {
  std::fill(s, s + D, 0.f);
  if (q) std::fill(q, q + D, 0.f);
  for (int64_t f = 0; f < F; ++f) {
    const T* row = xb + f * D;
    if (q) {
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
  at::parallel_for(0, B, grain(F * D), [&](int64_t b0, int64_t b1) {
    std::vector<float> buf(2 * D);
    float* s = buf.data();
    float* q = s + D;
    for (int64_t b = b0; b < b1; ++b) {
      field_sums(x + b * F * D, F, D, s, q);
      if (reduce) {
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < D; ++d) acc += s[d] * s[d] - q[d];
        out[b] = static_cast<T>(0.5f * acc);
      } else {
        T* o = out + b * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(0.5f * (s[d] * s[d] - q[d]));
      }
    }
  });
}

// d out / d x[f,d] = g * (s[d] - x[f,d]); s is recomputed (the sample's rows are in L1 anyway).
template <typename T>
void fm_backward_kernel(const T* grad, const T* x, T* gx, int64_t B, int64_t F, int64_t D, bool reduce) {
  at::parallel_for(0, B, grain(2 * F * D), [&](int64_t b0, int64_t b1) {
    std::vector<float> buf(2 * D);
    float* s = buf.data();
    float* g = s + D;
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = x + b * F * D;
      field_sums(xb, F, D, s, nullptr);
      if (reduce) {
        std::fill(g, g + D, static_cast<float>(grad[b]));
      } else {
        load_row(grad + b * D, g, D);
      }
      T* gb = gx + b * F * D;
      for (int64_t f = 0; f < F; ++f) {
        const T* row = xb + f * D;
        T* grow = gb + f * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) grow[d] = static_cast<T>(g[d] * (s[d] - static_cast<float>(row[d])));
      }
    }
  });
}

// Gram lower triangle of one sample. x is transposed into xt[d][f] so the inner loop runs over
// the partner field j with a broadcast of x[i,d]: FMAs only, no horizontal sums.
template <typename T>
void dot_forward_kernel(const T* x, T* out, int64_t B, int64_t F, int64_t D, bool self) {
  const int64_t P = self ? F * (F + 1) / 2 : F * (F - 1) / 2;
  at::parallel_for(0, B, grain(F * F * D / 2 + 1), [&](int64_t b0, int64_t b1) {
    std::vector<float> xt_buf(D * F), acc_buf(F);
    float* xt = xt_buf.data();
    float* acc = acc_buf.data();
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = x + b * F * D;
      for (int64_t f = 0; f < F; ++f)
        for (int64_t d = 0; d < D; ++d) xt[d * F + f] = static_cast<float>(xb[f * D + d]);
      T* ob = out + b * P;
      for (int64_t i = self ? 0 : 1; i < F; ++i) {
        const int64_t n = self ? i + 1 : i;  // partners j < n
        std::fill(acc, acc + n, 0.f);
        for (int64_t d = 0; d < D; ++d) {
          const float xi = xt[d * F + i];
          const float* col = xt + d * F;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) acc[j] += xi * col[j];
        }
        for (int64_t j = 0; j < n; ++j) ob[j] = static_cast<T>(acc[j]);
        ob += n;
      }
    }
  });
}

// gx = (G + G^T) x with G the lower triangle of grad (the diagonal counted twice with self).
template <typename T>
void dot_backward_kernel(const T* grad, const T* x, T* gx, int64_t B, int64_t F, int64_t D, bool self) {
  const int64_t P = self ? F * (F + 1) / 2 : F * (F - 1) / 2;
  at::parallel_for(0, B, grain(F * F * D + 1), [&](int64_t b0, int64_t b1) {
    std::vector<float> sym_buf(F * F), x_buf(F * D), acc_buf(D);
    float* sym = sym_buf.data();
    float* xf = x_buf.data();
    float* acc = acc_buf.data();
    for (int64_t b = b0; b < b1; ++b) {
      const T* gb = grad + b * P;
      std::fill(sym, sym + F * F, 0.f);
      int64_t p = 0;
      for (int64_t i = self ? 0 : 1; i < F; ++i) {
        const int64_t n = self ? i + 1 : i;
        for (int64_t j = 0; j < n; ++j, ++p) {
          const float g = static_cast<float>(gb[p]);
          sym[i * F + j] += g;
          sym[j * F + i] += g;
        }
      }
      load_row(x + b * F * D, xf, F * D);
      T* out = gx + b * F * D;
      for (int64_t i = 0; i < F; ++i) {
        std::fill(acc, acc + D, 0.f);
        const float* si = sym + i * F;
        for (int64_t j = 0; j < F; ++j) {
          const float w = si[j];
          if (w == 0.f) continue;
          const float* xj = xf + j * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[d] += w * xj[d];
        }
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) out[i * D + d] = static_cast<T>(acc[d]);
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
  auto gx = at::empty_like(x);
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
  auto gx = at::empty_like(x);
  RANKOPS_DISPATCH_FLOAT(x.scalar_type(), "dot_interaction_backward", [&] {
    dot_backward_kernel(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), B, F, D,
                        self_interaction);
  });
  return gx;
}

}  // namespace rankops::cpu

// CPU kernels for the cross family. The GEMMs go to ATen (MKL / oneDNN: nothing to gain by
// re-writing them); everything elementwise around them is fused into single passes over the
// [B, N] activations, in fp32, parallel over rows:
//   forward   p = addmm(b, xl, W.T) (the bias rides in the GEMM's C), then out = x0 * p + xl in one
//             pass (in place over p when p is not saved: no second [B, N] buffer);
//   backward  one pass makes dp = g * x0, dx0 = g * p and the column sums of dp (db); then
//             dxl = addmm(g, dp, W) (the residual's gradient rides in the GEMM's C) and dW = dp.T @ xl.
// Eager PyTorch does the same three GEMMs plus five separate elementwise passes and temporaries.
// The v1 layer has no GEMM: forward and backward are one pass over the rows each.
#include "cpu/cross.h"

#include <ATen/Parallel.h>

#include <vector>

#include "cpu/parallel.h"
#include "registration.h"

namespace rankops::cpu {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task of the flat elementwise passes

template <typename T>
void epilogue(const T* x0, const T* xl, const T* p, T* out, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i)
      out[i] = static_cast<T>(static_cast<float>(x0[i]) * static_cast<float>(p[i]) + static_cast<float>(xl[i]));
  });
}

// dp = g * x0, dx0 = g * p, and per-chunk column sums of dp (fp32, before rounding dp).
template <typename T>
at::Tensor grad_pass(const T* g, const T* x0, const T* p, T* dp, T* dx0, int64_t B, int64_t N) {
  const int64_t chunks = num_chunks(B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N)));
  auto partial = at::zeros({chunks, N}, at::kFloat);
  float* part = partial.data_ptr<float>();
  for_chunks(B, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    float* acc = part + c * N;
    for (int64_t b = r0; b < r1; ++b) {
      const int64_t o = b * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const float gv = static_cast<float>(g[o + j]);
        const float d = gv * static_cast<float>(x0[o + j]);
        dp[o + j] = static_cast<T>(d);
        dx0[o + j] = static_cast<T>(gv * static_cast<float>(p[o + j]));
        acc[j] += d;
      }
    }
  });
  return partial.sum(0);
}

void check_2d(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D, got ", t.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cross_layer(const at::Tensor& x0_, const at::Tensor& xl_, const at::Tensor& w_,
                                               const at::Tensor& b_, bool save) {
  check_2d(x0_, "cross_layer", "x0");
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(xl.sizes() == x0.sizes() && w_.sizes() == at::IntArrayRef({N, N}) && b_.numel() == N,
                    "cross_layer: shapes do not match: x0 ", x0.sizes(), ", xl ", xl.sizes(), ", weight ", w_.sizes(),
                    ", bias ", b_.sizes());
  auto p = at::addmm(b_.reshape({1, N}), xl, w_.t());
  auto out = save ? at::empty_like(x0) : p;  // without save the epilogue overwrites p in place
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer", [&] {
    epilogue(x0.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
             B * N);
  });
  return {out, save ? p : x0.new_empty({0})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_backward(const at::Tensor& grad_,
                                                                                const at::Tensor& x0_,
                                                                                const at::Tensor& xl_,
                                                                                const at::Tensor& w_,
                                                                                const at::Tensor& p_) {
  check_2d(x0_, "cross_layer_backward", "x0");
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous(), p = p_.contiguous();
  const auto g = grad_.to(x0.scalar_type()).contiguous();
  const auto w = w_.contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(g.sizes() == x0.sizes() && p.sizes() == x0.sizes(), "cross_layer_backward: grad ", g.sizes(),
                    " and p ", p.sizes(), " must have x0's shape ", x0.sizes());
  auto dp = at::empty_like(x0), dx0 = at::empty_like(x0);
  at::Tensor db;
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_backward", [&] {
    db = grad_pass(g.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(),
                   dx0.data_ptr<scalar_t>(), B, N);
  });
  auto dxl = at::addmm(g, dp, w);
  auto dw = at::mm(dp.t(), xl);
  return {dx0, dxl, dw, db.to(w.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_layer_lowrank(const at::Tensor& x0_, const at::Tensor& xl_,
                                                                   const at::Tensor& u, const at::Tensor& v,
                                                                   const at::Tensor& b_, bool save) {
  check_2d(x0_, "cross_layer_lowrank", "x0");
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(u.dim() == 2 && v.dim() == 2 && u.size(0) == N && v.size(1) == N && u.size(1) == v.size(0) &&
                        u.size(1) >= 1 && b_.numel() == N,
                    "cross_layer_lowrank: shapes do not match: x0 ", x0.sizes(), ", u ", u.sizes(), ", v ", v.sizes(),
                    ", bias ", b_.sizes());
  auto t = at::mm(xl, v.t());
  auto p = at::addmm(b_.reshape({1, N}), t, u.t());
  auto out = save ? at::empty_like(x0) : p;
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_lowrank", [&] {
    epilogue(x0.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
             B * N);
  });
  if (!save) return {out, x0.new_empty({0}), x0.new_empty({0})};
  return {out, t, p};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_lowrank_backward(
    const at::Tensor& grad_, const at::Tensor& x0_, const at::Tensor& xl_, const at::Tensor& u, const at::Tensor& v,
    const at::Tensor& t, const at::Tensor& p_) {
  check_2d(x0_, "cross_layer_lowrank_backward", "x0");
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous(), p = p_.contiguous();
  const auto g = grad_.to(x0.scalar_type()).contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(g.sizes() == x0.sizes() && p.sizes() == x0.sizes() && t.dim() == 2 && t.size(0) == B,
                    "cross_layer_lowrank_backward: grad ", g.sizes(), ", t ", t.sizes(), " and p ", p.sizes(),
                    " do not match x0 ", x0.sizes());
  auto dp = at::empty_like(x0), dx0 = at::empty_like(x0);
  at::Tensor db;
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_lowrank_backward", [&] {
    db = grad_pass(g.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(),
                   dx0.data_ptr<scalar_t>(), B, N);
  });
  auto du = at::mm(dp.t(), t);
  auto dt = at::mm(dp, u);
  auto dv = at::mm(dt.t(), xl);
  auto dxl = at::addmm(g, dt, v);
  return {dx0, dxl, du, dv, db.to(u.scalar_type())};
}

namespace {

template <typename T>
void v1_forward(const T* x0, const T* xl, const float* w, const float* bias, T* out, int64_t B, int64_t N) {
  at::parallel_for(0, B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * N;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < N; ++j) s += static_cast<float>(xl[o + j]) * w[j];
#pragma omp simd
      for (int64_t j = 0; j < N; ++j)
        out[o + j] =
            static_cast<T>(static_cast<float>(x0[o + j]) * s + bias[j] + static_cast<float>(xl[o + j]));
    }
  });
}

// Per row: s = xl . w and ds = g . x0 (both recomputed: two dots beat storing s), then
// dx0 = g * s, dxl = ds * w + g; per chunk dw += ds * xl and db += g.
template <typename T>
void v1_backward(const T* g, const T* x0, const T* xl, const float* w, T* dx0, T* dxl, float* dw_part,
                 float* db_part, int64_t chunks, int64_t B, int64_t N) {
  for_chunks(B, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    float* dw = dw_part + c * N;
    float* db = db_part + c * N;
    for (int64_t b = r0; b < r1; ++b) {
      const int64_t o = b * N;
      float s = 0.f, ds = 0.f;
#pragma omp simd reduction(+ : s, ds)
      for (int64_t j = 0; j < N; ++j) {
        s += static_cast<float>(xl[o + j]) * w[j];
        ds += static_cast<float>(g[o + j]) * static_cast<float>(x0[o + j]);
      }
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const float gv = static_cast<float>(g[o + j]);
        const float xv = static_cast<float>(xl[o + j]);
        dx0[o + j] = static_cast<T>(gv * s);
        dxl[o + j] = static_cast<T>(ds * w[j] + gv);
        dw[j] += ds * xv;
        db[j] += gv;
      }
    }
  });
}

}  // namespace

at::Tensor cross_layer_v1(const at::Tensor& x0_, const at::Tensor& xl_, const at::Tensor& w_, const at::Tensor& b_) {
  check_2d(x0_, "cross_layer_v1", "x0");
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(xl.sizes() == x0.sizes() && w_.numel() == N && b_.numel() == N, "cross_layer_v1: shapes do not "
                    "match: x0 ", x0.sizes(), ", xl ", xl.sizes(), ", w ", w_.sizes(), ", bias ", b_.sizes());
  const auto w = w_.to(at::kFloat).contiguous(), bias = b_.to(at::kFloat).contiguous();
  auto out = at::empty_like(x0);
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_v1", [&] {
    v1_forward(x0.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), w.data_ptr<float>(), bias.data_ptr<float>(),
               out.data_ptr<scalar_t>(), B, N);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_v1_backward(const at::Tensor& grad_,
                                                                                   const at::Tensor& x0_,
                                                                                   const at::Tensor& xl_,
                                                                                   const at::Tensor& w_) {
  check_2d(x0_, "cross_layer_v1_backward", "x0");
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous();
  const auto g = grad_.to(x0.scalar_type()).contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(g.sizes() == x0.sizes() && xl.sizes() == x0.sizes() && w_.numel() == N,
                    "cross_layer_v1_backward: shapes do not match");
  const auto w = w_.to(at::kFloat).contiguous();
  auto dx0 = at::empty_like(x0), dxl = at::empty_like(x0);
  const int64_t chunks = num_chunks(B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N)));
  auto dw = at::zeros({chunks, N}, at::kFloat), db = at::zeros({chunks, N}, at::kFloat);
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_v1_backward", [&] {
    v1_backward(g.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), w.data_ptr<float>(),
                dx0.data_ptr<scalar_t>(), dxl.data_ptr<scalar_t>(), dw.data_ptr<float>(), db.data_ptr<float>(), chunks,
                B, N);
  });
  return {dx0, dxl, dw.sum(0).to(w_.scalar_type()), db.sum(0).to(w_.scalar_type())};
}

}  // namespace rankops::cpu

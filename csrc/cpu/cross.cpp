// CPU kernels for the cross family. The GEMMs go to ATen (MKL / oneDNN: nothing to gain by
// re-writing them); everything elementwise around them is fused into single passes over the
// [B, N] activations, in fp32, parallel over rows:
//   forward   q = xl @ W.T, then one pass makes p = q + b (over q, when saved) and out = x0 * p + xl
//             (in place over q when p is not saved: no second [B, N] buffer);
//   backward  one pass makes dp = g * x0, dx0 = g * p, a copy of g into dxl and the column sums of dp
//             (db); then dxl += dp @ W in place (the residual's gradient is the GEMM's C) and dW = dp.T @ xl.
// [B, N] outputs come from huge pages (alloc.h): torch's fresh ones fault 4 KiB at a time.
// Eager PyTorch does the same three GEMMs plus five separate elementwise passes and temporaries.
// The v1 layer has no GEMM: forward and backward are one pass over the rows each.
#include "cpu/cross.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/parallel.h"
#include "registration.h"

namespace rankops::cpu {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task of the flat elementwise passes

// out = x0 * (q + b) + xl for q = the GEMM's product without bias, q overwritten by p = q + b when
// save (the bias added here rather than copied into the GEMM's output beforehand: one pass fewer).
template <typename T>
void epilogue(const T* x0, const T* xl, T* q, const float* bias, T* out, bool save, int64_t B, int64_t N) {
  at::parallel_for(0, B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const float p = static_cast<float>(q[o + j]) + bias[j];
        if (save) q[o + j] = static_cast<T>(p);
        out[o + j] = static_cast<T>(static_cast<float>(x0[o + j]) * p + static_cast<float>(xl[o + j]));
      }
    }
  });
}

// dp = g * x0, dx0 = g * p, gcopy = g (the C the dxl GEMM then accumulates into, in place), and
// per-chunk column sums of dp (fp32, before rounding dp).
template <typename T>
at::Tensor grad_pass(const T* g, const T* x0, const T* p, T* dp, T* dx0, T* gcopy, int64_t B, int64_t N) {
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
        gcopy[o + j] = g[o + j];
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
  // outputs from huge pages (alloc.h): a fresh [B, N] of torch's faults in 4 KiB pages at ~1.8 us each
  auto p = empty_large_like(x0);
  at::mm_out(p, xl, w_.t());
  auto out = save ? empty_large_like(x0) : p;  // without save the epilogue overwrites p in place
  const auto bias = b_.to(at::kFloat).contiguous();
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer", [&] {
    epilogue(x0.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), bias.data_ptr<float>(),
             out.data_ptr<scalar_t>(), save, B, N);
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
  auto dp = empty_large_like(x0), dx0 = empty_large_like(x0), dxl = empty_large_like(x0);
  at::Tensor db;
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_backward", [&] {
    db = grad_pass(g.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(),
                   dx0.data_ptr<scalar_t>(), dxl.data_ptr<scalar_t>(), B, N);
  });
  dxl.addmm_(dp, w);  // dxl = g + dp @ W: the residual's gradient is already in dxl
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
  auto p = empty_large_like(x0);
  at::mm_out(p, t, u.t());
  auto out = save ? empty_large_like(x0) : p;
  const auto bias = b_.to(at::kFloat).contiguous();
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_lowrank", [&] {
    epilogue(x0.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), bias.data_ptr<float>(),
             out.data_ptr<scalar_t>(), save, B, N);
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
  auto dp = empty_large_like(x0), dx0 = empty_large_like(x0), dxl = empty_large_like(x0);
  at::Tensor db;
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_lowrank_backward", [&] {
    db = grad_pass(g.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(),
                   dx0.data_ptr<scalar_t>(), dxl.data_ptr<scalar_t>(), B, N);
  });
  auto du = at::mm(dp.t(), t);
  auto dt = at::mm(dp, u);
  auto dv = at::mm(dt.t(), xl);
  dxl.addmm_(dt, v);  // dxl = g + dt @ v
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
  auto out = empty_large_like(x0);
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
  auto dx0 = empty_large_like(x0), dxl = empty_large_like(x0);
  const int64_t chunks = num_chunks(B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N)));
  auto dw = at::zeros({chunks, N}, at::kFloat), db = at::zeros({chunks, N}, at::kFloat);
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_layer_v1_backward", [&] {
    v1_backward(g.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), xl.data_ptr<scalar_t>(), w.data_ptr<float>(),
                dx0.data_ptr<scalar_t>(), dxl.data_ptr<scalar_t>(), dw.data_ptr<float>(), db.data_ptr<float>(), chunks,
                B, N);
  });
  return {dx0, dxl, dw.sum(0).to(w_.scalar_type()), db.sum(0).to(w_.scalar_type())};
}


// ---------------------------------------------------------------------------------------------
// cross_net: L stacked DCN-V2 layers in one call.
//
// Why a stacked op beside cross_layer: layer by layer through autograd, every [B, N] intermediate
// is a fresh tensor (page faults on first touch, ~1.8 us per 4 KiB page here), dx0 is summed by
// separate [B, N] additions, and slicing a stacked weight[l] costs a zero-filled [L, N, N] gradient
// per layer. Here the activations live in buffers from huge pages, dx0 accumulates inside the
// backward's one elementwise pass per layer, the gradient flowing down the stack is updated in
// place by its GEMM (G += dp @ W_l), and each dW[l] is written by its GEMM straight into dweight.
//
// The [B, N] GEMM operands are kept with rows of ld = N rounded up to 16 elements (64 B): MKL ran
// x @ W.T and dp @ W about 1.3x faster at N = 429 with aligned rows (2-core EPYC); pad columns are
// zero and no GEMM reads them. The saved activations have that layout: xs [L-1, B, ld] holds the
// inputs of layers 1..L-1 (layer 0's is x0), ps [L, B, ld] holds p_l = x_l @ W_l.T + b_l.

int64_t cross_net_ld(int64_t N) { return (N + 15) / 16 * 16; }

namespace {

int64_t row_grain(int64_t N) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N)); }

// y = x0 * (q + b) + x, with q overwritten by p = q + b when save; x and q rows at stride ld, y rows
// at stride ldy; pad columns of q and of a strided y zeroed.
template <typename T>
void net_epilogue(const T* x0, const T* x, T* q, const float* bias, T* y, int64_t ldy, bool save, int64_t B,
                  int64_t N, int64_t ld) {
  at::parallel_for(0, B, row_grain(N), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* x0r = x0 + b * N;
      const T* xr = x + b * ld;
      T* qr = q + b * ld;
      T* yr = y + b * ldy;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const float p = static_cast<float>(qr[j]) + bias[j];
        if (save) qr[j] = static_cast<T>(p);
        yr[j] = static_cast<T>(static_cast<float>(x0r[j]) * p + static_cast<float>(xr[j]));
      }
      for (int64_t j = N; j < ld; ++j) qr[j] = T(0);
      for (int64_t j = N; j < ldy; ++j) yr[j] = T(0);
    }
  });
}

// dst rows at stride ld (pads zeroed) = src [B, N] contiguous
template <typename T>
void pad_rows(const T* src, T* dst, int64_t B, int64_t N, int64_t ld) {
  at::parallel_for(0, B, row_grain(N), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      std::copy(src + b * N, src + (b + 1) * N, dst + b * ld);
      std::fill(dst + b * ld + N, dst + (b + 1) * ld, T(0));
    }
  });
}

// The backward's one elementwise pass for layer l, g the gradient of the layer's output (rows at
// stride ldg; for the top layer the caller's gradient, which `top` also copies into G, the buffer
// the GEMMs then update in place):
//   dp = g * x0 and its column sums (db, per chunk in fp32);
//   dx0 = g * p on the top layer, += on the others, and += g too when `residual` (layer 0, whose
//   input is x0, when its dx0 += dp @ W_0 then goes straight into dx0).
template <typename T>
void net_grad_pass(const T* g, int64_t ldg, const T* x0, const T* p, T* dp, T* dx0, T* G, float* db_part,
                   int64_t chunks, bool top, bool residual, int64_t B, int64_t N, int64_t ld) {
  for_chunks(B, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    float* acc = db_part + c * N;
    for (int64_t b = r0; b < r1; ++b) {
      const T* gr = g + b * ldg;
      const T* x0r = x0 + b * N;
      const T* pr = p + b * ld;
      T* dpr = dp + b * ld;
      T* dxr = dx0 + b * N;
      T* Gr = G + b * ld;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        const float gv = static_cast<float>(gr[j]);
        const float d = gv * static_cast<float>(x0r[j]);
        dpr[j] = static_cast<T>(d);
        acc[j] += d;
        float a = gv * static_cast<float>(pr[j]);
        if (!top) a += static_cast<float>(dxr[j]);
        if (residual) a += gv;
        dxr[j] = static_cast<T>(a);
        if (top) Gr[j] = gr[j];
      }
    }
  });
}

// dst [B, N] += src (rows at stride ld)
template <typename T>
void add_rows(T* dst, const T* src, int64_t B, int64_t N, int64_t ld) {
  at::parallel_for(0, B, row_grain(N), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j)
        dst[b * N + j] = static_cast<T>(static_cast<float>(dst[b * N + j]) + static_cast<float>(src[b * ld + j]));
    }
  });
}

// weight [L, N, N] with rows at stride ld (pads zero) when ld != N: small, and the GEMMs then see
// aligned rows of W too.
at::Tensor padded_weight(const at::Tensor& w, int64_t ld) {
  const int64_t N = w.size(1);
  if (ld == N) return w;
  auto wp = at::zeros({w.size(0), N, ld}, w.options());
  wp.narrow(2, 0, N).copy_(w);
  return wp;
}

at::Tensor cols(const at::Tensor& buf, int64_t N) { return buf.narrow(-1, 0, N); }

void check_net(const char* op, const at::Tensor& x0, const at::Tensor& w) {
  check_2d(x0, op, "x0");
  const int64_t N = x0.size(1);
  TORCH_CHECK_VALUE(w.dim() == 3 && w.size(0) >= 1 && w.size(1) == N && w.size(2) == N, op,
                    ": weight must be [L, N, N] with L >= 1 and N = x0.size(1) = ", N, ", got ", w.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net(const at::Tensor& x0_, const at::Tensor& w_,
                                                         const at::Tensor& b_, bool save) {
  check_net("cross_net", x0_, w_);
  const auto x0 = x0_.contiguous(), w = w_.contiguous();
  const int64_t B = x0.size(0), N = x0.size(1), L = w.size(0), ld = cross_net_ld(N);
  TORCH_CHECK_VALUE(b_.dim() == 2 && b_.size(0) == L && b_.size(1) == N, "cross_net: bias must be [L, N] = [", L,
                    ", ", N, "], got ", b_.sizes());
  const auto bias = b_.to(at::kFloat).contiguous();
  const auto wp = padded_weight(w, ld);
  auto out = empty_large_like(x0);
  // training keeps every layer's input (xs) and p (ps); inference has two buffers take turns, each
  // layer's output overwriting its own q in place
  auto xs = save ? empty_large({L - 1, B, ld}, x0.options()) : x0.new_empty({0});
  auto ps = empty_large({save ? L : std::min<int64_t>(L, 2), B, ld}, x0.options());
  auto xpad = ld == N ? x0 : empty_large({B, ld}, x0.options());  // x0 as the first GEMM's operand
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_net", [&] {
    if (ld != N) pad_rows(x0.data_ptr<scalar_t>(), xpad.data_ptr<scalar_t>(), B, N, ld);
    at::Tensor x = xpad;  // this layer's input, rows at stride ld
    for (int64_t l = 0; l < L; ++l) {
      auto q = ps[save ? l : l % 2];
      auto qv = cols(q, N);
      at::mm_out(qv, cols(x, N), cols(wp[l], N).t());  // on the whole matrix: MKL threads it
      const bool last = l == L - 1;
      auto y = last ? out : (save ? xs[l] : q);
      net_epilogue(x0.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                   bias.data_ptr<float>() + l * N, y.data_ptr<scalar_t>(), last ? N : ld, save, B, N, ld);
      x = y;
    }
  });
  if (!save) return {out, x0.new_empty({0}), x0.new_empty({0})};
  return {out, xs, ps};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net_backward(const at::Tensor& grad_, const at::Tensor& x0_,
                                                                  const at::Tensor& w_, const at::Tensor& xs_,
                                                                  const at::Tensor& ps_) {
  check_net("cross_net_backward", x0_, w_);
  const auto x0 = x0_.contiguous(), w = w_.contiguous(), xs = xs_.contiguous(), ps = ps_.contiguous();
  const auto g = grad_.to(x0.scalar_type()).contiguous();
  const int64_t B = x0.size(0), N = x0.size(1), L = w.size(0), ld = cross_net_ld(N);
  TORCH_CHECK_VALUE(g.sizes() == x0.sizes(), "cross_net_backward: grad ", g.sizes(), " must have x0's shape ",
                    x0.sizes());
  TORCH_CHECK_VALUE(xs.sizes() == at::IntArrayRef({L - 1, B, ld}) && ps.sizes() == at::IntArrayRef({L, B, ld}),
                    "cross_net_backward: xs ", xs.sizes(), " and ps ", ps.sizes(), " must be [", L - 1, ", ", B, ", ",
                    ld, "] and [", L, ", ", B, ", ", ld, "] (cross_net's saved activations)");
  const auto wp = padded_weight(w, ld);
  auto dx0 = empty_large_like(x0);
  auto dw = empty_large(w.sizes(), w.options());
  auto G = empty_large({B, ld}, x0.options());   // the gradient flowing down the stack
  auto dp = empty_large({B, ld}, x0.options());
  const int64_t chunks = num_chunks(B, row_grain(N));
  auto db_part = at::zeros({L, chunks, N}, at::kFloat);
  // the GEMM writing into dx0 [B, N] directly runs at MKL's unaligned-row speed when ld != N
  const bool fold = ld == N;
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_net_backward", [&] {
    for (int64_t l = L - 1; l >= 0; --l) {
      const bool top = l == L - 1;
      net_grad_pass(top ? g.data_ptr<scalar_t>() : G.data_ptr<scalar_t>(), top ? N : ld, x0.data_ptr<scalar_t>(),
                    ps[l].data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(), dx0.data_ptr<scalar_t>(),
                    G.data_ptr<scalar_t>(), db_part[l].data_ptr<float>(), chunks, top, fold && l == 0, B, N, ld);
      const auto dpv = cols(dp, N);
      auto dwl = dw[l];
      at::mm_out(dwl, dpv.t(), l == 0 ? x0 : cols(xs[l - 1], N));  // dW_l = dp.T @ x_l
      // G += dp @ W_l (the residual's gradient is already in G); layer 0's input is x0, so its
      // gradient joins dx0: straight into dx0 when rows are unpadded, else through G and one more pass
      auto Gv = l == 0 && fold ? dx0 : cols(G, N);
      Gv.addmm_(dpv, cols(wp[l], N));
    }
    if (!fold) add_rows(dx0.data_ptr<scalar_t>(), G.data_ptr<scalar_t>(), B, N, ld);
  });
  return {dx0, dw, db_part.sum(1).to(w.scalar_type())};
}


// ---------------------------------------------------------------------------------------------
// cross_net_v1: L stacked DCN (v1) layers, x_{l+1} = x0 * (x_l . w_l) + b_l + x_l.
//
// Every layer's output is x0 scaled plus a bias sum: x_l = alpha_l x0 + Bc_l with Bc_l = sum_{k<l} b_k
// (the same for every row) and the per-row scalars alpha_0 = 1, alpha_{l+1} = alpha_l + s_l,
//     s_l = x_l . w_l = alpha_l d_l + c_l,   d_l = x0 . w_l,   c_l = Bc_l . w_l.
// So the whole stack is L dot products with x0 and one pass out = alpha_L x0 + Bc_L: x0 is read once
// from memory (the dots and the pass run on a row in L1), only the output is written, nothing is
// saved for the backward, whatever L is. The backward, with G = grad and per row
//     abar = G . x0 (= dL/dalpha_L), then from the top: sbar_l = abar, abar *= 1 + d_l,
//     dbar_l = sbar_l alpha_l (= dL/dd_l),
// is dx0 = alpha_L G + sum_l dbar_l w_l (one more pass), dW = dbar.T @ x0 + Cbar_l Bc_l (one GEMM,
// Cbar_l = sum over rows of sbar_l) and db_k = sum_rows G + sum_{l>k} Cbar_l w_l.
// Layer by layer (cross_layer_v1) each layer reads and writes [B, N] in both directions.

namespace {

// sum_j f(j) for j < n in 32 fp32 lanes (four 8-wide FMA chains once GCC vectorises the fixed-length
// lane loop; an `omp simd reduction` over four scalar chains stayed scalar: 8x slower per row).
template <typename F>
inline float sum_lanes(int64_t n, const F& f) {
  constexpr int64_t kLanes = 32;
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += f(j + k);
  for (int64_t k = 0; j + k < n; ++k) acc[k] += f(j + k);
  for (int64_t w = kLanes / 2; w > 0; w /= 2)
    for (int64_t k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0];
}

// A thread's scratch floats on cache lines of their own: small heap blocks of two threads can share a
// line, and the per-row writes into them then bounce it between cores (false sharing made the v1
// forward 2x slower on 2 threads than on 1).
class Scratch {
 public:
  explicit Scratch(int64_t n) : buf_(n + 2 * kPad) {}
  float* data() { return buf_.data() + kPad; }
  float& operator[](int64_t i) { return buf_[kPad + i]; }

 private:
  static constexpr int64_t kPad = 16;  // 64 bytes either side
  std::vector<float> buf_;
};

// Bc [(L + 1) * N]: Bc_l = sum_{k<l} b_k; c [L]: c_l = Bc_l . w_l.
void v1_constants(const float* w, const float* bias, int64_t N, int64_t L, std::vector<float>& Bc,
                  std::vector<float>& c) {
  Bc.assign((L + 1) * N, 0.f);
  c.assign(L, 0.f);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t j = 0; j < N; ++j) Bc[(l + 1) * N + j] = Bc[l * N + j] + bias[l * N + j];
    c[l] = sum_lanes(N, [&](int64_t j) { return Bc[l * N + j] * w[l * N + j]; });
  }
}

// d_l = x0 . w_l for the L layers; returns alpha_L and fills alpha[0..L) when given.
template <typename T>
inline float v1_row(const T* x0r, const float* w, const float* c, int64_t N, int64_t L, float* d, float* alpha) {
  float a = 1.f;
  for (int64_t l = 0; l < L; ++l) {
    const float* wl = w + l * N;
    d[l] = sum_lanes(N, [&](int64_t j) { return static_cast<float>(x0r[j]) * wl[j]; });
    if (alpha) alpha[l] = a;
    a += a * d[l] + c[l];
  }
  return a;
}

template <typename T>
void net_v1_forward(const T* x0, const float* w, const float* Bc, const float* c, T* out, int64_t B, int64_t N,
                    int64_t L) {
  const float* BL = Bc + L * N;
  at::parallel_for(0, B, row_grain(N * L), [&](int64_t b0, int64_t b1) {
    Scratch d(L);
    for (int64_t b = b0; b < b1; ++b) {
      const T* x0r = x0 + b * N;
      const float a = v1_row(x0r, w, c, N, L, d.data(), nullptr);
      T* outr = out + b * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) outr[j] = static_cast<T>(a * static_cast<float>(x0r[j]) + BL[j]);
    }
  });
}

// Per row: dx0 and dbar [B, L]; per chunk: the column sums of G and the row sums of sbar (Cbar).
template <typename T>
void net_v1_backward(const T* g, const T* x0, const float* w, const float* c, T* dx0, float* dbar, float* gsum_part,
                     float* cbar_part, int64_t chunks, int64_t B, int64_t N, int64_t L) {
  for_chunks(B, chunks, [&](int64_t ch, int64_t r0, int64_t r1) {
    float* gsum = gsum_part + ch * N;
    float* cbar = cbar_part + ch * L;
    Scratch d(L), alpha(L), acc_(N);
    float* acc = acc_.data();
    for (int64_t b = r0; b < r1; ++b) {
      const T* x0r = x0 + b * N;
      const T* gr = g + b * N;
      float* dbr = dbar + b * L;
      const float aL = v1_row(x0r, w, c, N, L, d.data(), alpha.data());
      float abar = sum_lanes(N, [&](int64_t j) {
        const float gv = static_cast<float>(gr[j]);
        acc[j] = aL * gv;
        gsum[j] += gv;
        return gv * static_cast<float>(x0r[j]);
      });
      for (int64_t l = L - 1; l >= 0; --l) {
        const float sbar = abar;
        dbr[l] = sbar * alpha[l];
        cbar[l] += sbar;
        abar += sbar * d[l];
      }
      for (int64_t l = 0; l < L; ++l) {
        const float* wl = w + l * N;
        const float dl = dbr[l];
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) acc[j] += dl * wl[j];
      }
      T* dxr = dx0 + b * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) dxr[j] = static_cast<T>(acc[j]);
    }
  });
}

void check_net_v1(const char* op, const at::Tensor& x0, const at::Tensor& w, const at::Tensor& b) {
  check_2d(x0, op, "x0");
  const int64_t N = x0.size(1);
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(0) >= 1 && w.size(1) == N && b.sizes() == w.sizes(), op,
                    ": w and bias must be [L, N] with L >= 1 and N = x0.size(1) = ", N, ", got ", w.sizes(), " and ",
                    b.sizes());
}

}  // namespace

at::Tensor cross_net_v1(const at::Tensor& x0_, const at::Tensor& w_, const at::Tensor& b_) {
  check_net_v1("cross_net_v1", x0_, w_, b_);
  const auto x0 = x0_.contiguous();
  const int64_t B = x0.size(0), N = x0.size(1), L = w_.size(0);
  const auto w = w_.to(at::kFloat).contiguous(), bias = b_.to(at::kFloat).contiguous();
  std::vector<float> Bc, c;
  v1_constants(w.data_ptr<float>(), bias.data_ptr<float>(), N, L, Bc, c);
  auto out = empty_large_like(x0);
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_net_v1", [&] {
    net_v1_forward(x0.data_ptr<scalar_t>(), w.data_ptr<float>(), Bc.data(), c.data(), out.data_ptr<scalar_t>(), B,
                   N, L);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net_v1_backward(const at::Tensor& grad_, const at::Tensor& x0_,
                                                                     const at::Tensor& w_, const at::Tensor& b_) {
  check_net_v1("cross_net_v1_backward", x0_, w_, b_);
  const auto x0 = x0_.contiguous();
  const auto g = grad_.to(x0.scalar_type()).contiguous();
  const int64_t B = x0.size(0), N = x0.size(1), L = w_.size(0);
  TORCH_CHECK_VALUE(g.sizes() == x0.sizes(), "cross_net_v1_backward: grad ", g.sizes(), " must have x0's shape ",
                    x0.sizes());
  const auto w = w_.to(at::kFloat).contiguous(), bias = b_.to(at::kFloat).contiguous();
  std::vector<float> Bc, c;
  v1_constants(w.data_ptr<float>(), bias.data_ptr<float>(), N, L, Bc, c);
  auto dx0 = empty_large_like(x0);
  auto dbar = at::empty({B, L}, at::kFloat);
  const int64_t chunks = num_chunks(B, row_grain(N * L));
  auto gsum = at::zeros({chunks, N}, at::kFloat), cbar = at::zeros({chunks, L}, at::kFloat);
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_net_v1_backward", [&] {
    net_v1_backward(g.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), w.data_ptr<float>(), c.data(),
                    dx0.data_ptr<scalar_t>(), dbar.data_ptr<float>(), gsum.data_ptr<float>(), cbar.data_ptr<float>(),
                    chunks, B, N, L);
  });
  // dW_l = sum_rows dbar_l x0 + Cbar_l Bc_l;  db_k = sum_rows G + sum_{l>k} Cbar_l w_l
  const auto Cbar = cbar.sum(0);  // [L]
  const auto Bct = at::from_blob(Bc.data(), {L + 1, N}, at::kFloat).narrow(0, 0, L);
  auto dw = at::mm(dbar.t(), x0.to(at::kFloat)).addcmul_(Cbar.unsqueeze(1), Bct);
  // suffix sums over l > k of Cbar_l w_l: row k of (Cbar w) summed from k + 1 to L - 1
  const auto cw = Cbar.unsqueeze(1) * w;                        // [L, N]
  const auto suffix = cw.flip(0).cumsum(0).flip(0) - cw;        // sum_{l >= k} - term k
  auto db = gsum.sum(0).unsqueeze(0) + suffix;
  return {dx0, dw.to(w_.scalar_type()), db.to(w_.scalar_type())};
}

// ---------------------------------------------------------------------------------------------
// cross_net_lowrank: L stacked low-rank layers, x_{l+1} = x0 * (t_l @ u_l.T + b_l) + x_l with
// t_l = x_l @ v_l.T. The layer kernels' GEMMs and passes, run in one call: the activations go
// straight into the saved stacks (xs [L-1, B, N], ts [L, B, r], ps [L, B, N]; the GEMMs write
// into them), inference alternates two buffers, and the backward updates the gradient flowing down
// the stack in place (G += dt @ v_l) and sums dx0 as it goes.

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_net_lowrank(const at::Tensor& x0_,
                                                                             const at::Tensor& u_,
                                                                             const at::Tensor& v_,
                                                                             const at::Tensor& b_, bool save) {
  check_2d(x0_, "cross_net_lowrank", "x0");
  const auto x0 = x0_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(u.dim() == 3 && v.dim() == 3 && u.size(0) >= 1 && u.size(1) == N && v.size(0) == u.size(0) &&
                        v.size(1) == u.size(2) && v.size(2) == N && u.size(2) >= 1 && b_.dim() == 2 &&
                        b_.size(0) == u.size(0) && b_.size(1) == N,
                    "cross_net_lowrank: shapes do not match: x0 ", x0.sizes(), ", u ", u.sizes(), ", v ", v.sizes(),
                    ", bias ", b_.sizes());
  const int64_t L = u.size(0), r = u.size(2);
  const auto bias = b_.to(at::kFloat).contiguous();
  auto out = empty_large_like(x0);
  auto xs = save ? empty_large({L - 1, B, N}, x0.options()) : x0.new_empty({0});
  auto ts = save ? at::empty({L, B, r}, x0.options()) : at::empty({B, r}, x0.options());
  auto ps = empty_large({save ? L : std::min<int64_t>(L, 2), B, N}, x0.options());
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_net_lowrank", [&] {
    at::Tensor x = x0;
    for (int64_t l = 0; l < L; ++l) {
      auto t = save ? ts[l] : ts;
      at::mm_out(t, x, v[l].t());
      auto p = ps[save ? l : l % 2];
      at::mm_out(p, t, u[l].t());
      const bool last = l == L - 1;
      auto y = last ? out : (save ? xs[l] : p);  // without save the epilogue overwrites p in place
      epilogue(x0.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), bias.data_ptr<float>() + l * N,
               y.data_ptr<scalar_t>(), save, B, N);
      x = y;
    }
  });
  if (!save) return {out, x0.new_empty({0}), x0.new_empty({0}), x0.new_empty({0})};
  return {out, xs, ts, ps};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_net_lowrank_backward(
    const at::Tensor& grad_, const at::Tensor& x0_, const at::Tensor& u_, const at::Tensor& v_, const at::Tensor& xs_,
    const at::Tensor& ts_, const at::Tensor& ps_) {
  check_2d(x0_, "cross_net_lowrank_backward", "x0");
  const auto x0 = x0_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  const auto xs = xs_.contiguous(), ts = ts_.contiguous(), ps = ps_.contiguous();
  const auto g = grad_.to(x0.scalar_type()).contiguous();
  const int64_t B = x0.size(0), N = x0.size(1);
  TORCH_CHECK_VALUE(u.dim() == 3 && v.dim() == 3 && u.size(1) == N && v.size(2) == N, "cross_net_lowrank_backward: ",
                    "u ", u.sizes(), " and v ", v.sizes(), " do not match x0 ", x0.sizes());
  const int64_t L = u.size(0), r = u.size(2);
  TORCH_CHECK_VALUE(g.sizes() == x0.sizes() && xs.sizes() == at::IntArrayRef({L - 1, B, N}) &&
                        ts.sizes() == at::IntArrayRef({L, B, r}) && ps.sizes() == at::IntArrayRef({L, B, N}),
                    "cross_net_lowrank_backward: grad ", g.sizes(), ", xs ", xs.sizes(), ", ts ", ts.sizes(),
                    " and ps ", ps.sizes(), " are not cross_net_lowrank's saved activations for x0 ", x0.sizes());
  auto dx0 = empty_large_like(x0), dx0_l = empty_large_like(x0), dp = empty_large_like(x0);
  auto G = empty_large_like(x0);  // the gradient flowing down the stack
  auto du = at::empty_like(u), dv = at::empty_like(v);
  auto db = at::empty({L, N}, at::kFloat);
  RANKOPS_DISPATCH_FLOAT(x0.scalar_type(), "cross_net_lowrank_backward", [&] {
    for (int64_t l = L - 1; l >= 0; --l) {
      const bool top = l == L - 1;
      // dp = G * x0, dx0 (this layer's share) = G * p_l, and G copied onto itself (or from grad)
      db[l].copy_(grad_pass(top ? g.data_ptr<scalar_t>() : G.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(),
                            ps[l].data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(),
                            (top ? dx0 : dx0_l).data_ptr<scalar_t>(), G.data_ptr<scalar_t>(), B, N));
      if (!top) dx0.add_(dx0_l);
      auto dul = du[l], dvl = dv[l];
      at::mm_out(dul, dp.t(), ts[l]);
      auto dt = at::mm(dp, u[l]);
      at::mm_out(dvl, dt.t(), l == 0 ? x0 : xs[l - 1]);
      G.addmm_(dt, v[l]);  // G = g + dt @ v_l: the gradient of this layer's input
    }
    dx0.add_(G);  // x_0 is x0
  });
  return {dx0, du, dv, db.to(u.scalar_type())};
}

}  // namespace rankops::cpu

// CPU kernels for xDeepFM's CIN layer, without the outer product in memory.
//
// For one sample b, the layer is a matrix product: out_b[n, d] = sum_k W2[n, k] Z_b[k, d] with
// k = (h, i), W2 = W viewed [Hn, H*M] and Z_b[(h,i), d] = xk[b,h,d] * x0[b,i,d]. We take S samples
// at a time (their columns side by side, C = S*D of them, ~256) and walk K in blocks of whole h's:
// each block of Z, [hb*M, C] fp32, is formed in a per-thread buffer that stays in L2 and consumed at
// once by a GEMM (ATen's, single-threaded inside at::parallel_for). Z never exists beyond one block:
// per thread the memory is a few hundred KB, against B*H*M*D elements for einsum + Conv1d.
//
// Backward, per (sample block, K block), with G the output gradient in the same [Hn, C] layout:
//   dW2[:, kblk] += G @ Zblk^T       (per-worker fp32 accumulators, added at the end)
//   dZblk         = W2[:, kblk]^T @ G (in cache, never stored)
//   dxk[h, :]    += sum_i dZ[(h,i), :] * x0[i, :];  dx0[i, :] += sum_h dZ[(h,i), :] * xk[h, :]
// Two GEMMs of the forward's size, as for any linear layer; Z is formed again instead of saved.
// All arithmetic is fp32; fp16/bf16 are converted while transposing into the buffers.
#include "cpu/cin.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <atomic>
#include <vector>

#include "cpu/alloc.h"
#include "cpu/parallel.h"
#include "registration.h"

// MKL's per-thread thread count (MKL_Set_Num_Threads_Local, by value; the lower-case names are
// the Fortran entry taking a pointer), exported by libtorch_cpu when torch uses MKL; weak so that a
// build against another BLAS still links). The GEMMs below run inside at::parallel_for, one per
// thread: left to itself MKL threads each of them again, and the oversubscribed cores ran the
// layer 8x slower than one thread did (measured, 2 cores).
extern "C" __attribute__((weak)) int MKL_Set_Num_Threads_Local(int);

namespace rankops::cpu {
namespace {

// Holds MKL to one thread on this thread for the guard's lifetime.
struct SequentialBlas {
  int prev = 0;
  SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) prev = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(prev);
  }
};

struct Blocking {
  int64_t S;   // samples per block
  int64_t hb;  // h's per K block
};

Blocking blocking(int64_t B, int64_t H, int64_t M, int64_t D) {
  // ~256 columns: wide enough for the GEMM micro-kernels, narrow enough that a 512-row Z block
  // (512 KB fp32) stays in a core's L2.
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(B, 256 / std::max<int64_t>(1, D)));
  const int64_t hb = std::max<int64_t>(1, std::min<int64_t>(H, 512 / std::max<int64_t>(1, M)));
  return {S, hb};
}

// dst[r, s*D + d] = src[b0+s, r, d] for s < S: one sample block of a [B, R, D] tensor, as fp32 rows.
template <typename T>
void load_block(const T* src, float* dst, int64_t b0, int64_t S, int64_t R, int64_t D) {
  const int64_t C = S * D;
  for (int64_t s = 0; s < S; ++s) {
    const T* sb = src + (b0 + s) * R * D;
    for (int64_t r = 0; r < R; ++r) {
      float* drow = dst + r * C + s * D;
      const T* srow = sb + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) drow[d] = static_cast<float>(srow[d]);
    }
  }
}

template <typename T>
void store_block(const float* src, T* dst, int64_t b0, int64_t S, int64_t R, int64_t D, const float* bias) {
  const int64_t C = S * D;
  for (int64_t s = 0; s < S; ++s) {
    T* db = dst + (b0 + s) * R * D;
    for (int64_t r = 0; r < R; ++r) {
      const float* srow = src + r * C + s * D;
      T* drow = db + r * D;
      const float add = bias ? bias[r] : 0.f;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) drow[d] = static_cast<T>(srow[d] + add);
    }
  }
}

// Z[(h - h0)*M + i, :] = xk[h, :] * x0[i, :] for h in [h0, h1): the A operand of one K block.
inline void form_z(const float* xkT, const float* x0T, float* z, int64_t h0, int64_t h1, int64_t M, int64_t C) {
  for (int64_t h = h0; h < h1; ++h) {
    const float* a = xkT + h * C;
    for (int64_t i = 0; i < M; ++i) {
      const float* b = x0T + i * C;
      float* zr = z + ((h - h0) * M + i) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) zr[c] = a[c] * b[c];
    }
  }
}

at::Tensor wrap(float* p, int64_t rows, int64_t cols) {
  return at::from_blob(p, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

template <typename T>
void cin_forward_kernel(const T* xk, const T* x0, const at::Tensor& W2, const float* bias, T* out, int64_t B,
                        int64_t H, int64_t M, int64_t D, int64_t Hn) {
  const auto [S, hb] = blocking(B, H, M, D);
  const int64_t nblocks = (B + S - 1) / S;
  std::atomic<int64_t> next{0};  // sample blocks handed out one at a time (cpu/parallel.h)
  at::parallel_for(0, num_slots(nblocks), 1, [&](int64_t, int64_t) {
    // OpenMP workers start with grad mode on; the ATen GEMMs here must not see autograd.
    const c10::NoGradGuard no_grad;
    const SequentialBlas seq;
    const int64_t C = S * D;
    std::vector<float> xk_buf(H * C), x0_buf(M * C), z_buf(hb * M * C), acc_buf(Hn * C);
    for (int64_t blk = next++; blk < nblocks; blk = next++) {
      const int64_t b0 = blk * S, s_n = std::min(S, B - b0), c_n = s_n * D;
      load_block(xk, xk_buf.data(), b0, s_n, H, D);
      load_block(x0, x0_buf.data(), b0, s_n, M, D);
      auto acc = wrap(acc_buf.data(), Hn, c_n);
      for (int64_t h0 = 0; h0 < H; h0 += hb) {
        const int64_t h1 = std::min(H, h0 + hb);
        form_z(xk_buf.data(), x0_buf.data(), z_buf.data(), h0, h1, M, c_n);
        const auto z = wrap(z_buf.data(), (h1 - h0) * M, c_n);
        const auto w = W2.narrow(1, h0 * M, (h1 - h0) * M);
        if (h0 == 0) {
          at::mm_out(acc, w, z);
        } else {
          acc.addmm_(w, z);
        }
      }
      store_block(acc_buf.data(), out, b0, s_n, Hn, D, bias);
    }
  });
}

template <typename T>
void cin_backward_kernel(const T* g, const T* xk, const T* x0, const at::Tensor& W2, T* dxk, T* dx0, float* dw_part,
                         float* db_part, int64_t chunks, int64_t B, int64_t H, int64_t M, int64_t D, int64_t Hn) {
  const auto [S, hb] = blocking(B, H, M, D);
  const int64_t nblocks = (B + S - 1) / S;
  const int64_t K = H * M;
  std::atomic<int64_t> next{0};  // sample blocks handed out one at a time (cpu/parallel.h)
  at::parallel_for(0, chunks, 1, [&](int64_t chunk, int64_t) {
    // OpenMP workers start with grad mode on; the ATen GEMMs here must not see autograd.
    const c10::NoGradGuard no_grad;
    const SequentialBlas seq;
    const int64_t C = S * D;
    std::vector<float> xk_buf(H * C), x0_buf(M * C), g_buf(Hn * C), z_buf(hb * M * C), dz_buf(hb * M * C),
        dxk_buf(H * C), dx0_buf(M * C);
    auto dw = wrap(dw_part + chunk * Hn * K, Hn, K);
    float* db = db_part + chunk * Hn;
    for (int64_t blk = next++; blk < nblocks; blk = next++) {
      const int64_t b0 = blk * S, s_n = std::min(S, B - b0), c_n = s_n * D;
      load_block(xk, xk_buf.data(), b0, s_n, H, D);
      load_block(x0, x0_buf.data(), b0, s_n, M, D);
      load_block(g, g_buf.data(), b0, s_n, Hn, D);
      for (int64_t n = 0; n < Hn; ++n) {
        const float* gr = g_buf.data() + n * c_n;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < c_n; ++c) s += gr[c];
        db[n] += s;
      }
      std::fill(dx0_buf.begin(), dx0_buf.begin() + M * c_n, 0.f);
      const auto gm = wrap(g_buf.data(), Hn, c_n);
      for (int64_t h0 = 0; h0 < H; h0 += hb) {
        const int64_t h1 = std::min(H, h0 + hb), kn = (h1 - h0) * M;
        form_z(xk_buf.data(), x0_buf.data(), z_buf.data(), h0, h1, M, c_n);
        const auto z = wrap(z_buf.data(), kn, c_n);
        dw.narrow(1, h0 * M, kn).addmm_(gm, z.t());
        auto dz = wrap(dz_buf.data(), kn, c_n);
        at::mm_out(dz, W2.narrow(1, h0 * M, kn).t(), gm);
        for (int64_t h = h0; h < h1; ++h) {
          float* dxr = dxk_buf.data() + h * c_n;
          const float* xkr = xk_buf.data() + h * c_n;
          std::fill(dxr, dxr + c_n, 0.f);
          for (int64_t i = 0; i < M; ++i) {
            const float* dzr = dz_buf.data() + ((h - h0) * M + i) * c_n;
            const float* x0r = x0_buf.data() + i * c_n;
            float* dx0r = dx0_buf.data() + i * c_n;
#pragma omp simd
            for (int64_t c = 0; c < c_n; ++c) {
              dxr[c] += dzr[c] * x0r[c];
              dx0r[c] += dzr[c] * xkr[c];
            }
          }
        }
      }
      store_block(dxk_buf.data(), dxk, b0, s_n, H, D, nullptr);
      store_block(dx0_buf.data(), dx0, b0, s_n, M, D, nullptr);
    }
  });
}

void check(const at::Tensor& xk, const at::Tensor& x0, const at::Tensor& w, const char* op) {
  TORCH_CHECK_VALUE(xk.dim() == 3 && x0.dim() == 3 && w.dim() == 3, op, ": xk, x0 and weight must be 3-D");
  TORCH_CHECK_VALUE(x0.size(0) == xk.size(0) && x0.size(2) == xk.size(2) && w.size(1) == xk.size(1) &&
                        w.size(2) == x0.size(1),
                    op, ": shapes do not match: xk ", xk.sizes(), ", x0 ", x0.sizes(), ", weight ", w.sizes());
}

}  // namespace

at::Tensor cin_layer(const at::Tensor& xk_, const at::Tensor& x0_, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias_) {
  check(xk_, x0_, weight, "cin_layer");
  const auto xk = xk_.contiguous(), x0 = x0_.contiguous();
  const int64_t B = xk.size(0), H = xk.size(1), D = xk.size(2), M = x0.size(1), Hn = weight.size(0);
  auto out = empty_large({B, Hn, D}, xk.options());  // huge pages: a fresh torch tensor faults 4 KiB at a time
  if (out.numel() == 0) return out;
  if (H == 0 || M == 0) {  // an empty sum: only the bias
    out.zero_();
    if (bias_) out.add_(bias_->reshape({1, Hn, 1}));
    return out;
  }
  const auto W2 = weight.to(at::kFloat).contiguous().view({Hn, H * M});
  at::Tensor bias;
  if (bias_) {
    TORCH_CHECK_VALUE(bias_->numel() == Hn, "cin_layer: bias must have ", Hn, " elements, got ", bias_->sizes());
    bias = bias_->to(at::kFloat).contiguous();
  }
  RANKOPS_DISPATCH_FLOAT(xk.scalar_type(), "cin_layer", [&] {
    cin_forward_kernel(xk.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), W2,
                       bias.defined() ? bias.data_ptr<float>() : nullptr, out.data_ptr<scalar_t>(), B, H, M, D, Hn);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cin_layer_backward(const at::Tensor& grad_,
                                                                              const at::Tensor& xk_,
                                                                              const at::Tensor& x0_,
                                                                              const at::Tensor& weight) {
  check(xk_, x0_, weight, "cin_layer_backward");
  const auto xk = xk_.contiguous(), x0 = x0_.contiguous();
  const int64_t B = xk.size(0), H = xk.size(1), D = xk.size(2), M = x0.size(1), Hn = weight.size(0);
  const auto g = grad_.to(xk.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef({B, Hn, D}), "cin_layer_backward: grad has shape ", g.sizes(),
                    ", expected [", B, ", ", Hn, ", ", D, "]");
  if (B == 0 || D == 0 || H == 0 || M == 0) {
    return {at::zeros_like(xk), at::zeros_like(x0), at::zeros_like(weight), g.to(at::kFloat).sum(at::IntArrayRef{0, 2}).to(weight.scalar_type())};
  }
  auto dxk = empty_large_like(xk), dx0 = empty_large_like(x0);  // every element is stored
  const auto W2 = weight.to(at::kFloat).contiguous().view({Hn, H * M});
  const int64_t S = blocking(B, H, M, D).S;
  const int64_t chunks = num_slots((B + S - 1) / S);  // one dW / db accumulator per worker
  auto dw = at::zeros({chunks, Hn, H * M}, at::kFloat), db = at::zeros({chunks, Hn}, at::kFloat);
  RANKOPS_DISPATCH_FLOAT(xk.scalar_type(), "cin_layer_backward", [&] {
    cin_backward_kernel(g.data_ptr<scalar_t>(), xk.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), W2,
                        dxk.data_ptr<scalar_t>(), dx0.data_ptr<scalar_t>(), dw.data_ptr<float>(), db.data_ptr<float>(),
                        chunks, B, H, M, D, Hn);
  });
  return {dxk, dx0, dw.sum(0).view({Hn, H, M}).to(weight.scalar_type()), db.sum(0).to(weight.scalar_type())};
}

}  // namespace rankops::cpu

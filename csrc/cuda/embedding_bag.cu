// CUDA embedding-bag kernels (see embedding_bag.h for the contracts).
//
// Forward: a sub-warp of `lanes` threads per bag (lanes = D / VEC rounded up to a power of two,
// at most 32), each thread owning VEC consecutive elements of the row: one 16-byte load per row
// per thread when D * sizeof(T) is a multiple of 16 (VEC = 16 / sizeof(T)), else VEC = 1. Short
// rows (D = 16 fp32 needs 4 lanes) pack several bags into one warp so no lane idles. The lookup
// loop is unrolled so that several rows are in flight per thread before the first is used.
//
// Backward / fused update: the host sorts the lookups by row; one sub-warp per unique row reduces
// its segment in order (no atomics: deterministic) and applies the row functor.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/embedding_bag.h"

namespace rankops::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_f(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_f(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f(float v) {
  return __float2bfloat16_rn(v);
}

// VEC elements of T as one aligned access (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
  const Vec<T, VEC> x = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_f(x.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
  Vec<T, VEC> x;
#pragma unroll
  for (int j = 0; j < VEC; ++j) x.v[j] = from_f<T>(in[j]);
  *reinterpret_cast<Vec<T, VEC>*>(p) = x;
}

// MAX is a template flag: the argmax registers of the max mode stay out of the sum / mean code.
template <typename T, typename I, int VEC, bool MAX>
__global__ void __launch_bounds__(kThreads) forward_kernel(const T* __restrict__ w, const int64_t* __restrict__ toff,
                                                           const I* __restrict__ idx, const I* __restrict__ off,
                                                           const T* __restrict__ psw, int mode, T* __restrict__ out,
                                                           int64_t* __restrict__ argmax, int64_t T_, int64_t B,
                                                           int64_t D, int lanes_log2) {
  // grid (bags of a table / bags per block, tables): no 64-bit divisions (they are subroutine calls)
  const int lanes = 1 << lanes_log2;
  const int64_t t = blockIdx.y;
  const int64_t b = ((static_cast<int64_t>(blockIdx.x) * kThreads) + threadIdx.x) >> lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  if (b >= B) return;
  const int64_t k = t * B + b;
  const int64_t i0 = off[k], i1 = off[k + 1];
  const T* base = w + toff[t] * D;
  T* o = out + (b * T_ + t) * D;
  // 32-bit column loop, not unrolled: a 64-bit trip count would need a division subroutine
#pragma unroll 1
  for (int dc = lane * VEC; dc < static_cast<int>(D); dc += lanes * VEC) {
    float acc[VEC];
    int64_t am[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc[j] = MAX ? -INFINITY : 0.f;
      am[j] = -1;
    }
#pragma unroll 4
    for (int64_t i = i0; i < i1; ++i) {
      float v[VEC];
      load_vec<T, VEC>(base + static_cast<int64_t>(idx[i]) * D + dc, v);
      if constexpr (MAX) {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (v[j] > acc[j]) {  // strict: the first of equal values wins, as in the reference
            acc[j] = v[j];
            am[j] = i;
          }
      } else {
        const float s = psw ? to_f(psw[i]) : 1.f;
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] = fmaf(s, v[j], acc[j]);
      }
    }
    if (mode == 1 && i1 > i0) {
      const float inv = __fdividef(1.f, static_cast<float>(i1 - i0));  // no IEEE-division subroutine
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] *= inv;
    }
    if constexpr (MAX) {
      if (i1 == i0) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) argmax[(b * T_ + t) * D + dc + j] = am[j];
    }
    store_vec<T, VEC>(o + dc, acc);
  }
}

// sqrt without the IEEE slow-path subroutine (its call made ptxas spill); ~2 ulp.
__device__ __forceinline__ float fast_sqrt(float x) { return x > 0.f ? x * rsqrtf(x) : 0.f; }

// Sum over the `lanes` threads of a sub-warp (lanes a power of two, sub-warps aligned).
__device__ __forceinline__ float subwarp_sum(float v, int lanes) {
  for (int o = lanes / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o, lanes);
  return v;
}

template <typename T, int VEC>
__device__ __forceinline__ void segment_grad(float* g, int dc, int mode, const T* __restrict__ grad,
                                             const int64_t* __restrict__ perm, const int64_t* __restrict__ orows,
                                             const float* __restrict__ scale, const int64_t* __restrict__ argmax,
                                             int64_t j0, int64_t j1, int64_t D) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) g[j] = 0.f;
  // Not unrolled: segments are short (most rows are hit once or twice per batch), and unrolling
  // made ptxas spill (-Xptxas -v, sm_80 and sm_90).
#pragma unroll 1
  for (int64_t jj = j0; jj < j1; ++jj) {
    const int64_t p = perm[jj];
    const int64_t orow = orows[p];
    float v[VEC];
    load_vec<T, VEC>(grad + orow * D + dc, v);
    if (mode == 2) {
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        if (argmax[orow * D + dc + j] == p) g[j] += v[j];
    } else {
      const float s = scale ? scale[p] : 1.f;
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[j] = fmaf(s, v[j], g[j]);
    }
  }
}

// OP is a template parameter: each row functor gets its own register allocation (a runtime op
// made ptxas spill).
template <typename T, int VEC, int OP>
__global__ void __launch_bounds__(kThreads) segment_kernel(int mode, const T* __restrict__ grad,
                                                           const int64_t* __restrict__ perm,
                                                           const int64_t* __restrict__ orows,
                                                           const float* __restrict__ scale,
                                                           const int64_t* __restrict__ argmax,
                                                           const int64_t* __restrict__ seg,
                                                           const int64_t* __restrict__ rows, int64_t U,
                                                           T* __restrict__ w, float* __restrict__ state,
                                                           T* __restrict__ gw, int64_t D, float lr, float eps,
                                                           int lanes_log2) {
  const int lanes = 1 << lanes_log2;
  const int64_t u = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  // Sub-warps past U still take part in the row-wise shuffles below (all lanes of a warp must),
  // so they only skip the memory accesses.
  const bool live = u < U;
  const int64_t j0 = live ? seg[u] : 0, j1 = live ? seg[u + 1] : 0;
  const int64_t r = live ? rows[u] : 0;
  float rowwise_step = 0.f;
  if constexpr (OP == 3) {  // mean of g^2 over the whole row first, then the update (recomputing g per chunk)
    float sq = 0.f;
#pragma unroll 1
    for (int dc = lane * VEC; dc < static_cast<int>(D); dc += lanes * VEC) {
      float g[VEC];
      segment_grad<T, VEC>(g, dc, mode, grad, perm, orows, scale, argmax, j0, j1, D);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sq += g[j] * g[j];
    }
    // lanes whose first chunk is past D (D < lanes*VEC) add 0; every lane runs the shuffle
    sq = subwarp_sum(sq, lanes);
    if (live) {
      const float s = state[r] + __fdividef(sq, static_cast<float>(D));
      if (lane == 0) state[r] = s;
      rowwise_step = __fdividef(lr, fast_sqrt(s) + eps);  // no IEEE slow-path calls (they spilled)
    }
  }
  if (!live) return;
#pragma unroll 1
  for (int dc = lane * VEC; dc < static_cast<int>(D); dc += lanes * VEC) {
    float g[VEC];
    segment_grad<T, VEC>(g, dc, mode, grad, perm, orows, scale, argmax, j0, j1, D);
    if constexpr (OP == 0) {
      store_vec<T, VEC>(gw + r * D + dc, g);
      continue;
    }
    float wv[VEC];
    load_vec<T, VEC>(w + r * D + dc, wv);
    if constexpr (OP == 1) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) wv[j] -= lr * g[j];
    } else if constexpr (OP == 2) {
      float* st = state + r * D + dc;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float sj = st[j] + g[j] * g[j];
        st[j] = sj;
        wv[j] -= __fdividef(lr * g[j], fast_sqrt(sj) + eps);
      }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) wv[j] -= rowwise_step * g[j];
    }
    store_vec<T, VEC>(w + r * D + dc, wv);
  }
}

template <typename T, typename I, int VEC>
__global__ void __launch_bounds__(kThreads) psw_grad_kernel(const T* __restrict__ grad, const T* __restrict__ w,
                                                            const int64_t* __restrict__ toff,
                                                            const I* __restrict__ idx, const I* __restrict__ off,
                                                            T* __restrict__ gp, int64_t T_, int64_t B, int64_t D,
                                                            int lanes_log2) {
  const int lanes = 1 << lanes_log2;
  const int64_t t = blockIdx.y;
  const int64_t b = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  const bool live = b < B;
  const int64_t k = t * B + b;
  const int64_t i0 = live ? off[k] : 0, i1 = live ? off[k + 1] : 0;
  // The longest bag of the warp sets the trip count: every lane must reach each shuffle.
  int64_t n = i1 - i0;
  for (int o = 16; o > 0; o /= 2) n = max(n, __shfl_xor_sync(0xffffffffu, n, o));
  for (int64_t q = 0; q < n; ++q) {
    const int64_t i = i0 + q;
    float acc = 0.f;
    if (i < i1) {
      const T* row = w + (toff[t] + static_cast<int64_t>(idx[i])) * D;
      const T* gr = grad + (b * T_ + t) * D;
      // 32-bit column loop, not unrolled: a 64-bit trip count would need a division subroutine
#pragma unroll 1
  for (int dc = lane * VEC; dc < static_cast<int>(D); dc += lanes * VEC) {
        float a[VEC], c[VEC];
        load_vec<T, VEC>(row + dc, a);
        load_vec<T, VEC>(gr + dc, c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc = fmaf(a[j], c[j], acc);
      }
    }
    acc = subwarp_sum(acc, lanes);
    if (i < i1 && lane == 0) gp[i] = from_f<T>(acc);
  }
}

// Threads per bag: enough VEC-wide lanes to cover D once, a power of two, at most a warp.
int lanes_for(int64_t D, int vec) {
  int lanes = 1;
  while (lanes < 32 && static_cast<int64_t>(lanes) * vec < D) lanes *= 2;
  return lanes;
}

template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

// 16-byte vectors when every row starts 16-byte aligned (the allocators align bases to 256).
template <typename T>
bool can_vectorize(int64_t D, const void* p) {
  return (D * static_cast<int64_t>(sizeof(T))) % 16 == 0 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

int64_t blocks_for(int64_t items, int lanes) { return (items * lanes + kThreads - 1) / kThreads; }

int log2i(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

template <typename T, typename I>
cudaError_t forward_t(const void* w, const int64_t* toff, const void* idx, const void* off, const void* psw, int mode,
                      void* out, int64_t* argmax, int64_t T_, int64_t B, int64_t D, cudaStream_t stream) {
  const bool vec = can_vectorize<T>(D, w) && can_vectorize<T>(D, out);
  const int v = vec ? kVec16<T> : 1;
  const int lanes = lanes_for(D, v);
  const dim3 grid(static_cast<unsigned>(blocks_for(B, lanes)), static_cast<unsigned>(T_));
  if (B == 0 || T_ == 0) return cudaSuccess;
  auto launch = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(static_cast<const T*>(w), toff, static_cast<const I*>(idx),
                                          static_cast<const I*>(off), static_cast<const T*>(psw), mode,
                                          static_cast<T*>(out), argmax, T_, B, D, log2i(lanes));
  };
  if (vec) {
    if (mode == 2) launch(forward_kernel<T, I, kVec16<T>, true>);
    else launch(forward_kernel<T, I, kVec16<T>, false>);
  } else {
    if (mode == 2) launch(forward_kernel<T, I, 1, true>);
    else launch(forward_kernel<T, I, 1, false>);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t segments_t(int op, int mode, const void* grad, const int64_t* perm, const int64_t* orows,
                       const float* scale, const int64_t* argmax, const int64_t* seg, const int64_t* rows, int64_t U,
                       void* w, float* state, void* gw, int64_t D, float lr, float eps, cudaStream_t stream) {
  const bool vec = can_vectorize<T>(D, grad) && can_vectorize<T>(D, op == 0 ? gw : w);
  const int v = vec ? kVec16<T> : 1;
  const int lanes = lanes_for(D, v);
  const int64_t blocks = blocks_for(U, lanes);
  if (blocks == 0) return cudaSuccess;
  auto launch = [&](auto kernel) {
    kernel<<<blocks, kThreads, 0, stream>>>(mode, static_cast<const T*>(grad), perm, orows, scale, argmax, seg, rows, U,
                                            static_cast<T*>(w), state, static_cast<T*>(gw), D, lr, eps,
                                            log2i(lanes));
  };
  auto by_op = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    switch (op) {
      case 0: launch(segment_kernel<T, V, 0>); break;
      case 1: launch(segment_kernel<T, V, 1>); break;
      case 2: launch(segment_kernel<T, V, 2>); break;
      default: launch(segment_kernel<T, V, 3>); break;
    }
  };
  if (vec) by_op(std::integral_constant<int, kVec16<T>>{});
  else by_op(std::integral_constant<int, 1>{});
  return cudaGetLastError();
}

template <typename T, typename I>
cudaError_t psw_grad_t(const void* grad, const void* w, const int64_t* toff, const void* idx, const void* off,
                       void* gp, int64_t T_, int64_t B, int64_t D, cudaStream_t stream) {
  const bool vec = can_vectorize<T>(D, w) && can_vectorize<T>(D, grad);
  const int v = vec ? kVec16<T> : 1;
  const int lanes = lanes_for(D, v);
  const dim3 blocks(static_cast<unsigned>(blocks_for(B, lanes)), static_cast<unsigned>(T_));
  if (B == 0 || T_ == 0) return cudaSuccess;
  if (vec)
    psw_grad_kernel<T, I, kVec16<T>><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(w), toff, static_cast<const I*>(idx),
        static_cast<const I*>(off), static_cast<T*>(gp), T_, B, D, log2i(lanes));
  else
    psw_grad_kernel<T, I, 1><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(w), toff, static_cast<const I*>(idx),
        static_cast<const I*>(off), static_cast<T*>(gp), T_, B, D, log2i(lanes));
  return cudaGetLastError();
}

}  // namespace

#define RANKOPS_EB_DTYPE(DTYPE, CALL)                  \
  switch (DTYPE) {                                     \
    case DType::kFloat: {                              \
      using scalar_t = float;                                 \
      return CALL;                                     \
    }                                                  \
    case DType::kHalf: {                               \
      using scalar_t = __half;                                \
      return CALL;                                     \
    }                                                  \
    case DType::kBFloat16: {                           \
      using scalar_t = __nv_bfloat16;                         \
      return CALL;                                     \
    }                                                  \
  }                                                    \
  return cudaErrorInvalidValue

cudaError_t embedding_bag_forward(DType dtype, bool index64, const void* weights, const int64_t* table_offsets,
                                  const void* indices, const void* offsets, const void* per_sample_weights, int mode,
                                  void* out, int64_t* argmax, int64_t T, int64_t B, int64_t D, cudaStream_t stream) {
  if (index64) {
    RANKOPS_EB_DTYPE(dtype, (forward_t<scalar_t, int64_t>(weights, table_offsets, indices, offsets, per_sample_weights, mode,
                                                   out, argmax, T, B, D, stream)));
  }
  RANKOPS_EB_DTYPE(dtype, (forward_t<scalar_t, int32_t>(weights, table_offsets, indices, offsets, per_sample_weights, mode,
                                                 out, argmax, T, B, D, stream)));
}

cudaError_t embedding_bag_segments(DType dtype, int op, int mode, const void* grad, const int64_t* perm,
                                   const int64_t* out_rows, const float* scale, const int64_t* argmax,
                                   const int64_t* seg, const int64_t* rows, int64_t U, void* weights, float* state,
                                   void* grad_weights, int64_t D, float lr, float eps, cudaStream_t stream) {
  RANKOPS_EB_DTYPE(dtype, (segments_t<scalar_t>(op, mode, grad, perm, out_rows, scale, argmax, seg, rows, U, weights,
                                                state, grad_weights, D, lr, eps, stream)));
}

cudaError_t embedding_bag_psw_grad(DType dtype, bool index64, const void* grad, const void* weights,
                                   const int64_t* table_offsets, const void* indices, const void* offsets,
                                   void* grad_psw, int64_t T, int64_t B, int64_t D, cudaStream_t stream) {
  if (index64) {
    RANKOPS_EB_DTYPE(dtype, (psw_grad_t<scalar_t, int64_t>(grad, weights, table_offsets, indices, offsets, grad_psw, T, B, D,
                                                    stream)));
  }
  RANKOPS_EB_DTYPE(dtype, (psw_grad_t<scalar_t, int32_t>(grad, weights, table_offsets, indices, offsets, grad_psw, T, B, D,
                                                  stream)));
}

}  // namespace rankops::cuda

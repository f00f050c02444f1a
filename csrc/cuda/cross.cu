// CUDA kernels of the cross family (DCN-V2 full rank): the elementwise passes around the GEMMs.
//
// The GEMMs run on cuBLASLt (csrc/cross.cpp: the bias in its epilogue, the residual's gradient as
// beta * C); cuBLASLt has no epilogue that multiplies by an arbitrary matrix, so the x0 Hadamard
// and the residual are one pass here, each [B, N] operand read once:
//   forward   y = x0 * p + x (p = the GEMM's output, + bias when the GEMM could not add it)
//   backward  dp = g * x0, dx0 (+)= g * p (fp32 across a stack), a copy of g, and the column sums
//             of dp (db) from the same registers: fp32 per-block partials, then one small sum
//   finish    dx0 = acc + G (the stack's last step)
// All three share one tiling: a block of 256 threads is TX column slots x TY rows; a thread owns one
// column slot of V elements (16 bytes when every operand allows it, else one element) and walks
// rows with a grid stride, U rows in flight. Accumulation is fp32, every output rounded once.
#include "cuda/cross.h"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace rankops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxStrips = 65535;  // grid.y


// V floats: float4 accesses when V is a multiple of 4 (the vector paths; 16-byte aligned there).
template <int V>
__device__ __forceinline__ void load_f(const float* p, float* f) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + i);
      f[i] = v.x, f[i + 1] = v.y, f[i + 2] = v.z, f[i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = p[i];
  }
}
template <int V>
__device__ __forceinline__ void store_f(float* p, const float* f) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) *reinterpret_cast<float4*>(p + i) = make_float4(f[i], f[i + 1], f[i + 2], f[i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = f[i];
  }
}

// Rows in flight per thread: four 16-byte vectors per operand, or eight 16-bit / four 32-bit
// scalars (loads in flight are what a memory-bound pass needs; eight fp32 rows of five operands
// made the backward prologue spill).
template <typename T, bool kVec>
struct InFlight {
  static constexpr int U = (kVec || sizeof(T) == 4) ? 4 : 8;
};

// ------------------------------------------------------------------------------------------------
// Forward epilogue: y = x0 * (q (+ bias)) + x, q = p written back when write_p. q may alias y, so
// neither is __restrict__; x0 and x are only read (and never alias q or y).

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    fwd_epilogue_kernel(const T* __restrict__ x0, int64_t ld0, const T* __restrict__ x, int64_t ldx, T* q, int64_t ldq,
                        const T* __restrict__ bias, bool write_p, T* y, int64_t ldy, int64_t B, int cv) {
  using C = Cols<T, kVec>;
  constexpr int V = C::V;
  constexpr int U = InFlight<T, kVec>::U;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= cv) return;  // no barrier in this kernel
  const int64_t j = static_cast<int64_t>(c) * V;
  float bv[V];
#pragma unroll
  for (int v = 0; v < V; ++v) bv[v] = 0.f;
  if (bias != nullptr) C::to_float(C::load(bias + j), bv);
  const int64_t rows = static_cast<int64_t>(blockDim.y) * U;
  for (int64_t b0 = static_cast<int64_t>(blockIdx.x) * rows + threadIdx.y; b0 < B; b0 += gridDim.x * rows) {
    typename C::Raw r0[U], rx[U], rq[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = b0 + static_cast<int64_t>(u) * blockDim.y;
      if (b < B) {
        r0[u] = C::load(x0 + b * ld0 + j);
        rx[u] = C::load(x + b * ldx + j);
        rq[u] = C::load(q + b * ldq + j);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = b0 + static_cast<int64_t>(u) * blockDim.y;
      if (b < B) {
        float a[V], e[V], p[V];
        C::to_float(r0[u], a);
        C::to_float(rx[u], e);
        C::to_float(rq[u], p);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          p[v] += bv[v];
          e[v] = fmaf(a[v], p[v], e[v]);
        }
        if (write_p) C::store(q + b * ldq + j, C::from_float(p));
        C::store(y + b * ldy + j, C::from_float(e));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward prologue: dp = g * x0, dx0 (+)= g * p, gcopy = g; per-block column sums of dp (fp32,
// before rounding) into partial[blockIdx.x, :]. A barrier follows the row loop, so no thread leaves
// early.

template <typename T, bool kVec, int kMode>
__global__ void __launch_bounds__(kThreads)
    bwd_prologue_kernel(const T* __restrict__ g, int64_t ldg, const T* __restrict__ x0, int64_t ld0,
                        const T* __restrict__ p, int64_t ldp, T* __restrict__ dp, int64_t lddp, void* __restrict__ dx0,
                        int64_t lddx, T* __restrict__ gcopy, int64_t ldgc, float* __restrict__ partial, int64_t B, int N,
                        int cv) {
  using C = Cols<T, kVec>;
  constexpr int V = C::V;
  constexpr int U = InFlight<T, kVec>::U;
  __shared__ float red[kThreads * V];
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  const bool valid = c < cv;
  const int64_t j = static_cast<int64_t>(c) * V;
  float s[V];
#pragma unroll
  for (int v = 0; v < V; ++v) s[v] = 0.f;
  const int64_t rows = static_cast<int64_t>(blockDim.y) * U;
  for (int64_t b0 = static_cast<int64_t>(blockIdx.x) * rows + threadIdx.y; valid && b0 < B;
       b0 += gridDim.x * rows) {
    typename C::Raw rg[U], r0[U], rp[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = b0 + static_cast<int64_t>(u) * blockDim.y;
      if (b < B) {
        rg[u] = C::load(g + b * ldg + j);
        r0[u] = C::load(x0 + b * ld0 + j);
        rp[u] = C::load(p + b * ldp + j);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = b0 + static_cast<int64_t>(u) * blockDim.y;
      if (b < B) {
        float gv[V], a[V], pv[V];
        C::to_float(rg[u], gv);
        C::to_float(r0[u], a);
        C::to_float(rp[u], pv);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          a[v] *= gv[v];  // dp
          s[v] += a[v];
          pv[v] *= gv[v];  // this layer's share of dx0
        }
        C::store(dp + b * lddp + j, C::from_float(a));
        if constexpr (kMode == static_cast<int>(Dx0Mode::kStore)) {
          C::store(static_cast<T*>(dx0) + b * lddx + j, C::from_float(pv));
        } else {
          float* acc = static_cast<float*>(dx0) + b * lddx + j;
          if constexpr (kMode == static_cast<int>(Dx0Mode::kAdd)) {
            float o[V];
            load_f<V>(acc, o);
#pragma unroll
            for (int v = 0; v < V; ++v) pv[v] += o[v];
          }
          store_f<V>(acc, pv);
        }
        if (gcopy != nullptr) C::store(gcopy + b * ldgc + j, rg[u]);
      }
    }
  }
  // column sums over the block's TY rows of threads: [TY][TX][V] in shared memory
  const int slot = (threadIdx.y * blockDim.x + threadIdx.x) * V;
#pragma unroll
  for (int v = 0; v < V; ++v) red[slot + v] = s[v];
  __syncthreads();
  if (threadIdx.y == 0 && valid) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float t = 0.f;
      for (int r = 0; r < static_cast<int>(blockDim.y); ++r) t += red[(r * blockDim.x + threadIdx.x) * V + v];
      partial[static_cast<int64_t>(blockIdx.x) * N + j + v] = t;
    }
  }
}

// db[j] = sum over the R partial rows (fixed order: deterministic).
template <typename T>
__global__ void __launch_bounds__(kThreads) colsum_kernel(const float* __restrict__ partial, int R, int N,
                                                            T* __restrict__ db) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= N) return;
  float t = 0.f;
  for (int r = 0; r < R; ++r) t += partial[static_cast<int64_t>(r) * N + j];
  db[j] = from_f<T>(t);
}

// ------------------------------------------------------------------------------------------------
// dx0 = acc + G (acc fp32; dx0 and acc [B, N] contiguous, G rows at ldG).

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) finish_kernel(const float* __restrict__ acc, const T* __restrict__ G,
                                                            int64_t ldG, T* __restrict__ dx0, int64_t B, int N,
                                                            int cv) {
  using C = Cols<T, kVec>;
  constexpr int V = C::V;
  constexpr int U = InFlight<T, kVec>::U;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= cv) return;
  const int64_t j = static_cast<int64_t>(c) * V;
  const int64_t rows = static_cast<int64_t>(blockDim.y) * U;
  for (int64_t b0 = static_cast<int64_t>(blockIdx.x) * rows + threadIdx.y; b0 < B; b0 += gridDim.x * rows) {
    typename C::Raw rG[U];
    float a[U][V];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = b0 + static_cast<int64_t>(u) * blockDim.y;
      if (b < B) {
        rG[u] = C::load(G + b * ldG + j);
        load_f<V>(acc + b * N + j, a[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = b0 + static_cast<int64_t>(u) * blockDim.y;
      if (b < B) {
        float e[V];
        C::to_float(rG[u], e);
#pragma unroll
        for (int v = 0; v < V; ++v) e[v] += a[u][v];
        C::store(dx0 + b * N + j, C::from_float(e));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

// The 16-byte path: N and every row stride a multiple of V elements, every pointer 16-byte aligned
// (null pointers, for absent operands, pass).
template <typename T>
bool vec_ok(int64_t N, std::initializer_list<int64_t> lds, std::initializer_list<const void*> ptrs) {
  constexpr int64_t V = 16 / static_cast<int64_t>(sizeof(T));
  if (N % V != 0) return false;
  for (int64_t ld : lds)
    if (ld % V != 0) return false;
  for (const void* p : ptrs)
    if (p != nullptr && !aligned16(p)) return false;
  return true;
}

// Block (TX column slots x TY rows, TX the power of two >= the slots up to a warp) and grid
// (row blocks x column strips) of the row-walking kernels; cv = column slots per row.
struct Plan {
  dim3 grid, block;
  bool ok;
};
Plan plan(int64_t B, int64_t cv, int U, int64_t max_row_blocks) {
  int tx = 1;
  while (tx < cv && tx < 32) tx <<= 1;
  const int ty = kThreads / tx;
  const int64_t strips = cdiv(cv, tx);
  const int64_t row_blocks = std::min(cdiv(B, static_cast<int64_t>(ty) * U), max_row_blocks);
  Plan p;
  p.ok = strips <= kMaxStrips && row_blocks >= 1;
  p.block = dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
  p.grid = dim3(static_cast<unsigned>(std::max<int64_t>(row_blocks, 1)), static_cast<unsigned>(std::min<int64_t>(strips, kMaxStrips)));
  return p;
}

constexpr int64_t kMaxRowBlocks = 1 << 20;  // the passes without a reduction: grid stride past this

}  // namespace

cudaError_t cross_forward_epilogue(DType dtype, const void* x0, int64_t ld_x0, const void* x, int64_t ld_x, void* q,
                                   int64_t ld_q, const void* bias, bool write_p, void* y, int64_t ld_y, int64_t B,
                                   int64_t N, cudaStream_t stream) {
  if (B <= 0 || N <= 0) return cudaSuccess;
  if (N > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    const T* x0p = static_cast<const T*>(x0);
    const T* xp = static_cast<const T*>(x);
    T* qp = static_cast<T*>(q);
    const T* bp = static_cast<const T*>(bias);
    T* yp = static_cast<T*>(y);
    const bool vec = vec_ok<T>(N, {ld_x0, ld_x, ld_q, ld_y}, {x0, x, q, bias, y});
    if (vec) {
      constexpr int V = Cols<T, true>::V;
      const Plan pl = plan(B, N / V, InFlight<T, true>::U, kMaxRowBlocks);
      if (!pl.ok) return cudaErrorInvalidConfiguration;
      fwd_epilogue_kernel<T, true><<<pl.grid, pl.block, 0, stream>>>(x0p, ld_x0, xp, ld_x, qp, ld_q, bp, write_p, yp,
                                                                     ld_y, B, static_cast<int>(N / V));
    } else {
      const Plan pl = plan(B, N, InFlight<T, false>::U, kMaxRowBlocks);
      if (!pl.ok) return cudaErrorInvalidConfiguration;
      fwd_epilogue_kernel<T, false><<<pl.grid, pl.block, 0, stream>>>(x0p, ld_x0, xp, ld_x, qp, ld_q, bp, write_p, yp,
                                                                      ld_y, B, static_cast<int>(N));
    }
    return cudaGetLastError();
  });
}

cudaError_t cross_backward_prologue(DType dtype, const void* g, int64_t ld_g, const void* x0, int64_t ld_x0,
                                    const void* p, int64_t ld_p, void* dp, int64_t ld_dp, void* dx0, int64_t ld_dx0,
                                    Dx0Mode mode, void* gcopy, int64_t ld_gcopy, float* partial, void* db, int64_t B,
                                    int64_t N, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (N > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    int R = 0;  // partial rows written
    if (B > 0) {
      // the fp32 dx0 of the accumulating modes is read and written as float4 on the vector path
      const bool vec = vec_ok<T>(N, {ld_g, ld_x0, ld_p, ld_dp, ld_dx0, gcopy ? ld_gcopy : 0}, {g, x0, p, dp, dx0, gcopy});
      const T* gp = static_cast<const T*>(g);
      const T* x0p = static_cast<const T*>(x0);
      const T* pp = static_cast<const T*>(p);
      T* dpp = static_cast<T*>(dp);
      T* gcp = static_cast<T*>(gcopy);
      auto launch = [&](auto vec_tag) -> cudaError_t {
        constexpr bool kVec = decltype(vec_tag)::value;
        constexpr int V = Cols<T, kVec>::V;
        const Plan pl = plan(B, N / V, InFlight<T, kVec>::U, kCrossPartialRows);
        if (!pl.ok) return cudaErrorInvalidConfiguration;
        R = static_cast<int>(pl.grid.x);
        const int cv = static_cast<int>(N / V);
        switch (mode) {
          case Dx0Mode::kStore:
            bwd_prologue_kernel<T, kVec, 0><<<pl.grid, pl.block, 0, stream>>>(
                gp, ld_g, x0p, ld_x0, pp, ld_p, dpp, ld_dp, dx0, ld_dx0, gcp, ld_gcopy, partial, B, static_cast<int>(N), cv);
            break;
          case Dx0Mode::kInit:
            bwd_prologue_kernel<T, kVec, 1><<<pl.grid, pl.block, 0, stream>>>(
                gp, ld_g, x0p, ld_x0, pp, ld_p, dpp, ld_dp, dx0, ld_dx0, gcp, ld_gcopy, partial, B, static_cast<int>(N), cv);
            break;
          case Dx0Mode::kAdd:
            bwd_prologue_kernel<T, kVec, 2><<<pl.grid, pl.block, 0, stream>>>(
                gp, ld_g, x0p, ld_x0, pp, ld_p, dpp, ld_dp, dx0, ld_dx0, gcp, ld_gcopy, partial, B, static_cast<int>(N), cv);
            break;
          default: return cudaErrorInvalidValue;
        }
        return cudaGetLastError();
      };
      const cudaError_t err = vec ? launch(std::true_type{}) : launch(std::false_type{});
      if (err != cudaSuccess) return err;
    }
    // R == 0 (no rows): db = 0
    colsum_kernel<T><<<static_cast<unsigned>(cdiv(N, kThreads)), kThreads, 0, stream>>>(partial, R, static_cast<int>(N),
                                                                                        static_cast<T*>(db));
    return cudaGetLastError();
  });
}

cudaError_t cross_finish_dx0(DType dtype, const float* acc, const void* G, int64_t ld_G, void* dx0, int64_t B,
                             int64_t N, cudaStream_t stream) {
  if (B <= 0 || N <= 0) return cudaSuccess;
  if (N > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    const T* Gp = static_cast<const T*>(G);
    T* dp = static_cast<T*>(dx0);
    if (vec_ok<T>(N, {ld_G}, {acc, G, dx0})) {
      constexpr int V = Cols<T, true>::V;
      const Plan pl = plan(B, N / V, InFlight<T, true>::U, kMaxRowBlocks);
      if (!pl.ok) return cudaErrorInvalidConfiguration;
      finish_kernel<T, true><<<pl.grid, pl.block, 0, stream>>>(acc, Gp, ld_G, dp, B, static_cast<int>(N),
                                                               static_cast<int>(N / V));
    } else {
      const Plan pl = plan(B, N, InFlight<T, false>::U, kMaxRowBlocks);
      if (!pl.ok) return cudaErrorInvalidConfiguration;
      finish_kernel<T, false><<<pl.grid, pl.block, 0, stream>>>(acc, Gp, ld_G, dp, B, static_cast<int>(N),
                                                                static_cast<int>(N));
    }
    return cudaGetLastError();
  });
}

}  // namespace rankops::cuda

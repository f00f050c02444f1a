// CUDA kernels of the interaction family: FM and DLRM dot interaction, forward and backward.
//
// FM is a pure stream (read x once, write little or the same again), so its kernels are about
// 16-byte accesses and loads in flight. Dot is a per-sample Gram matrix: x is staged in shared
// memory per block of samples; fp16/bf16 go through the tensor cores (mma.sync, fp32 accumulators),
// fp32 through register-tiled FMAs. Every kernel accumulates in fp32 and rounds once on store.
// Any D works in every layout (odd D is staged with scalar copies and zero padding); only samples
// too large for shared memory (and, for the FM backward, D * elem % 16 != 0 or unaligned tensors)
// take the simple, correct fallbacks.
#include "cuda/interaction.h"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"
#include "cuda/mma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace rankops::cuda {
namespace {

constexpr int kThreads = 256;         // FM kernels and the SIMT dot kernels
constexpr int kWarpsMma = 4;          // tensor-core dot kernels: 4 warps, 128 threads
constexpr int kTileBytes = 40 << 10;  // shared memory aimed at per block: 5 blocks fit an SM
constexpr int kStageLd = 20;          // accumulator staging row stride (floats): fewer bank conflicts than 16
constexpr int kStageFloats = 16 * kStageLd;


// ------------------------------------------------------------------------------------------------
// Shared-memory copies

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Elements by which a shared buffer must start past a 16-byte boundary to be congruent with g
// modulo 16: then both sides of a copy of an unaligned run ([B,P] rows) share their 16-byte
// boundaries and the body moves as vectors.
template <typename T>
__host__ __device__ __forceinline__ int align_shift(const T* g) {
  return static_cast<int>((reinterpret_cast<uintptr_t>(g) & 15u) / sizeof(T));
}

// n elements global -> shared; s congruent with g modulo 16 (see align_shift). Completes with
// cp_async_wait_all + __syncthreads.
template <typename T>
__device__ __forceinline__ void copy_g2s(T* s, const T* g, int n) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const int head = min(n, static_cast<int>(((16u - (reinterpret_cast<uintptr_t>(g) & 15u)) & 15u) / sizeof(T)));
  const int nv = (n - head) / V;
  for (int i = threadIdx.x; i < head; i += blockDim.x) s[i] = g[i];
  for (int i = threadIdx.x; i < nv; i += blockDim.x) cp_async16(s + head + i * V, g + head + i * V);
  for (int i = head + nv * V + threadIdx.x; i < n; i += blockDim.x) s[i] = g[i];
}

// n elements shared -> global; s congruent with g modulo 16. Coalesced 16-byte stores.
template <typename T>
__device__ __forceinline__ void copy_s2g(T* g, const T* s, int n) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const int head = min(n, static_cast<int>(((16u - (reinterpret_cast<uintptr_t>(g) & 15u)) & 15u) / sizeof(T)));
  const int nv = (n - head) / V;
  for (int i = threadIdx.x; i < head; i += blockDim.x) g[i] = s[i];
  const uint4* sv = reinterpret_cast<const uint4*>(s + head);
  uint4* gv = reinterpret_cast<uint4*>(g + head);
  for (int i = threadIdx.x; i < nv; i += blockDim.x) gv[i] = sv[i];
  for (int i = head + nv * V + threadIdx.x; i < n; i += blockDim.x) g[i] = s[i];
}

// ------------------------------------------------------------------------------------------------
// Tensor-core tiles (sm_80+): the primitives and their register layouts are in cuda/mma.cuh.

// acc[nb] is the 16 x 8 output block of columns nb*8..nb*8+7 -> the warp's 16 x kStageLd fp32 tile.
__device__ __forceinline__ void store_stage(float* stage, const float (&acc)[2][4], int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nb = 0; nb < 2; ++nb) {
    *reinterpret_cast<float2*>(stage + g * kStageLd + nb * 8 + 2 * t) = make_float2(acc[nb][0], acc[nb][1]);
    *reinterpret_cast<float2*>(stage + (g + 8) * kStageLd + nb * 8 + 2 * t) = make_float2(acc[nb][2], acc[nb][3]);
  }
}

// Start of row i of the row-major lower triangle (with or without the diagonal).
__host__ __device__ __forceinline__ int64_t tri_start(int64_t i, bool self) {
  return self ? i * (i + 1) / 2 : i * (i - 1) / 2;
}

// Row-major lower-triangle index t (diagonal included) -> (row, col). Rows are few here.
__device__ __forceinline__ void tri_decode(int t, int& row, int& col) {
  int r = 0;
  while (t > r) {
    t -= r + 1;
    ++r;
  }
  row = r;
  col = t;
}

// Sym[i][j] of the dot backward: G + G^T with G the grad triangle; the diagonal (self only) is
// diag * grad, diag = 2 for the exact G + G^T.
template <typename T>
__device__ __forceinline__ float sym_entry(const T* g, int i, int j, bool self, float diag) {
  if (i > j) return to_f(g[tri_start(i, self) + j]);
  if (j > i) return to_f(g[tri_start(j, self) + i]);
  return self ? diag * to_f(g[tri_start(i, self) + i]) : 0.f;
}

// ------------------------------------------------------------------------------------------------
// FM forward. One group of G threads (a power of two <= 32, dividing the warp) per sample; thread t
// of the group owns the column blocks t, t+G, ... of N elements each, so the field sums stay in its
// registers and a row read is one coalesced run of the group. The F loop issues U loads before it
// uses any.

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) fm_fwd_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t B,
                                                            int F, int D, int lg, bool reduce) {
  using C = Cols<T, kVec>;
  constexpr int N = C::V;
  constexpr int U = kVec ? 4 : 8;
  const int ncol = D / N;
  const int G = 1 << lg;  // a shift, not a 64-bit division (which would be a call)
  const int t = threadIdx.x & (G - 1);
  const int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> lg;
  const bool valid = b < B;
  const T* xb = x + (valid ? b : 0) * F * D;
  float total = 0.f;
  for (int c0 = 0; c0 < ncol; c0 += G) {  // the same trip count for the whole group
    const int c = c0 + t;
    float s[N], q[N];
#pragma unroll
    for (int v = 0; v < N; ++v) s[v] = q[v] = 0.f;
    if (valid && c < ncol) {
      const T* col = xb + c * N;
      int f = 0;
      for (; f + U <= F; f += U) {
        typename C::Raw r[U];
#pragma unroll
        for (int u = 0; u < U; ++u) r[u] = C::load(col + static_cast<int64_t>(f + u) * D);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          float e[N];
          C::to_float(r[u], e);
#pragma unroll
          for (int v = 0; v < N; ++v) {
            s[v] += e[v];
            q[v] = fmaf(e[v], e[v], q[v]);
          }
        }
      }
      for (; f < F; ++f) {
        float e[N];
        C::to_float(C::load(col + static_cast<int64_t>(f) * D), e);
#pragma unroll
        for (int v = 0; v < N; ++v) {
          s[v] += e[v];
          q[v] = fmaf(e[v], e[v], q[v]);
        }
      }
      if (!reduce) {
        float o[N];
#pragma unroll
        for (int v = 0; v < N; ++v) o[v] = 0.5f * (s[v] * s[v] - q[v]);
        C::store(out + b * D + c * N, C::from_float(o));
      }
    }
#pragma unroll
    for (int v = 0; v < N; ++v) total += s[v] * s[v] - q[v];
  }
  if (reduce) {
    for (int o = G >> 1; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
    if (valid && t == 0) out[b] = from_f<T>(0.5f * total);
  }
}

// ------------------------------------------------------------------------------------------------
// FM backward, tiled: a block takes S consecutive samples (one contiguous run of x), pulls them into
// shared memory with cp.async (all loads in flight at once), then each thread owns one (sample,
// 16-byte column) pair: sums it over F, overwrites it in place with g * (s - x), and the block
// streams the run back out with coalesced 16-byte stores. Reading x through shared memory keeps
// the second read (s is needed before any output) off DRAM: re-reading from global would miss L2
// at full occupancy (the in-flight working set is ~100+ MB).

template <typename T>
__global__ void __launch_bounds__(kThreads) fm_bwd_tile_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                                                 T* __restrict__ gx, int64_t B, int F, int D, int S,
                                                                 bool reduce) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint4* xs = reinterpret_cast<uint4*>(smem_raw);
  constexpr int N = 16 / static_cast<int>(sizeof(T));
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * S;
  const int ns = static_cast<int>(min(static_cast<int64_t>(S), B - b0));
  const int ncol = D / N;
  const int nvec = ns * F * ncol;
  const uint4* src = reinterpret_cast<const uint4*>(x + b0 * F * D);
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) cp_async16(xs + i, src + i);
  cp_async_wait_all();
  __syncthreads();

  for (int it = threadIdx.x; it < ns * ncol; it += blockDim.x) {
    const int bl = it / ncol, c = it - bl * ncol;
    uint4* col = xs + bl * F * ncol + c;
    float s[N], g[N];
#pragma unroll
    for (int v = 0; v < N; ++v) s[v] = 0.f;
    for (int f = 0; f < F; ++f) {
      float e[N];
      unpack16<T>(col[f * ncol], e);
#pragma unroll
      for (int v = 0; v < N; ++v) s[v] += e[v];
    }
    if (reduce) {
      const float gb = to_f(grad[b0 + bl]);
#pragma unroll
      for (int v = 0; v < N; ++v) g[v] = gb;
    } else {  // grad rows are small next to x: scalar loads, no alignment demand on grad
      const T* gr = grad + (b0 + bl) * D + c * N;
#pragma unroll
      for (int v = 0; v < N; ++v) g[v] = to_f(gr[v]);
    }
    for (int f = 0; f < F; ++f) {
      float e[N];
      unpack16<T>(col[f * ncol], e);
#pragma unroll
      for (int v = 0; v < N; ++v) e[v] = g[v] * (s[v] - e[v]);
      col[f * ncol] = pack16<T>(e);
    }
  }
  __syncthreads();
  uint4* dst = reinterpret_cast<uint4*>(gx + b0 * F * D);
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) dst[i] = xs[i];
}

// FM backward fallback (D not a multiple of 16 bytes, unaligned x, or a sample too large for
// shared memory): the forward's thread mapping, with a second pass over x for the outputs.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) fm_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                                            T* __restrict__ gx, int64_t B, int F, int D, int lg,
                                                            bool reduce) {
  using C = Cols<T, kVec>;
  constexpr int N = C::V;
  constexpr int U = kVec ? 4 : 8;
  const int ncol = D / N;
  const int G = 1 << lg;  // a shift, not a 64-bit division (which would be a call)
  const int t = threadIdx.x & (G - 1);
  const int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> lg;
  if (b >= B) return;  // no shuffles here
  const T* xb = x + b * F * D;
  T* gb = gx + b * F * D;
  for (int c = t; c < ncol; c += G) {
    const T* col = xb + c * N;
    float s[N], g[N];
#pragma unroll
    for (int v = 0; v < N; ++v) s[v] = 0.f;
    int f = 0;
    for (; f + U <= F; f += U) {
      typename C::Raw r[U];
#pragma unroll
      for (int u = 0; u < U; ++u) r[u] = C::load(col + static_cast<int64_t>(f + u) * D);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float e[N];
        C::to_float(r[u], e);
#pragma unroll
        for (int v = 0; v < N; ++v) s[v] += e[v];
      }
    }
    for (; f < F; ++f) {
      float e[N];
      C::to_float(C::load(col + static_cast<int64_t>(f) * D), e);
#pragma unroll
      for (int v = 0; v < N; ++v) s[v] += e[v];
    }
    if (reduce) {
      const float g0 = to_f(grad[b]);
#pragma unroll
      for (int v = 0; v < N; ++v) g[v] = g0;
    } else {
#pragma unroll
      for (int v = 0; v < N; ++v) g[v] = to_f(grad[b * D + c * N + v]);
    }
    for (f = 0; f < F; ++f) {
      float e[N];
      C::to_float(C::load(col + static_cast<int64_t>(f) * D), e);
#pragma unroll
      for (int v = 0; v < N; ++v) e[v] = g[v] * (s[v] - e[v]);
      C::store(gb + static_cast<int64_t>(f) * D + c * N, C::from_float(e));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Shared-memory layouts of the dot kernels: host (sizing) and device (carving) compute the same.

// Tensor cores (fp16/bf16): per sample X padded with zeros to Fp x Dp (multiples of 16), rows
// ldx = Dp + 8 apart: ldx * 2 bytes is an odd multiple of 16, so the 8 rows of an ldmatrix phase
// fall on distinct bank groups, and every row start stays 16-byte aligned as ldmatrix needs. The backward
// adds Sym (Fp x Fp, rows lds = Fp + 8 apart). Then a 16 x kStageLd fp32 staging tile per warp, then
// the [S,P] run of the output (forward) or of grad (backward), with 8 spare elements for align_shift.
struct MmaLayout {
  int Fp, Dp, ldx, lds, P;
  int x_off, sym_off, stage_off, tri_off, bytes;
  __host__ __device__ MmaLayout(int F, int D, int S, bool self, bool backward) {
    Fp = (F + 15) / 16 * 16;
    Dp = (D + 15) / 16 * 16;
    ldx = Dp + 8;
    lds = Fp + 8;
    P = static_cast<int>(tri_start(F, self));
    x_off = 0;
    sym_off = x_off + S * Fp * ldx * 2;
    stage_off = sym_off + (backward ? S * Fp * lds * 2 : 0);
    tri_off = stage_off + kWarpsMma * kStageFloats * 4;
    bytes = tri_off + (S * P + 8) * 2;
  }
  static __host__ __device__ int per_sample(int F, int D, bool self, bool backward) {
    const int Fp = (F + 15) / 16 * 16, Dp = (D + 15) / 16 * 16;
    return Fp * (Dp + 8) * 2 + (backward ? Fp * (Fp + 8) * 2 : 0) + static_cast<int>(tri_start(F, self)) * 2;
  }
};

// SIMT (fp32): X padded with zeros to F4 x D4 (multiples of 4) so 4x4 register tiles read float4s;
// rows ldx = D4 + 4 apart in the forward (skews the rows a warp reads), D4 in the backward (its
// lanes read consecutive float4s of one row). The backward adds Sym (F4 x F4). Then the [S,P] run
// of the output or of grad, 4 spare floats for align_shift.
struct SimtLayout {
  int F4, D4, ldx, P;
  int x_off, sym_off, tri_off, bytes;
  __host__ __device__ SimtLayout(int F, int D, int S, bool self, bool backward) {
    F4 = (F + 3) / 4 * 4;
    D4 = (D + 3) / 4 * 4;
    ldx = backward ? D4 : D4 + 4;
    P = static_cast<int>(tri_start(F, self));
    x_off = 0;
    sym_off = x_off + S * F4 * ldx * 4;
    tri_off = sym_off + (backward ? S * F4 * F4 * 4 : 0);
    bytes = tri_off + (S * P + 4) * 4;
  }
  static __host__ __device__ int per_sample(int F, int D, bool self, bool backward) {
    const int F4 = (F + 3) / 4 * 4, D4 = (D + 3) / 4 * 4;
    return F4 * (backward ? D4 : D4 + 4) * 4 + (backward ? F4 * F4 * 4 : 0) + static_cast<int>(tri_start(F, self)) * 4;
  }
};

// X of samples [b0, b0+ns) -> shared rows of ldx elements, samples Fpad rows apart; zero-fills the
// columns [D, Dpad) of real rows and the rows [F, Fpad) of each sample (the Gram and the products
// sum over them). kVecOk: D * sizeof(T) % 16 == 0 and x 16-byte aligned (every row is then).
template <typename T>
__device__ __forceinline__ void stage_x(T* xs, const T* __restrict__ xg, int ns, int F, int D, int Fpad, int Dpad,
                                        int ldx, bool vec_ok) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  if (vec_ok) {
    const int nc = D / V;
    const int n = ns * F * nc;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int row = i / nc, c = i - row * nc;
      const int bl = row / F, f = row - bl * F;
      cp_async16(xs + (bl * Fpad + f) * ldx + c * V, xg + static_cast<int64_t>(row) * D + c * V);
    }
  } else {
    const int n = ns * F * D;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int row = i / D, d = i - row * D;
      const int bl = row / F, f = row - bl * F;
      xs[(bl * Fpad + f) * ldx + d] = xg[i];
    }
  }
  const T zero = from_f<T>(0.f);
  if (Dpad > D) {
    const int w = Dpad - D;
    const int n = ns * F * w;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int row = i / w, d = D + (i - row * w);
      const int bl = row / F, f = row - bl * F;
      xs[(bl * Fpad + f) * ldx + d] = zero;
    }
  }
  if (Fpad > F) {
    const int rows = Fpad - F;
    const int n = ns * rows * Dpad;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int r = i / Dpad, d = i - r * Dpad;
      const int bl = r / rows, f = F + (r - bl * rows);
      xs[(bl * Fpad + f) * ldx + d] = zero;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Dot forward, fp16/bf16 on the tensor cores. A block takes S samples; its warps share out the
// lower-triangle 16x16 tiles (ti >= tj) of every sample's Gram X X^T: A is X's row tile ti
// (row-major), B is X's row tile tj read as a column-major K x N matrix, i.e. X^T. Each tile goes
// through the warp's fp32 staging tile; the warp keeps the triangle's elements at their p index in
// the block's [S,P] output run, which leaves as one coalesced copy.

template <typename T>
__global__ void __launch_bounds__(kWarpsMma * 32) dot_fwd_mma_kernel(const T* __restrict__ x, T* __restrict__ out,
                                                                      int64_t B, int F, int D, int S, bool self,
                                                                      bool vec_ok) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const MmaLayout L(F, D, S, self, false);
  T* xs = reinterpret_cast<T*>(smem_raw + L.x_off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* stage = reinterpret_cast<float*>(smem_raw + L.stage_off) + warp * kStageFloats;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * S;
  const int ns = static_cast<int>(min(static_cast<int64_t>(S), B - b0));
  T* og = out + b0 * L.P;
  T* os = reinterpret_cast<T*>(smem_raw + L.tri_off) + align_shift(og);

  stage_x(xs, x + b0 * F * D, ns, F, D, L.Fp, L.Dp, L.ldx, vec_ok);
  cp_async_wait_all();
  __syncthreads();

  const int nt = L.Fp / 16;
  const int tiles = nt * (nt + 1) / 2;
  for (int item = warp; item < ns * tiles; item += kWarpsMma) {
    const int bl = item / tiles;
    int ti, tj;
    tri_decode(item - bl * tiles, ti, tj);
    // A: X rows ti*16.. (ldmatrix matrices: rows +0/+8 by m&1, k +0/+8 by m>>1). B = X^T: its k x n
    // block (n = X row) is X rows tj*16.. read untransposed (n +0/+8 by m>>1, k +0/+8 by m&1), so
    // b[0], b[1] feed output columns 0-7 and b[2], b[3] columns 8-15.
    const int m = lane >> 3, rr = lane & 7;
    const T* pa = xs + (bl * L.Fp + ti * 16 + rr + (m & 1) * 8) * L.ldx + (m >> 1) * 8;
    const T* pb = xs + (bl * L.Fp + tj * 16 + rr + (m >> 1) * 8) * L.ldx + (m & 1) * 8;
    float acc[2][4] = {};
    for (int k = 0; k < L.Dp; k += 16) {
      unsigned a[4], b[4];
      ldsm_x4(a, pa + k);
      ldsm_x4(b, pb + k);
      mma16816<T>(acc[0], a, b[0], b[1]);
      mma16816<T>(acc[1], a, b[2], b[3]);
    }
    store_stage(stage, acc, lane);
    __syncwarp();
    T* ob = os + bl * L.P;
    for (int e = lane; e < 256; e += 32) {
      const int r = e >> 4, c = e & 15;
      const int i = ti * 16 + r, j = tj * 16 + c;
      if (i < F && (j < i || (self && j == i))) ob[tri_start(i, self) + j] = from_f<T>(stage[r * kStageLd + c]);
    }
    __syncwarp();  // the staging tile is rewritten by the next item
  }
  __syncthreads();
  copy_s2g(og, os, ns * L.P);
#else
  __trap();
#endif
}

// Dot backward, fp16/bf16 on the tensor cores: gx[b] = Sym @ X with Sym = G + G^T built in shared
// memory in the input dtype, exact since each entry is one grad value. With self the diagonal holds
// g_ii once and the epilogue adds the second g_ii * x_i in fp32: 2 * g_ii could overflow fp16
// where the fp32 reference does not. Warps share out the (row tile ti, column tile tn) output
// tiles; k runs over Fp. Output tiles go from the staging tile straight to global: each tile row is
// a 32-byte run.

template <typename T>
__global__ void __launch_bounds__(kWarpsMma * 32) dot_bwd_mma_kernel(const T* __restrict__ grad,
                                                                      const T* __restrict__ x, T* __restrict__ gx,
                                                                      int64_t B, int F, int D, int S, bool self,
                                                                      bool vec_ok) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const MmaLayout L(F, D, S, self, true);
  T* xs = reinterpret_cast<T*>(smem_raw + L.x_off);
  T* sym = reinterpret_cast<T*>(smem_raw + L.sym_off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* stage = reinterpret_cast<float*>(smem_raw + L.stage_off) + warp * kStageFloats;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * S;
  const int ns = static_cast<int>(min(static_cast<int64_t>(S), B - b0));
  const T* gg = grad + b0 * L.P;
  T* gs = reinterpret_cast<T*>(smem_raw + L.tri_off) + align_shift(gg);

  stage_x(xs, x + b0 * F * D, ns, F, D, L.Fp, L.Dp, L.ldx, vec_ok);
  copy_g2s(gs, gg, ns * L.P);
  cp_async_wait_all();
  __syncthreads();

  const int FF = L.Fp * L.Fp;
  for (int idx = threadIdx.x; idx < ns * FF; idx += blockDim.x) {
    const int bl = idx / FF, rem = idx - bl * FF;
    const int i = rem / L.Fp, j = rem - i * L.Fp;
    const float v = (i < F && j < F) ? sym_entry(gs + bl * L.P, i, j, self, 1.f) : 0.f;
    sym[(bl * L.Fp + i) * L.lds + j] = from_f<T>(v);
  }
  __syncthreads();

  const int nt = L.Fp / 16, ntn = L.Dp / 16;
  const int tiles = nt * ntn;
  for (int item = warp; item < ns * tiles; item += kWarpsMma) {
    const int bl = item / tiles, rem = item - bl * tiles;
    const int ti = rem / ntn, tn = rem - ti * ntn;
    // A: Sym rows ti*16.. as in the forward. B: X rows k.. (k x n, row-major) by ldmatrix.trans:
    // matrices k +0/+8 by m&1, n +0/+8 by m>>1.
    const int m = lane >> 3, rr = lane & 7;
    const T* pa = sym + (bl * L.Fp + ti * 16 + rr + (m & 1) * 8) * L.lds + (m >> 1) * 8;
    const T* pb = xs + (bl * L.Fp + rr + (m & 1) * 8) * L.ldx + tn * 16 + (m >> 1) * 8;
    float acc[2][4] = {};
    for (int k = 0; k < L.Fp; k += 16) {
      unsigned a[4], b[4];
      ldsm_x4(a, pa + k);
      ldsm_x4_trans(b, pb + k * L.ldx);
      mma16816<T>(acc[0], a, b[0], b[1]);
      mma16816<T>(acc[1], a, b[2], b[3]);
    }
    store_stage(stage, acc, lane);
    __syncwarp();
    T* ob = gx + (b0 + bl) * F * D;
    const T* gsb = gs + bl * L.P;
    if (vec_ok) {  // lane -> (row lane/2, 8 columns): one 16-byte store each
      const int r = lane >> 1, c = (lane & 1) * 8;
      const int i = ti * 16 + r, d = tn * 16 + c;
      if (i < F && d < D) {
        float v[8];
        const float4 lo = *reinterpret_cast<const float4*>(stage + r * kStageLd + c);
        const float4 hi = *reinterpret_cast<const float4*>(stage + r * kStageLd + c + 4);
        v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
        if (self) {
          const float gii = to_f(gsb[tri_start(i, true) + i]);
          float xi[8];
          unpack16<T>(*reinterpret_cast<const uint4*>(xs + (bl * L.Fp + i) * L.ldx + d), xi);
#pragma unroll
          for (int k = 0; k < 8; ++k) v[k] = fmaf(gii, xi[k], v[k]);
        }
        *reinterpret_cast<uint4*>(ob + i * D + d) = pack16<T>(v);
      }
    } else {
      for (int e = lane; e < 256; e += 32) {
        const int r = e >> 4, c = e & 15;
        const int i = ti * 16 + r, d = tn * 16 + c;
        if (i < F && d < D) {
          float v = stage[r * kStageLd + c];
          if (self) v = fmaf(to_f(gsb[tri_start(i, true) + i]), to_f(xs[(bl * L.Fp + i) * L.ldx + d]), v);
          ob[i * D + d] = from_f<T>(v);
        }
      }
    }
    __syncwarp();
  }
#else
  __trap();
#endif
}

// ------------------------------------------------------------------------------------------------
// Dot forward, fp32 (SIMT). Work items are (sample, 4x4 block pair ib >= jb, k part): a thread
// accumulates its 4x4 block of the Gram over the float4 column chunks kp, kp+KS, ... (8 LDS.128 for
// 64 FMAs), then the KS lanes of a pair (adjacent, so they read adjacent float4s of the same rows)
// add up with shuffles. KS (a power of two <= 8) splits D when a block has few pairs.

__global__ void __launch_bounds__(kThreads) dot_fwd_simt_kernel(const float* __restrict__ x, float* __restrict__ out,
                                                                  int64_t B, int F, int D, int S, int KS, bool self,
                                                                  bool vec_ok) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const SimtLayout L(F, D, S, self, false);
  float* xs = reinterpret_cast<float*>(smem_raw + L.x_off);
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * S;
  const int ns = static_cast<int>(min(static_cast<int64_t>(S), B - b0));
  float* og = out + b0 * L.P;
  float* os = reinterpret_cast<float*>(smem_raw + L.tri_off) + align_shift(og);

  stage_x(xs, x + b0 * F * D, ns, F, D, L.F4, L.D4, L.ldx, vec_ok);
  cp_async_wait_all();
  __syncthreads();

  const int nb = L.F4 / 4, pairs = nb * (nb + 1) / 2, nk = L.D4 / 4;
  const int total = ns * pairs * KS;
  const int kp = threadIdx.x & (KS - 1);  // blockDim and every base are multiples of 32
  for (int base = 0; base < total; base += blockDim.x) {  // uniform trip count: shuffles below
    const int it = base + threadIdx.x;
    const bool valid = it < total;
    int bl = 0, ib = 0, jb = 0;
    if (valid) {
      const int q = it / KS;
      bl = q / pairs;
      tri_decode(q - bl * pairs, ib, jb);
    }
    float acc[16];
#pragma unroll
    for (int v = 0; v < 16; ++v) acc[v] = 0.f;
    if (valid) {
      const float* xa = xs + (bl * L.F4 + ib * 4) * L.ldx;
      const float* xb = xs + (bl * L.F4 + jb * 4) * L.ldx;
      for (int kc = kp; kc < nk; kc += KS) {
        float4 a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          a[r] = *reinterpret_cast<const float4*>(xa + r * L.ldx + kc * 4);
          b[r] = *reinterpret_cast<const float4*>(xb + r * L.ldx + kc * 4);
        }
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            float s = acc[r * 4 + c];
            s = fmaf(a[r].x, b[c].x, s);
            s = fmaf(a[r].y, b[c].y, s);
            s = fmaf(a[r].z, b[c].z, s);
            s = fmaf(a[r].w, b[c].w, s);
            acc[r * 4 + c] = s;
          }
      }
    }
    for (int o = 1; o < KS; o <<= 1)
#pragma unroll
      for (int v = 0; v < 16; ++v) acc[v] += __shfl_xor_sync(0xffffffffu, acc[v], o);
    if (valid) {
      float* ob = os + bl * L.P;
#pragma unroll
      for (int v = 0; v < 16; ++v) {
        const int i = ib * 4 + v / 4, j = jb * 4 + v % 4;
        if ((v & (KS - 1)) == kp && i < F && (j < i || (self && j == i))) ob[tri_start(i, self) + j] = acc[v];
      }
    }
  }
  __syncthreads();
  copy_s2g(og, os, ns * L.P);
}

// Dot backward, fp32 (SIMT): gx[b] = Sym @ X. A thread owns 4 rows x one float4 of columns; per
// partner row j it reads X[j][4 columns] and Sym[j][its 4 rows] (Sym is symmetric, so that is a
// float4 too) for 16 FMAs. Consecutive threads take consecutive column chunks: conflict-free X
// reads, broadcast Sym reads, coalesced stores.

__global__ void __launch_bounds__(kThreads) dot_bwd_simt_kernel(const float* __restrict__ grad,
                                                                  const float* __restrict__ x, float* __restrict__ gx,
                                                                  int64_t B, int F, int D, int S, bool self,
                                                                  bool vec_ok) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const SimtLayout L(F, D, S, self, true);
  float* xs = reinterpret_cast<float*>(smem_raw + L.x_off);
  float* sym = reinterpret_cast<float*>(smem_raw + L.sym_off);
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * S;
  const int ns = static_cast<int>(min(static_cast<int64_t>(S), B - b0));
  const float* gg = grad + b0 * L.P;
  float* gs = reinterpret_cast<float*>(smem_raw + L.tri_off) + align_shift(gg);

  stage_x(xs, x + b0 * F * D, ns, F, D, L.F4, L.D4, L.ldx, vec_ok);
  copy_g2s(gs, gg, ns * L.P);
  cp_async_wait_all();
  __syncthreads();

  const int FF = L.F4 * L.F4;
  for (int idx = threadIdx.x; idx < ns * FF; idx += blockDim.x) {
    const int bl = idx / FF, rem = idx - bl * FF;
    const int i = rem / L.F4, j = rem - i * L.F4;
    sym[idx] = (i < F && j < F) ? sym_entry(gs + bl * L.P, i, j, self, 2.f) : 0.f;
  }
  __syncthreads();

  const int nb = L.F4 / 4, nk = L.D4 / 4;
  for (int it = threadIdx.x; it < ns * nb * nk; it += blockDim.x) {
    const int q = it / nk, kc = it - q * nk;
    const int bl = q / nb, ib = q - bl * nb;
    const float* xr = xs + bl * L.F4 * L.ldx + kc * 4;
    const float* sr = sym + bl * FF + ib * 4;
    float4 acc[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[r] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = 0; j < F; ++j) {
      const float4 xv = *reinterpret_cast<const float4*>(xr + j * L.ldx);
      const float4 sv = *reinterpret_cast<const float4*>(sr + j * L.F4);
      const float s4[4] = {sv.x, sv.y, sv.z, sv.w};
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        acc[r].x = fmaf(s4[r], xv.x, acc[r].x);
        acc[r].y = fmaf(s4[r], xv.y, acc[r].y);
        acc[r].z = fmaf(s4[r], xv.z, acc[r].z);
        acc[r].w = fmaf(s4[r], xv.w, acc[r].w);
      }
    }
    float* ob = gx + (b0 + bl) * F * D;
    const int d0 = kc * 4;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = ib * 4 + r;
      if (i >= F) break;
      float* row = ob + static_cast<int64_t>(i) * D + d0;
      if (vec_ok) {
        *reinterpret_cast<float4*>(row) = acc[r];
      } else {
        const float v4[4] = {acc[r].x, acc[r].y, acc[r].z, acc[r].w};
#pragma unroll
        for (int v = 0; v < 4; ++v)
          if (d0 + v < D) row[v] = v4[v];
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Dot fallbacks for samples too large for shared memory (any dtype; correct, not fast). Samples
// stride over grid y, a sample's rows i over the warps of grid x; lanes run over D and the rows are
// read from global (L1/L2 hold them). No 64-bit divisions: those compile to calls.

template <typename T>
__global__ void __launch_bounds__(kThreads) dot_fwd_warp_kernel(const T* __restrict__ x, T* __restrict__ out,
                                                                  int64_t B, int64_t F, int64_t D, int64_t P, bool self) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t w0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const T* xb = x + b * F * D;
    for (int64_t i = w0; i < F; i += nwarps) {
      const T* xi = xb + i * D;
      T* oi = out + b * P + tri_start(i, self);
      const int64_t n = self ? i + 1 : i;
      for (int64_t j = 0; j < n; ++j) {
        const T* xj = xb + j * D;
        float acc = 0.f;
        for (int64_t d = lane; d < D; d += 32) acc = fmaf(to_f(xi[d]), to_f(xj[d]), acc);
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) oi[j] = from_f<T>(acc);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dot_bwd_warp_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                                                  T* __restrict__ gx, int64_t B, int64_t F, int64_t D,
                                                                  int64_t P, bool self) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t w0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const T* xb = x + b * F * D;
    const T* gb = grad + b * P;
    for (int64_t i = w0; i < F; i += nwarps) {
      // Row i of Sym: grad's row i left of the diagonal, the diagonal, then column i of the rows below.
      const T* gi = gb + tri_start(i, self);
      for (int64_t d = lane; d < D; d += 32) {
        const T* xd = xb + d;
        float acc = 0.f;
        for (int64_t j = 0; j < i; ++j) acc = fmaf(to_f(gi[j]), to_f(xd[j * D]), acc);
        if (self) acc = fmaf(2.f * to_f(gi[i]), to_f(xd[i * D]), acc);
        int64_t t = tri_start(i + 1, self) + i;  // grad index of (j, i), j = i + 1
        for (int64_t j = i + 1; j < F; ++j) {
          acc = fmaf(to_f(gb[t]), to_f(xd[j * D]), acc);
          t += self ? j + 1 : j;  // tri_start(j + 1) - tri_start(j)
        }
        gx[(b * F + i) * D + d] = from_f<T>(acc);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

// log2 of the threads per FM sample: the next power of two >= the column blocks, at most a warp.
int fm_group_log2(int64_t ncol) {
  int lg = 0;
  while ((int64_t{1} << lg) < ncol && lg < 5) ++lg;
  return lg;
}


cudaError_t smem_optin(int* bytes) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
}

// Samples per block: as many as fit the tile budget (at least 1), no more than B.
int samples_per_block(int per_sample, int64_t B) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(B, kTileBytes / std::max(per_sample, 1))));
}

// Launches a dynamic-shared-memory kernel, raising its limit past 48 KB when needed.
template <typename Kernel, typename... Args>
cudaError_t launch_smem(Kernel kernel, int64_t grid, int threads, int smem, cudaStream_t stream, Args... args) {
  if (smem > (48 << 10)) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(grid), threads, smem, stream>>>(args...);
  return cudaGetLastError();
}

// Grid of the dot fallbacks: x covers a sample's F rows with a warp each, y the samples (strided).
dim3 fallback_grid(int64_t B, int64_t F) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(cdiv(F, kThreads / 32), 1 << 16)),
              static_cast<unsigned>(std::min<int64_t>(B, 65535)));
}

}  // namespace

cudaError_t fm_interaction(DType dtype, const void* x, void* out, int64_t B, int64_t F, int64_t D, bool reduce,
                           cudaStream_t stream) {
  if (B <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const T* xp = static_cast<const T*>(x);
    T* op = static_cast<T*>(out);
    const bool vec = D % V == 0 && aligned16(xp) && (reduce || aligned16(op));
    const int lg = fm_group_log2(vec ? D / V : D);
    const int64_t grid = cdiv(B << lg, kThreads);
    if (vec) {
      fm_fwd_kernel<T, true><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(xp, op, B, static_cast<int>(F),
                                                                                  static_cast<int>(D), lg, reduce);
    } else {
      fm_fwd_kernel<T, false><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(xp, op, B, static_cast<int>(F),
                                                                                   static_cast<int>(D), lg, reduce);
    }
    return cudaGetLastError();
  });
}

cudaError_t fm_interaction_backward(DType dtype, const void* grad, const void* x, void* grad_x, int64_t B, int64_t F,
                                    int64_t D, bool reduce, cudaStream_t stream) {
  if (B <= 0 || F <= 0 || D <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const T* gp = static_cast<const T*>(grad);
    const T* xp = static_cast<const T*>(x);
    T* op = static_cast<T*>(grad_x);
    const bool vec = D % V == 0 && aligned16(xp) && aligned16(op);
    const int64_t sample_bytes = F * D * static_cast<int64_t>(sizeof(T));
    if (vec) {
      int optin = 0;
      const cudaError_t err = smem_optin(&optin);
      if (err != cudaSuccess) return err;
      if (sample_bytes <= optin) {
        const int S = samples_per_block(static_cast<int>(sample_bytes), B);
        return launch_smem(fm_bwd_tile_kernel<T>, cdiv(B, S), kThreads, static_cast<int>(S * sample_bytes), stream,
                           gp, xp, op, B, static_cast<int>(F), static_cast<int>(D), S, reduce);
      }
    }
    const int lg = fm_group_log2(vec ? D / V : D);
    const int64_t grid = cdiv(B << lg, kThreads);
    if (vec) {
      fm_bwd_kernel<T, true><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
          gp, xp, op, B, static_cast<int>(F), static_cast<int>(D), lg, reduce);
    } else {
      fm_bwd_kernel<T, false><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
          gp, xp, op, B, static_cast<int>(F), static_cast<int>(D), lg, reduce);
    }
    return cudaGetLastError();
  });
}

cudaError_t dot_interaction(DType dtype, const void* x, void* out, int64_t B, int64_t F, int64_t D,
                            bool self_interaction, cudaStream_t stream) {
  const int64_t P = tri_start(F, self_interaction);
  if (B <= 0 || P <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    if (D <= 0) return cudaMemsetAsync(out, 0, B * P * sizeof(T), stream);
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const T* xp = static_cast<const T*>(x);
    T* op = static_cast<T*>(out);
    const bool vec = D % V == 0 && aligned16(xp);
    int optin = 0;
    const cudaError_t err = smem_optin(&optin);
    if (err != cudaSuccess) return err;
    // Layout sizes are int: only consider the shared-memory kernels for sizes far below overflow.
    if (F <= 4096 && D <= 65536) {
      const int Fi = static_cast<int>(F), Di = static_cast<int>(D);
      if constexpr (std::is_same_v<T, float>) {
        const int S = samples_per_block(SimtLayout::per_sample(Fi, Di, self_interaction, false), B);
        const SimtLayout L(Fi, Di, S, self_interaction, false);
        if (L.bytes <= optin) {
          // Split D across lanes while the block's items still fit one pass of its threads: idle
          // threads otherwise, and the split's shuffles cost less than a second pass.
          const int nb = L.F4 / 4, pairs = nb * (nb + 1) / 2, nk = L.D4 / 4;
          int KS = 1;
          while (KS < 8 && KS * 2 <= nk && S * pairs * KS * 2 <= kThreads) KS <<= 1;
          return launch_smem(dot_fwd_simt_kernel, cdiv(B, S), kThreads, L.bytes, stream, xp, op, B, Fi, Di, S, KS,
                             self_interaction, vec);
        }
      } else {
        const int S = samples_per_block(MmaLayout::per_sample(Fi, Di, self_interaction, false), B);
        const MmaLayout L(Fi, Di, S, self_interaction, false);
        if (L.bytes <= optin) {
          return launch_smem(dot_fwd_mma_kernel<T>, cdiv(B, S), kWarpsMma * 32, L.bytes, stream, xp, op, B, Fi, Di, S,
                             self_interaction, vec);
        }
      }
    }
    dot_fwd_warp_kernel<T><<<fallback_grid(B, F), kThreads, 0, stream>>>(xp, op, B, F, D, P, self_interaction);
    return cudaGetLastError();
  });
}

cudaError_t dot_interaction_backward(DType dtype, const void* grad, const void* x, void* grad_x, int64_t B, int64_t F,
                                     int64_t D, bool self_interaction, cudaStream_t stream) {
  if (B <= 0 || F <= 0 || D <= 0) return cudaSuccess;
  const int64_t P = tri_start(F, self_interaction);
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    if (P <= 0) return cudaMemsetAsync(grad_x, 0, B * F * D * sizeof(T), stream);  // F == 1, no self: no pairs
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const T* gp = static_cast<const T*>(grad);
    const T* xp = static_cast<const T*>(x);
    T* op = static_cast<T*>(grad_x);
    const bool vec = D % V == 0 && aligned16(xp) && aligned16(op);
    int optin = 0;
    const cudaError_t err = smem_optin(&optin);
    if (err != cudaSuccess) return err;
    if (F <= 4096 && D <= 65536) {
      const int Fi = static_cast<int>(F), Di = static_cast<int>(D);
      if constexpr (std::is_same_v<T, float>) {
        const int S = samples_per_block(SimtLayout::per_sample(Fi, Di, self_interaction, true), B);
        const SimtLayout L(Fi, Di, S, self_interaction, true);
        if (L.bytes <= optin) {
          return launch_smem(dot_bwd_simt_kernel, cdiv(B, S), kThreads, L.bytes, stream, gp, xp, op, B, Fi, Di, S,
                             self_interaction, vec);
        }
      } else {
        const int S = samples_per_block(MmaLayout::per_sample(Fi, Di, self_interaction, true), B);
        const MmaLayout L(Fi, Di, S, self_interaction, true);
        if (L.bytes <= optin) {
          return launch_smem(dot_bwd_mma_kernel<T>, cdiv(B, S), kWarpsMma * 32, L.bytes, stream, gp, xp, op, B, Fi,
                             Di, S, self_interaction, vec);
        }
      }
    }
    dot_bwd_warp_kernel<T><<<fallback_grid(B, F), kThreads, 0, stream>>>(gp, xp, op, B, F, D, P, self_interaction);
    return cudaGetLastError();
  });
}

}  // namespace rankops::cuda

// CUDA kernels of xDeepFM's CIN layer, forward and weight gradient, without the outer product in
// global memory.
//
// Seen over the columns c = (b, d) (C = B*D of them) and the pairs k = (h, m) (K = H*M), the layer
// is one GEMM  out[n, c] = sum_k W[n, k] Z[k, c] + bias[n]  whose operand Z[k, c] = xk[b,h,d] *
// x0[b,m,d] is generated a [BK x 128] tile at a time in shared memory from xk and x0 rows read
// through L1 (a block's xk / x0 samples are a few tens of KB and are re-read once per K step), and
// consumed there: Z never exists in global memory.
//
//   cin_fwd_mma_kernel   fp16 / bf16: a block computes BN (64 or 128) maps x 128 columns with
//                        mma.sync m16n8k16 (fp32 accumulators), K steps of 32, two shared stages
//                        (W tile by cp.async, the next Z tile's loads issued before this step's MMAs).
//   cin_fwd_simt_kernel  fp32: the same tiling on FMAs (8 x 8 or 4 x 8 per thread, K steps of 16);
//                        no TF32, so fp32 stays within ~1e-6 of the fp32 reference.
//   cin_dw_*_kernel      dW[n, k] = sum_c G[n, c] Z[k, c]: 128 x 128 tiles of dW, the reduction over
//                        c split across grid.z; each split writes its fp32 partial to a workspace that
//                        the host sums (deterministic, no atomics). Z is generated as in the forward.
//
// The input gradients are CIN layers themselves and run on the forward kernel (csrc/cin.cpp):
//   dxk[b,h,d] = sum_{n,m} W[n,h,m] G[b,n,d] x0[b,m,d]   (maps h over the pairs (n, m))
//   dx0[b,m,d] = sum_{n,h} W[n,h,m] G[b,n,d] xk[b,h,d]   (maps m over the pairs (n, h))
// i.e. three GEMMs of the forward's size, none of which stores Z or dZ (the Triton kernels' plan).
//
// The weight arrives zero-padded to whole tiles (cin_forward_weight_layout), so only the column
// (b, d) and pair (k >= K) tails are guarded; Z is zero there, so padded W and garbage never meet.
// Vector (16-byte) loads of xk / x0 / grad need D a multiple of 16 bytes' worth of elements and
// 16-byte aligned tensors; any other D takes the scalar variant of the same kernel.
#include "cuda/cin.h"
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

constexpr int kThreads = 256;  // every kernel: 8 warps
constexpr int kBC = 128;       // forward: columns (b, d) per block
constexpr int kBKm = 32;       // forward, tensor cores: k per step
constexpr int kLdAm = kBKm + 8;  // W tile rows (halves): 80 B, an odd multiple of 16 -> ldmatrix conflict-free
constexpr int kLdZm = kBC + 8;   // Z tile rows (halves): 272 B, likewise
constexpr int kBKs = 16;       // forward, SIMT: k per step
constexpr int kDT = 128;       // dW: tile rows (n) and columns (k)
constexpr int kDC = 32;        // dW: columns (b, d) reduced per step
constexpr int kLdDm = kDC + 8;   // dW tensor-core tile rows (halves): 80 B
constexpr int kMaxSplits = 64;

template <typename T>
__device__ __forceinline__ uint4 ldg16(const T* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// The elementwise product of two 16-byte vectors of T, in fp32, rounded once to T.
template <typename T>
__device__ __forceinline__ uint4 mul16(const uint4& a, const uint4& b) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  float fa[V], fb[V];
  unpack16<T>(a, fa);
  unpack16<T>(b, fb);
#pragma unroll
  for (int v = 0; v < V; ++v) fa[v] *= fb[v];
  return pack16<T>(fa);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ------------------------------------------------------------------------------------------------
// Tensor-core tiles (sm_80+): mma.sync m16n8k16, fp32 accumulators, operands by ldmatrix (see
// csrc/cuda/mma.cuh for the primitives and register layouts). g = lane / 4, t = lane % 4:
//   A (16 x 16, row-major): a0 (row g, k 2t..), a1 (row g+8, k 2t..), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   B (16 x 8, k x n):      b0 (k 2t.., n g), b1 (k 2t+8.., n g)
//   C (16 x 8, fp32):       c0, c1 (row g, n 2t, 2t+1), c2, c3 (row g+8, n 2t, 2t+1)
// ldmatrix.x4 hands register m the 8x8 matrix whose row addresses lanes 8m..8m+7 gave, as
// (row g, columns 2t, 2t+1); with .trans as (rows 2t, 2t+1, column g).

// ------------------------------------------------------------------------------------------------
// Forward: per-block column tables. Column j of the block (c = c0 + j) is sample b = c / D at
// d = c % D; its element offsets in xk [B,H,D], x0 [B,M,D] and out [B,N,D] (row 0), -1 past C.

__device__ __forceinline__ void fill_columns(int64_t* colk, int64_t* col0, int64_t* colo, int64_t c0, int64_t C,
                                             int H, int M, int N, int D) {
  for (int j = threadIdx.x; j < kBC; j += blockDim.x) {
    const int64_t c = c0 + j;
    if (c < C) {
      const int64_t b = c / D, d = c - b * D;
      colk[j] = b * H * D + d;
      col0[j] = b * M * D + d;
      colo[j] = b * N * D + d;
    } else {
      colk[j] = col0[j] = colo[j] = -1;
    }
  }
}

// Z[k][j .. j+V) for one pair k (< K) and V columns starting at j, element by element (any D).
template <typename T>
__device__ __forceinline__ uint4 z_scalar(const T* __restrict__ xk, const T* __restrict__ x0, const int64_t* colk,
                                          const int64_t* col0, int j, int64_t hD, int64_t mD) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  float z[V];
#pragma unroll
  for (int e = 0; e < V; ++e) {
    const int64_t ok = colk[j + e];
    z[e] = ok >= 0 ? to_f(xk[ok + hD]) * to_f(x0[col0[j + e] + mD]) : 0.f;
  }
  return pack16<T>(z);
}

// ------------------------------------------------------------------------------------------------
// Forward, fp16 / bf16 on the tensor cores. Block (blockIdx.x, blockIdx.y) computes out for the
// columns [c0, c0+128) and maps [n0, n0+BN). Warps: 2 over n (BN/2 rows each, MT m16 tiles) x 4
// over c (32 columns each, 4 n8 tiles). w is [>= n0+BN][Kp] (zero-padded), Kp a multiple of 32.
// Per K step of 32: the W tile [BN][32] comes by cp.async, the Z tile [32][128] is generated by
// the threads (item i: pair row r = idx / 16, 8 columns from cg = idx % 16) and read by ldmatrix.trans.

template <typename T, int BN, bool kVec>
__global__ void __launch_bounds__(kThreads) cin_fwd_mma_kernel(const T* __restrict__ xk, const T* __restrict__ x0,
                                                                 const T* __restrict__ w,
                                                                 const float* __restrict__ bias, T* __restrict__ out,
                                                                 int64_t C, int H, int M, int D, int N, int K, int Kp) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  constexpr int V = 8;                                // halves per 16 bytes
  constexpr int MT = BN / 32;                         // m16 tiles per warp
  constexpr int A_VECS = kBKm / V;                    // 16-byte vectors per W tile row
  constexpr int A_ITEMS = BN * A_VECS / kThreads;     // 2 (BN 128) or 1 (BN 64)
  constexpr int NCG = kBC / V;                        // column groups per Z row: 16
  constexpr int Z_ITEMS = kBKm * NCG / kThreads;      // 2
  static_assert(A_ITEMS * kThreads == BN * A_VECS && Z_ITEMS * kThreads == kBKm * NCG, "tile split");
  __shared__ __align__(16) T As[2][BN][kLdAm];
  __shared__ __align__(16) T Zs[2][kBKm][kLdZm];
  __shared__ int64_t colk[kBC], col0[kBC], colo[kBC];

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBC;
  const int n0 = static_cast<int>(blockIdx.y) * BN;
  fill_columns(colk, col0, colo, c0, C, H, M, N, D);
  __syncthreads();

  auto issue_w = [&](int step, int s) {
    const int k0 = step * kBKm;
#pragma unroll
    for (int i = 0; i < A_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / A_VECS, v = idx % A_VECS;
      cp_async16(&As[s][r][v * V], w + static_cast<int64_t>(n0 + r) * Kp + k0 + v * V);
    }
  };
  uint4 rk[Z_ITEMS], r0[Z_ITEMS];  // kVec: the next Z tile's raw xk / x0 vectors
  auto load_z = [&](int step) {
#pragma unroll
    for (int i = 0; i < Z_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / NCG, cg = idx % NCG;
      const int k = step * kBKm + r;
      const int64_t ok = colk[cg * V], o0 = col0[cg * V];
      rk[i] = r0[i] = make_uint4(0u, 0u, 0u, 0u);
      if (k < K && ok >= 0) {
        const int h = k / M, m = k - h * M;
        rk[i] = ldg16(xk + ok + static_cast<int64_t>(h) * D);
        r0[i] = ldg16(x0 + o0 + static_cast<int64_t>(m) * D);
      }
    }
  };
  auto store_z = [&](int s) {
#pragma unroll
    for (int i = 0; i < Z_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / NCG, cg = idx % NCG;
      *reinterpret_cast<uint4*>(&Zs[s][r][cg * V]) = mul16<T>(rk[i], r0[i]);
    }
  };
  auto gen_z_scalar = [&](int step, int s) {
#pragma unroll
    for (int i = 0; i < Z_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / NCG, cg = idx % NCG;
      const int k = step * kBKm + r;
      uint4 z = make_uint4(0u, 0u, 0u, 0u);
      if (k < K) {
        const int h = k / M, m = k - h * M;
        z = z_scalar(xk, x0, colk, col0, cg * V, static_cast<int64_t>(h) * D, static_cast<int64_t>(m) * D);
      }
      *reinterpret_cast<uint4*>(&Zs[s][r][cg * V]) = z;
    }
  };

  const int wn = warp >> 2, wc = warp & 3;
  const int m8 = lane >> 3, rr = lane & 7;
  float acc[MT][4][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.f;

  auto mma_step = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < kBKm; kk += 16) {
      unsigned a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldsm_x4(a[mt], &As[s][wn * (BN / 2) + mt * 16 + rr + (m8 & 1) * 8][kk + (m8 >> 1) * 8]);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        // B = Z[k][c]: matrices (k +0/+8 by m8&1) x (c +0/+8 by m8>>1), transposed into b0/b1
        unsigned b[4];
        ldsm_x4_trans(b, &Zs[s][kk + rr + (m8 & 1) * 8][wc * 32 + np * 16 + (m8 >> 1) * 8]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  };

  const int steps = Kp / kBKm;
  issue_w(0, 0);
  if constexpr (kVec) {
    load_z(0);
    store_z(0);
  } else {
    gen_z_scalar(0, 0);
  }
  cp_async_wait_all();
  __syncthreads();
  for (int step = 0; step < steps; ++step) {
    const int s = step & 1;
    const bool next = step + 1 < steps;
    if (next) {  // stage s^1 was last read in step - 1, which ended with a barrier
      issue_w(step + 1, s ^ 1);
      if constexpr (kVec) load_z(step + 1);
    }
    mma_step(s);
    if (next) {
      if constexpr (kVec) {
        store_z(s ^ 1);
      } else {
        gen_z_scalar(step + 1, s ^ 1);
      }
    }
    cp_async_wait_all();
    __syncthreads();
  }

  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int n = n0 + wn * (BN / 2) + mt * 16 + g + hf * 8;
      if (n >= N) continue;
      const float bn = bias ? bias[n] : 0.f;
      const int64_t nD = static_cast<int64_t>(n) * D;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t o = colo[wc * 32 + nt * 8 + 2 * t + e];
          if (o >= 0) out[o + nD] = from_f<T>(acc[mt][nt][hf * 2 + e] + bn);
        }
      }
    }
  }
#endif
}

// ------------------------------------------------------------------------------------------------
// Forward, fp32 on FMAs. Same block tile (BN maps x 128 columns), K steps of 16. wt is the
// transposed padded weight [Kp][Np] (Kp a multiple of 16, Np of BN), so both shared tiles are
// k-major rows read as float4s: thread (ty, tx) of 16 x 16 owns maps ty*4 + 64q + {0..3} (q < BN/64)
// and columns tx*4 + 64p + {0..3} (p < 2).

template <int BN, bool kVec>
__global__ void __launch_bounds__(kThreads) cin_fwd_simt_kernel(const float* __restrict__ xk,
                                                                  const float* __restrict__ x0,
                                                                  const float* __restrict__ wt,
                                                                  const float* __restrict__ bias,
                                                                  float* __restrict__ out, int64_t C, int H, int M,
                                                                  int D, int N, int K, int Kp, int Np) {
  constexpr int V = 4;
  constexpr int QN = BN / 64;                        // float4 groups of maps per thread
  constexpr int A_VECS = BN / V;
  constexpr int A_ITEMS = kBKs * A_VECS / kThreads;  // 2 (BN 128) or 1 (BN 64)
  constexpr int NCG = kBC / V;                       // 32
  constexpr int Z_ITEMS = kBKs * NCG / kThreads;     // 2
  static_assert(A_ITEMS * kThreads == kBKs * A_VECS && Z_ITEMS * kThreads == kBKs * NCG, "tile split");
  __shared__ __align__(16) float Ws[2][kBKs][BN];
  __shared__ __align__(16) float Zs[2][kBKs][kBC];
  __shared__ int64_t colk[kBC], col0[kBC], colo[kBC];

  const int tid = threadIdx.x;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBC;
  const int n0 = static_cast<int>(blockIdx.y) * BN;
  fill_columns(colk, col0, colo, c0, C, H, M, N, D);
  __syncthreads();

  auto issue_w = [&](int step, int s) {
    const int k0 = step * kBKs;
#pragma unroll
    for (int i = 0; i < A_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / A_VECS, v = idx % A_VECS;
      cp_async16(&Ws[s][r][v * V], wt + static_cast<int64_t>(k0 + r) * Np + n0 + v * V);
    }
  };
  uint4 rk[Z_ITEMS], r0[Z_ITEMS];
  auto load_z = [&](int step) {
#pragma unroll
    for (int i = 0; i < Z_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / NCG, cg = idx % NCG;
      const int k = step * kBKs + r;
      const int64_t ok = colk[cg * V], o0 = col0[cg * V];
      rk[i] = r0[i] = make_uint4(0u, 0u, 0u, 0u);
      if (k < K && ok >= 0) {
        const int h = k / M, m = k - h * M;
        rk[i] = ldg16(xk + ok + static_cast<int64_t>(h) * D);
        r0[i] = ldg16(x0 + o0 + static_cast<int64_t>(m) * D);
      }
    }
  };
  auto store_z = [&](int s) {
#pragma unroll
    for (int i = 0; i < Z_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / NCG, cg = idx % NCG;
      *reinterpret_cast<uint4*>(&Zs[s][r][cg * V]) = mul16<float>(rk[i], r0[i]);
    }
  };
  auto gen_z_scalar = [&](int step, int s) {
#pragma unroll
    for (int i = 0; i < Z_ITEMS; ++i) {
      const int idx = tid + i * kThreads, r = idx / NCG, cg = idx % NCG;
      const int k = step * kBKs + r;
      uint4 z = make_uint4(0u, 0u, 0u, 0u);
      if (k < K) {
        const int h = k / M, m = k - h * M;
        z = z_scalar(xk, x0, colk, col0, cg * V, static_cast<int64_t>(h) * D, static_cast<int64_t>(m) * D);
      }
      *reinterpret_cast<uint4*>(&Zs[s][r][cg * V]) = z;
    }
  };

  const int tx = tid & 15, ty = tid >> 4;
  float acc[4 * QN][8];
#pragma unroll
  for (int i = 0; i < 4 * QN; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  auto fma_step = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < kBKs; ++kk) {
      float a[4 * QN], b[8];
#pragma unroll
      for (int q = 0; q < QN; ++q) {
        const float4 v = *reinterpret_cast<const float4*>(&Ws[s][kk][q * 64 + ty * 4]);
        a[4 * q] = v.x, a[4 * q + 1] = v.y, a[4 * q + 2] = v.z, a[4 * q + 3] = v.w;
      }
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const float4 v = *reinterpret_cast<const float4*>(&Zs[s][kk][p * 64 + tx * 4]);
        b[4 * p] = v.x, b[4 * p + 1] = v.y, b[4 * p + 2] = v.z, b[4 * p + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < 4 * QN; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  };

  const int steps = Kp / kBKs;
  issue_w(0, 0);
  if constexpr (kVec) {
    load_z(0);
    store_z(0);
  } else {
    gen_z_scalar(0, 0);
  }
  cp_async_wait_all();
  __syncthreads();
  for (int step = 0; step < steps; ++step) {
    const int s = step & 1;
    const bool next = step + 1 < steps;
    if (next) {
      issue_w(step + 1, s ^ 1);
      if constexpr (kVec) load_z(step + 1);
    }
    fma_step(s);
    if (next) {
      if constexpr (kVec) {
        store_z(s ^ 1);
      } else {
        gen_z_scalar(step + 1, s ^ 1);
      }
    }
    cp_async_wait_all();
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4 * QN; ++i) {
    const int n = n0 + (i >> 2) * 64 + ty * 4 + (i & 3);
    if (n >= N) continue;
    const float bn = bias ? bias[n] : 0.f;
    const int64_t nD = static_cast<int64_t>(n) * D;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t o = colo[(j >> 2) * 64 + tx * 4 + (j & 3)];
      if (o >= 0) out[o + nD] = from_f<float>(acc[i][j] + bn);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Weight gradient. Block (blockIdx.x, blockIdx.y, blockIdx.z) computes the partial
//   ws[z][n0 + 0..127][k0 + 0..127] = sum over its column steps of G[n, c] Z[k, c]
// with the columns c in steps of 32 (step range [z*per, min((z+1)*per, total))). A thread's rows
// (maps n for G, pairs k for Z) are fixed for the whole block; only the columns move.

// The sample and position of column c (< C < 2^31).
__device__ __forceinline__ void column(int c, int D, int& b, int& d) {
  b = static_cast<int>(static_cast<unsigned>(c) / static_cast<unsigned>(D));
  d = c - b * D;
}

// fp16 / bf16: G tile [128 n][32 c] and Z tile [128 k][32 c] in shared memory (c contiguous), two
// stages; item i of a thread: row (tid >> 2) + 64 i, 8 columns from (tid & 3) * 8. Warps: 2 over n
// (64 each, 4 m16 tiles) x 4 over k (32 each, 4 n8 tiles); the reduction runs over c, so both
// operands are read by plain ldmatrix (A = G row-major, B = Z with its k as the mma's n).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) cin_dw_mma_kernel(const T* __restrict__ g, const T* __restrict__ xk,
                                                                const T* __restrict__ x0, float* __restrict__ ws,
                                                                int C, int H, int M, int D, int N, int K, int Np,
                                                                int Kp, int per, int total) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  constexpr int V = 8;
  constexpr int ITEMS = 2;
  static_assert(ITEMS * kThreads == kDT * (kDC / V), "tile split");
  __shared__ __align__(16) T Gs[2][kDT][kLdDm];
  __shared__ __align__(16) T Zs[2][kDT][kLdDm];

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int k0 = static_cast<int>(blockIdx.x) * kDT, n0 = static_cast<int>(blockIdx.y) * kDT;
  const int split = static_cast<int>(blockIdx.z);
  const int s_begin = min(total, split * per), s_end = min(total, s_begin + per);
  const int cg = tid & 3;
  int64_t nD[ITEMS], hD[ITEMS], mD[ITEMS];  // -1: the row is padding
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int r = (tid >> 2) + 64 * i;
    const int n = n0 + r, k = k0 + r;
    nD[i] = n < N ? static_cast<int64_t>(n) * D : -1;
    const int h = k / M, m = k - h * M;
    hD[i] = k < K ? static_cast<int64_t>(h) * D : -1;
    mD[i] = static_cast<int64_t>(m) * D;
  }

  uint4 rg[ITEMS], rk[ITEMS], r0[ITEMS];  // kVec: the next step's raw vectors
  auto load = [&](int step) {
    const int c = step * kDC + cg * V;
    int b = 0, d = 0;
    if (c < C) column(c, D, b, d);
    const int64_t bg = static_cast<int64_t>(b) * N * D + d, bk = static_cast<int64_t>(b) * H * D + d,
                  b0 = static_cast<int64_t>(b) * M * D + d;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      rg[i] = rk[i] = r0[i] = make_uint4(0u, 0u, 0u, 0u);
      if (c < C) {
        if (nD[i] >= 0) rg[i] = ldg16(g + bg + nD[i]);
        if (hD[i] >= 0) {
          rk[i] = ldg16(xk + bk + hD[i]);
          r0[i] = ldg16(x0 + b0 + mD[i]);
        }
      }
    }
  };
  auto store = [&](int s) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int r = (tid >> 2) + 64 * i;
      *reinterpret_cast<uint4*>(&Gs[s][r][cg * V]) = rg[i];
      *reinterpret_cast<uint4*>(&Zs[s][r][cg * V]) = mul16<T>(rk[i], r0[i]);
    }
  };
  auto gen_scalar = [&](int step, int s) {
    const int c = step * kDC + cg * V;
    int64_t bg[V], bk[V], b0[V];  // -1: past C
#pragma unroll
    for (int e = 0; e < V; ++e) {
      bg[e] = bk[e] = b0[e] = -1;
      if (c + e < C) {
        int b, d;
        column(c + e, D, b, d);
        bg[e] = static_cast<int64_t>(b) * N * D + d;
        bk[e] = static_cast<int64_t>(b) * H * D + d;
        b0[e] = static_cast<int64_t>(b) * M * D + d;
      }
    }
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int r = (tid >> 2) + 64 * i;
      float gv[V], zv[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const bool ok = bg[e] >= 0;
        gv[e] = ok && nD[i] >= 0 ? to_f(g[bg[e] + nD[i]]) : 0.f;
        zv[e] = ok && hD[i] >= 0 ? to_f(xk[bk[e] + hD[i]]) * to_f(x0[b0[e] + mD[i]]) : 0.f;
      }
      *reinterpret_cast<uint4*>(&Gs[s][r][cg * V]) = pack16<T>(gv);
      *reinterpret_cast<uint4*>(&Zs[s][r][cg * V]) = pack16<T>(zv);
    }
  };

  const int wn = warp >> 2, wk = warp & 3;
  const int m8 = lane >> 3, rr = lane & 7;
  float acc[4][4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.f;

  auto mma_step = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < kDC; kk += 16) {
      unsigned a[4][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
        ldsm_x4(a[mt], &Gs[s][wn * 64 + mt * 16 + rr + (m8 & 1) * 8][kk + (m8 >> 1) * 8]);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        // B = Z read as [k (the mma's n)][c (the reduction)]: k +0/+8 by m8>>1, c +0/+8 by m8&1
        unsigned b[4];
        ldsm_x4(b, &Zs[s][wk * 32 + np * 16 + rr + (m8 >> 1) * 8][kk + (m8 & 1) * 8]);
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          mma16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  };

  if (s_begin < s_end) {  // uniform over the block
    if constexpr (kVec) {
      load(s_begin);
      store(0);
    } else {
      gen_scalar(s_begin, 0);
    }
    __syncthreads();
    for (int step = s_begin; step < s_end; ++step) {
      const int s = (step - s_begin) & 1;
      const bool next = step + 1 < s_end;
      if constexpr (kVec) {
        if (next) load(step + 1);
      }
      mma_step(s);
      if (next) {
        if constexpr (kVec) {
          store(s ^ 1);
        } else {
          gen_scalar(step + 1, s ^ 1);
        }
      }
      __syncthreads();
    }
  }

  const int gq = lane >> 2, t = lane & 3;
  float* wsb = ws + static_cast<int64_t>(split) * Np * Kp;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int n = n0 + wn * 64 + mt * 16 + gq + hf * 8;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int k = k0 + wk * 32 + nt * 8 + 2 * t;
        *reinterpret_cast<float2*>(wsb + static_cast<int64_t>(n) * Kp + k) =
            make_float2(acc[mt][nt][hf * 2], acc[mt][nt][hf * 2 + 1]);
      }
    }
  }
#endif
}

// fp32: G and Z tiles stored reduction-major, Gs[c][n] and Zs[c][k] (one stage; the next step's
// loads are in flight during this step's FMAs), so thread (ty, tx) reads float4s of its maps
// ty*4 + 64q and pairs tx*4 + 64p like the forward. Loads: a thread owns row tid & 127 (one map of
// G, one pair of Z) and the column groups (tid >> 7) + 2i of 4 columns, stored transposed.
template <bool kVec>
__global__ void __launch_bounds__(kThreads) cin_dw_simt_kernel(const float* __restrict__ g,
                                                                 const float* __restrict__ xk,
                                                                 const float* __restrict__ x0, float* __restrict__ ws,
                                                                 int C, int H, int M, int D, int N, int K, int Np,
                                                                 int Kp, int per, int total) {
  constexpr int V = 4;
  constexpr int ITEMS = 4;
  static_assert(ITEMS * kThreads == kDT * (kDC / V), "tile split");
  __shared__ __align__(16) float Gs[kDC][kDT];
  __shared__ __align__(16) float Zs[kDC][kDT];

  const int tid = threadIdx.x;
  const int k0 = static_cast<int>(blockIdx.x) * kDT, n0 = static_cast<int>(blockIdx.y) * kDT;
  const int split = static_cast<int>(blockIdx.z);
  const int s_begin = min(total, split * per), s_end = min(total, s_begin + per);
  const int row = tid & (kDT - 1), cg0 = tid >> 7;
  const int n = n0 + row, k = k0 + row;
  const int64_t nD = n < N ? static_cast<int64_t>(n) * D : -1;
  const int h = k / M, m = k - h * M;
  const int64_t hD = k < K ? static_cast<int64_t>(h) * D : -1, mD = static_cast<int64_t>(m) * D;

  float4 rg[ITEMS], rz[ITEMS];  // the next step's G values and Z products, 4 columns each
  auto load = [&](int step) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = step * kDC + (cg0 + 2 * i) * V;
      float gv[V] = {0.f, 0.f, 0.f, 0.f}, zv[V] = {0.f, 0.f, 0.f, 0.f};
      if constexpr (kVec) {
        if (c < C) {
          int b, d;
          column(c, D, b, d);
          if (nD >= 0) unpack16<float>(ldg16(g + static_cast<int64_t>(b) * N * D + d + nD), gv);
          if (hD >= 0) {
            float a[V], e0[V];
            unpack16<float>(ldg16(xk + static_cast<int64_t>(b) * H * D + d + hD), a);
            unpack16<float>(ldg16(x0 + static_cast<int64_t>(b) * M * D + d + mD), e0);
#pragma unroll
            for (int v = 0; v < V; ++v) zv[v] = a[v] * e0[v];
          }
        }
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if (c + v < C) {
            int b, d;
            column(c + v, D, b, d);
            if (nD >= 0) gv[v] = g[static_cast<int64_t>(b) * N * D + d + nD];
            if (hD >= 0) {
              zv[v] = xk[static_cast<int64_t>(b) * H * D + d + hD] * x0[static_cast<int64_t>(b) * M * D + d + mD];
            }
          }
        }
      }
      rg[i] = make_float4(gv[0], gv[1], gv[2], gv[3]);
      rz[i] = make_float4(zv[0], zv[1], zv[2], zv[3]);
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int cl = (cg0 + 2 * i) * V;
      Gs[cl][row] = rg[i].x, Gs[cl + 1][row] = rg[i].y, Gs[cl + 2][row] = rg[i].z, Gs[cl + 3][row] = rg[i].w;
      Zs[cl][row] = rz[i].x, Zs[cl + 1][row] = rz[i].y, Zs[cl + 2][row] = rz[i].z, Zs[cl + 3][row] = rz[i].w;
    }
  };

  const int tx = tid & 15, ty = tid >> 4;
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  if (s_begin < s_end) {  // uniform over the block
    load(s_begin);
    store();
    __syncthreads();
    for (int step = s_begin; step < s_end; ++step) {
      const bool next = step + 1 < s_end;
      if (next) load(step + 1);
#pragma unroll 4
      for (int cc = 0; cc < kDC; ++cc) {
        float a[8], b[8];
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const float4 va = *reinterpret_cast<const float4*>(&Gs[cc][q * 64 + ty * 4]);
          const float4 vb = *reinterpret_cast<const float4*>(&Zs[cc][q * 64 + tx * 4]);
          a[4 * q] = va.x, a[4 * q + 1] = va.y, a[4 * q + 2] = va.z, a[4 * q + 3] = va.w;
          b[4 * q] = vb.x, b[4 * q + 1] = vb.y, b[4 * q + 2] = vb.z, b[4 * q + 3] = vb.w;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();  // every warp is done reading this step's tiles
      if (next) {
        store();
        __syncthreads();
      }
    }
  }

  float* wsb = ws + static_cast<int64_t>(split) * Np * Kp;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int nn = n0 + (i >> 2) * 64 + ty * 4 + (i & 3);
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int kk = k0 + p * 64 + tx * 4;
      *reinterpret_cast<float4*>(wsb + static_cast<int64_t>(nn) * Kp + kk) =
          make_float4(acc[i][4 * p], acc[i][4 * p + 1], acc[i][4 * p + 2], acc[i][4 * p + 3]);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }
int forward_bn(int64_t N) { return N > 64 ? 128 : 64; }

template <typename T, int BN>
cudaError_t launch_fwd(const T* xk, const T* x0, const void* w, const float* bias, T* out, int64_t C, int H, int M,
                       int D, int N, int K, const CinWeightLayout& wl, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(cdiv(C, kBC)), static_cast<unsigned>(cdiv(N, BN)));
  if constexpr (std::is_same_v<T, float>) {
    const float* wt = static_cast<const float*>(w);
    const int Kp = static_cast<int>(wl.rows), Np = static_cast<int>(wl.cols);
    if (vec) {
      cin_fwd_simt_kernel<BN, true><<<grid, kThreads, 0, stream>>>(xk, x0, wt, bias, out, C, H, M, D, N, K, Kp, Np);
    } else {
      cin_fwd_simt_kernel<BN, false><<<grid, kThreads, 0, stream>>>(xk, x0, wt, bias, out, C, H, M, D, N, K, Kp, Np);
    }
  } else {
    const T* wp = static_cast<const T*>(w);
    const int Kp = static_cast<int>(wl.cols);
    if (vec) {
      cin_fwd_mma_kernel<T, BN, true><<<grid, kThreads, 0, stream>>>(xk, x0, wp, bias, out, C, H, M, D, N, K, Kp);
    } else {
      cin_fwd_mma_kernel<T, BN, false><<<grid, kThreads, 0, stream>>>(xk, x0, wp, bias, out, C, H, M, D, N, K, Kp);
    }
  }
  return cudaGetLastError();
}

}  // namespace

bool cin_supported(int64_t B, int64_t H, int64_t M, int64_t D, int64_t N) {
  constexpr int64_t kLim = (int64_t{1} << 31) - 1024;  // 32-bit column / pair indices plus a tile
  constexpr int64_t kMaps = int64_t{65535} * 64;  // forward grid.y <= 65535 (N, and H, M for the backward)
  return B >= 0 && H >= 0 && M >= 0 && D >= 0 && N >= 0 && B * D < kLim && H * M < kLim && N * M < kLim &&
         N * H < kLim && N <= kMaps && H <= kMaps && M <= kMaps;
}

CinWeightLayout cin_forward_weight_layout(DType dtype, int64_t N, int64_t K) {
  const int64_t np = round_up(std::max<int64_t>(N, 1), forward_bn(N));
  if (dtype == DType::kFloat) return {round_up(std::max<int64_t>(K, 1), kBKs), np, true};
  return {np, round_up(std::max<int64_t>(K, 1), kBKm), false};
}

cudaError_t cin_forward(DType dtype, const void* xk, const void* x0, const void* w, const float* bias, void* out,
                        int64_t B, int64_t H, int64_t M, int64_t D, int64_t N, const CinWeightLayout& wl,
                        cudaStream_t stream) {
  const int64_t C = B * D, K = H * M;
  if (C <= 0 || N <= 0) return cudaSuccess;
  if (K <= 0 || !cin_supported(B, H, M, D, N)) return cudaErrorInvalidValue;  // the caller handles K == 0
  const CinWeightLayout want = cin_forward_weight_layout(dtype, N, K);
  if (want.rows != wl.rows || want.cols != wl.cols || want.transposed != wl.transposed || !aligned16(w)) {
    return cudaErrorInvalidValue;
  }
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const T* xp = static_cast<const T*>(xk);
    const T* x0p = static_cast<const T*>(x0);
    T* op = static_cast<T*>(out);
    const bool vec = D % V == 0 && aligned16(xp) && aligned16(x0p);
    const int Hi = static_cast<int>(H), Mi = static_cast<int>(M), Di = static_cast<int>(D), Ni = static_cast<int>(N),
              Ki = static_cast<int>(K);
    if (forward_bn(N) == 128) return launch_fwd<T, 128>(xp, x0p, w, bias, op, C, Hi, Mi, Di, Ni, Ki, wl, vec, stream);
    return launch_fwd<T, 64>(xp, x0p, w, bias, op, C, Hi, Mi, Di, Ni, Ki, wl, vec, stream);
  });
}

CinGradLayout cin_weight_grad_layout(int64_t N, int64_t K, int64_t B, int64_t D, int sm_count) {
  const int64_t rows = round_up(std::max<int64_t>(N, 1), kDT), cols = round_up(std::max<int64_t>(K, 1), kDT);
  const int64_t tiles = (rows / kDT) * (cols / kDT);
  const int64_t steps = cdiv(std::max<int64_t>(B * D, 1), kDC);
  // Two blocks fit an SM (124 registers x 256 threads, 40 KB). Split counts are tried from 1 while
  // each split keeps at least 16 column steps and the grid stays within 4 waves: the first whose
  // waves are >= 90% full wins, else the fullest (the fewest splits on ties). Few splits keep the
  // workspace (splits x dW in fp32) and its reduction small.
  const int64_t slots = 2 * std::max(sm_count, 1);
  const int64_t max_splits = std::max<int64_t>(1, std::min(cdiv(steps, 16), int64_t{kMaxSplits}));
  int64_t splits = 1;
  double best = 0.0;
  for (int64_t s = 1; s <= max_splits && (s == 1 || tiles * s <= 4 * slots); ++s) {
    const int64_t blocks = tiles * s;
    const double fill = static_cast<double>(blocks) / static_cast<double>(cdiv(blocks, slots) * slots);
    if (fill > best + 1e-9) best = fill, splits = s;
    if (fill >= 0.9) break;
  }
  return {rows, cols, splits};
}

cudaError_t cin_weight_grad(DType dtype, const void* grad, const void* xk, const void* x0, float* ws, int64_t B,
                            int64_t H, int64_t M, int64_t D, int64_t N, const CinGradLayout& gl,
                            cudaStream_t stream) {
  const int64_t C = B * D, K = H * M;
  if (C <= 0 || K <= 0 || N <= 0 || !cin_supported(B, H, M, D, N)) return cudaErrorInvalidValue;
  if (gl.rows % kDT || gl.cols % kDT || gl.rows < N || gl.cols < K || gl.splits < 1 || gl.splits > kMaxSplits ||
      gl.rows / kDT > 65535 || !aligned16(ws)) {
    return cudaErrorInvalidValue;
  }
  const int total = static_cast<int>(cdiv(C, kDC));
  const int per = static_cast<int>(cdiv(total, gl.splits));
  const dim3 grid(static_cast<unsigned>(gl.cols / kDT), static_cast<unsigned>(gl.rows / kDT),
                  static_cast<unsigned>(gl.splits));
  const int Ci = static_cast<int>(C), Hi = static_cast<int>(H), Mi = static_cast<int>(M), Di = static_cast<int>(D),
            Ni = static_cast<int>(N), Ki = static_cast<int>(K), Np = static_cast<int>(gl.rows),
            Kp = static_cast<int>(gl.cols);
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const T* gp = static_cast<const T*>(grad);
    const T* xp = static_cast<const T*>(xk);
    const T* x0p = static_cast<const T*>(x0);
    const bool vec = D % V == 0 && aligned16(gp) && aligned16(xp) && aligned16(x0p);
    if constexpr (std::is_same_v<T, float>) {
      if (vec) {
        cin_dw_simt_kernel<true><<<grid, kThreads, 0, stream>>>(gp, xp, x0p, ws, Ci, Hi, Mi, Di, Ni, Ki, Np, Kp, per,
                                                                total);
      } else {
        cin_dw_simt_kernel<false><<<grid, kThreads, 0, stream>>>(gp, xp, x0p, ws, Ci, Hi, Mi, Di, Ni, Ki, Np, Kp, per,
                                                                 total);
      }
    } else {
      if (vec) {
        cin_dw_mma_kernel<T, true><<<grid, kThreads, 0, stream>>>(gp, xp, x0p, ws, Ci, Hi, Mi, Di, Ni, Ki, Np, Kp, per,
                                                                  total);
      } else {
        cin_dw_mma_kernel<T, false><<<grid, kThreads, 0, stream>>>(gp, xp, x0p, ws, Ci, Hi, Mi, Di, Ni, Ki, Np, Kp,
                                                                   per, total);
      }
    }
    return cudaGetLastError();
  });
}

}  // namespace rankops::cuda

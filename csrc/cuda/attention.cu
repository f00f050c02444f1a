// CUDA kernels of target attention (padded and jagged), forward and backward.
//
// The shape of the problem: Q candidates per user (1..64+) against a long behaviour sequence
// (L = 100..10000 keys), d = 16..128. So the forward is a split-KV decoding kernel: a block owns
// (sample*head, query block, key split), streams the split's keys and values through shared memory
// in tiles of `tile` rows (4096 / d, at most 256; at most 64 in the backward), loading each tile
// ONCE and using it for every query of the block (up to 64 queries: for Q <= 64 the
// candidates of a user share one pass over its sequence), with the online softmax in fp32. When
// B*H cannot fill the GPU the keys are split; each split writes its partial (m, l, acc) to an fp32
// workspace and a small combine kernel merges them into out and lse. With one split the block
// writes out and lse itself.
//
// One kernel body serves both layouts: a sample's key rows are `base + j * stride` for j < len
// (padded: base = (b*H + h)*L*d, stride d, len = lengths[b]; jagged: base = (offsets[b]*H + h)*d,
// stride H*d, len = offsets[b+1] - offsets[b]). Keys past len are never read; tile rows past the
// valid ones are zero in shared memory, so whatever the padding holds (even NaN) never leaks.
//
// Each tile goes through three block-wide phases over shared memory (plain fp32 FMAs, no tensor
// cores: simple and regular first):
//   scores  S[i][j] = q_i . k_j         (G lanes per (i, j) pair when the pairs are fewer than the
//                                        threads, reduced by shuffles)
//   softmax a warp per query row: new max, P = exp2(S - m), running sum, rescale factor
//   PV      acc[i][c] = acc[i][c] * alpha_i + sum_j P[i][j] v[j][c]   (registers: a thread owns
//                                        NACC <= kAcc (i, c) slots, G lanes per slot when few;
//                                        NACC is a template parameter sized to the call, so a
//                                        Q = 1 call does not pay registers for 64 queries)
// Scores are in the log2 domain (q is pre-multiplied by scale * log2(e)); lse is stored natural.
//
// Not measured on a GPU yet. By count, each FMA of the scores and PV loops takes two shared-memory
// reads (one broadcast, one conflict-free), so a block is bound by shared-memory bandwidth, not
// FMAs: at Q = 64, d = 64 about 32K cycles per 64-key tile against 4K of FMA issue. That is fine
// where the op is memory-bound (Q ~ 1: about 20 B/clk/SM of shared traffic per byte of K/V read)
// and slow where it is not (Q >= 16: tensor cores, or register-blocked tiles of 4 queries x 2 keys
// reading q and P transposed as float4, are the next step once a GPU has measured this version).
//
// Backward (FlashAttention-2 order, from the saved lse): delta = rowsum(dO * O) (a small kernel);
// then a block per (sample*head, key split) loops over its key tiles, and for each tile over all
// query blocks: P = exp2(scale*log2e * q.k - lse*log2e), dS = P * (dO.v - delta);
// dV += P^T dO and dK += dS^T Q in registers (the tile is owned by this block: written directly,
// no atomics), dQ += dS K into the block's own fp32 slice of a workspace [split][row][d] (no
// atomics either: one slice per split; in registers across tiles when all queries fit one query
// block), then a reduce kernel sums the splits, scales and casts dq. Padded key rows past a
// sample's length get dk = dv = 0, written by the sample's blocks (split s zeroes its share).
#include "cuda/attention.h"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace rankops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kAcc = 16;                        // register accumulator slots per thread and array
constexpr int kTileElems = kAcc * kThreads;     // tile * d and q_block * d are at most this
constexpr int kMaxSplits = 1024;                // grid.y
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFull = 0xffffffffu;

// ------------------------------------------------------------------------------------------------
// Small helpers shared by host and device

__host__ __device__ __forceinline__ int64_t cdiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Keys of split s of a sample of len keys: [s * sl, min((s + 1) * sl, len)), sl a multiple of the
// tile. Every sample has the call's `splits` splits of equal length (per sample), so no maximum
// length is needed on the host; splits past the keys are empty.
__host__ __device__ __forceinline__ int64_t split_len(int64_t len, int splits, int tile) {
  if (len <= 0) return 0;
  return cdiv64(cdiv64(len, splits), tile) * tile;
}
// The splits of a sample that hold keys (0 for an empty sample); at most `splits`.
__host__ __device__ __forceinline__ int splits_used(int64_t len, int splits, int tile) {
  const int64_t sl = split_len(len, splits, tile);
  return sl > 0 ? static_cast<int>(cdiv64(len, sl)) : 0;
}

// Lanes per work item: a power of two <= 32 such that items * G still fits one pass of the block.
__host__ __device__ __forceinline__ int group_for(int64_t items) {
  int g = 1;
  while (g < 32 && items * g * 2 <= kThreads) g *= 2;
  return g;
}
__host__ __device__ __forceinline__ int log2_pow2(int g) {
  int l = 0;
  while ((1 << l) < g) ++l;
  return l;
}

// Row stride (floats) of the shared key tile for the scores phase with G lanes per (i, j) pair:
// lane (jl, sub) reads k[jl][sub + G t]; with the stride G * odd, the 32 / G consecutive rows x G
// columns of one warp access fall in 32 distinct banks.
__host__ __device__ __forceinline__ int k_stride(int d, int g) {
  const int m = ((d + g - 1) / g) | 1;
  return m * g;
}
// Row stride of the shared value tile for the PV phase with G lanes per (i, c) slot: lane
// (c_local, sub) reads v[sub + G t][c0 + c_local]; a stride = 32 / G (mod 32) puts them in 32
// distinct banks. G = 1: consecutive columns of one row, any stride.
__host__ __device__ __forceinline__ int v_stride(int d, int g) { return g == 1 ? d : (d + 31) / 32 * 32 + 32 / g; }

// The forward block's layout for a block of nq queries.
struct FwdLayout {
  int g2, lg2, kst;  // scores: lanes per pair, their log2, key row stride
  int g4, lg4, vst;  // PV: lanes per slot, their log2, value row stride
  __host__ __device__ FwdLayout(int nq, int tile, int d) {
    g2 = group_for(int64_t{nq} * tile);
    lg2 = log2_pow2(g2);
    kst = k_stride(d, g2);
    g4 = group_for(int64_t{nq} * d);
    lg4 = log2_pow2(g4);
    vst = v_stride(d, g4);
  }
  __host__ __device__ int64_t smem_floats(int nq, int tile, int d) const {
    return int64_t{nq} * d + int64_t{tile} * kst + int64_t{tile} * vst + int64_t{nq} * (tile + 1) + 3 * nq;
  }
};

// The backward block's layout (one for all its query blocks, sized by the first and largest).
struct BwdLayout {
  int g2, lg2, kst;  // scores: lanes per pair, their log2, key and value row stride
  __host__ __device__ BwdLayout(int q_block, int tile, int d) {
    g2 = group_for(int64_t{q_block} * tile);
    lg2 = log2_pow2(g2);
    kst = k_stride(d, g2);
  }
  __host__ __device__ int64_t smem_floats(int q_block, int tile, int d) const {
    return 2 * int64_t{q_block} * d + 2 * int64_t{tile} * kst + 2 * int64_t{q_block} * (tile + 1) + 2 * q_block;
  }
};

// ------------------------------------------------------------------------------------------------
// Where a sample's keys are

struct Seq {
  const int64_t* p;  // lengths[B] (padded) or offsets[B+1] (jagged)
  int64_t rows;      // padded: L (rows per sample); jagged: S (packed rows)
  int H, d;
  bool jagged;
};

struct Sample {
  int64_t base, stride;  // key row j at base + j * stride (elements)
  int64_t len;           // valid keys
  int64_t rows;          // rows this (b, h) owns in dk / dv: padded L, jagged len
};

__device__ __forceinline__ Sample locate(const Seq& s, int64_t b, int h) {
  Sample r;
  if (s.jagged) {
    const int64_t st = min64(max64(s.p[b], 0), s.rows);
    const int64_t en = min64(max64(s.p[b + 1], st), s.rows);
    r.base = (st * s.H + h) * s.d;
    r.stride = int64_t{s.H} * s.d;
    r.len = en - st;
    r.rows = r.len;
  } else {
    r.len = min64(max64(s.p[b], 0), s.rows);
    r.base = (b * s.H + h) * s.rows * s.d;
    r.stride = s.d;
    r.rows = s.rows;
  }
  return r;
}

// ------------------------------------------------------------------------------------------------
// Warp reductions (every lane of the warp must call them)

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}
// Sum over aligned groups of g lanes (g a power of two <= 32, the same in the whole warp).
__device__ __forceinline__ float group_sum(float x, int g) {
  for (int o = g >> 1; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

// ------------------------------------------------------------------------------------------------
// Tile load: nt rows of k and v (row r at r * stride) -> fp32 shared rows ks[r * kst], vs[r * vst];
// rows nt..tile-1 zeroed (columns < d). vec: d % (16 / sizeof(T)) == 0 and both bases 16-byte
// aligned (then every row is, as the strides are multiples of d). Four 16-byte loads of each of k
// and v are in flight per thread before the first is converted.

template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ kg, const T* __restrict__ vg, int64_t stride, int nt,
                                          int tile, int d, float* ks, int kst, float* vs, int vst, bool vec) {
  constexpr int kU = 2;
  if (vec) {
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const int nc = d / V;  // 16-byte chunks per row
    const int n = nt * nc;
    for (int e0 = threadIdx.x; e0 < n; e0 += kU * kThreads) {
      uint4 kr[kU], vr[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int e = e0 + u * kThreads;
        if (e < n) {
          const int r = e / nc, c = (e - r * nc) * V;
          kr[u] = __ldg(reinterpret_cast<const uint4*>(kg + r * stride + c));
          vr[u] = __ldg(reinterpret_cast<const uint4*>(vg + r * stride + c));
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int e = e0 + u * kThreads;
        if (e < n) {
          const int r = e / nc, c = (e - r * nc) * V;
          float f[V];
          unpack16<T>(kr[u], f);
#pragma unroll
          for (int x = 0; x < V; ++x) ks[r * kst + c + x] = f[x];
          unpack16<T>(vr[u], f);
#pragma unroll
          for (int x = 0; x < V; ++x) vs[r * vst + c + x] = f[x];
        }
      }
    }
  } else {
    const int n = nt * d;
    for (int e0 = threadIdx.x; e0 < n; e0 += kU * kThreads) {
      float kr[kU], vr[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int e = e0 + u * kThreads;
        if (e < n) {
          const int r = e / d, c = e - r * d;
          kr[u] = to_f(kg[r * stride + c]);
          vr[u] = to_f(vg[r * stride + c]);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int e = e0 + u * kThreads;
        if (e < n) {
          const int r = e / d, c = e - r * d;
          ks[r * kst + c] = kr[u];
          vs[r * vst + c] = vr[u];
        }
      }
    }
  }
  for (int e = nt * d + static_cast<int>(threadIdx.x); e < tile * d; e += kThreads) {
    const int r = e / d, c = e - r * d;
    ks[r * kst + c] = 0.f;
    vs[r * vst + c] = 0.f;
  }
}

// ------------------------------------------------------------------------------------------------
// Forward

struct FwdArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  float* part_acc;  // [splits][R][d]   unnormalised accumulators   (splits > 1)
  float* part_m;    // [splits][R]      running max, log2 domain
  float* part_l;    // [splits][R]      running sum
  Seq seq;
  int64_t BH;
  int Q, d, tile, q_block, q_blocks, splits;
  float qscale;  // scale * log2(e)
  bool vec;
};

// Occupancy: 3 blocks (24 warps) per SM for up to 4 slots (Q small: memory-bound, more loads in
// flight), 2 for 8 and 16 (their 128 registers; ptxas -v: no spills on sm_80 or sm_90 either way).
template <typename T, int NACC>
__global__ void __launch_bounds__(kThreads, NACC >= 8 ? 2 : 3) fwd_kernel(const FwdArgs a) {
  extern __shared__ __align__(16) float smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int d = a.d, tile = a.tile, sst = tile + 1;
  const int64_t bh = blockIdx.x / a.q_blocks;
  const int qb = static_cast<int>(blockIdx.x - bh * a.q_blocks);
  const int s = blockIdx.y;
  const int64_t b = bh / a.seq.H;
  const int h = static_cast<int>(bh - b * a.seq.H);
  const Sample sm = locate(a.seq, b, h);
  const int64_t sl = split_len(sm.len, a.splits, tile);
  const int64_t lo = s * sl, hi = min64(lo + sl, sm.len);
  const bool split = a.splits > 1;
  if (split && lo >= hi) return;  // no keys in this split: the combine reads only splits with keys

  const int q0 = qb * a.q_block;
  const int nq = min(a.q_block, a.Q - q0);
  const int64_t R = a.BH * a.Q;
  const int64_t row0 = bh * a.Q + q0;
  const FwdLayout lay(nq, tile, d);
  float* qs = smem;                  // [nq][d]      queries * scale * log2(e)
  float* ks = qs + nq * d;           // [tile][kst]
  float* vs = ks + tile * lay.kst;   // [tile][vst]
  float* ps = vs + tile * lay.vst;   // [nq][tile + 1] scores, then probabilities
  float* ms = ps + nq * sst;         // [nq] running max
  float* ls = ms + nq;               // [nq] running sum
  float* al = ls + nq;               // [nq] this tile's rescale of the accumulators

  const T* qg = static_cast<const T*>(a.q) + row0 * d;
  for (int e = tid; e < nq * d; e += kThreads) qs[e] = to_f(qg[e]) * a.qscale;
  for (int i = tid; i < nq; i += kThreads) {
    ms[i] = -INFINITY;
    ls[i] = 0.f;
  }
  float acc[NACC];
#pragma unroll
  for (int k = 0; k < NACC; ++k) acc[k] = 0.f;

  const int n2 = (nq * tile) << lay.lg2;  // scores: (i, j) pairs x lanes
  const int n4 = (nq * d) << lay.lg4;     // PV: (i, c) slots x lanes; <= kTileElems
  const T* kg = static_cast<const T*>(a.k) + sm.base;
  const T* vg = static_cast<const T*>(a.v) + sm.base;
  for (int64_t t0 = lo; t0 < hi; t0 += tile) {
    const int nt = static_cast<int>(min64(tile, hi - t0));
    __syncthreads();  // the previous tile's readers are done (first time: qs, ms, ls written)
    load_tile<T>(kg + t0 * sm.stride, vg + t0 * sm.stride, sm.stride, nt, tile, d, ks, lay.kst, vs, lay.vst, a.vec);
    __syncthreads();

    // scores: S[i][j] = qs_i . k_j, g2 lanes per pair (same trip count in the whole block)
    for (int e0 = 0; e0 < n2; e0 += kThreads) {
      const int e = e0 + tid;
      const int item = e >> lay.lg2, sub = e & (lay.g2 - 1);
      const bool valid = e < n2;
      int i = 0, j = 0;
      float x = 0.f;
      if (valid) {
        i = item / tile;
        j = item - i * tile;
        const float* qr = qs + i * d;
        const float* kr = ks + j * lay.kst;
        for (int c = sub; c < d; c += lay.g2) x = fmaf(qr[c], kr[c], x);
      }
      x = group_sum(x, lay.g2);
      if (valid && sub == 0) ps[i * sst + j] = x;
    }
    __syncthreads();

    // softmax: a warp per query row. The tile holds >= 1 valid key, so the new max is finite.
    for (int i = warp; i < nq; i += kWarps) {
      float* row = ps + i * sst;
      float mx = -INFINITY;
      for (int j = lane; j < nt; j += 32) mx = fmaxf(mx, row[j]);
      mx = warp_max(mx);
      const float m_old = ms[i];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.f;
      for (int j = lane; j < tile; j += 32) {
        const float p = j < nt ? exp2f(row[j] - m_new) : 0.f;
        row[j] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float r = exp2f(m_old - m_new);  // 0 on the first tile (m_old = -inf)
        al[i] = r;
        ls[i] = ls[i] * r + sum;
        ms[i] = m_new;
      }
    }
    __syncthreads();

    // PV: slot k of this thread is (i, c) = item of e = tid + k * kThreads, lanes sub over keys
#pragma unroll
    for (int k = 0; k < NACC; ++k) {
      const int e = tid + k * kThreads;
      if (e < n4) {
        const int item = e >> lay.lg4, sub = e & (lay.g4 - 1);
        const int i = item / d, c = item - i * d;
        const float* prow = ps + i * sst;
        float x = acc[k] * al[i];
        for (int j = sub; j < nt; j += lay.g4) x = fmaf(prow[j], vs[j * lay.vst + c], x);
        acc[k] = x;
      }
    }
  }
  __syncthreads();  // ms, ls final (also when the sample has no keys)

  // lanes of one slot hold partial sums over interleaved keys: add them (g4 > 1: one slot each)
  if (lay.g4 > 1) acc[0] = group_sum(acc[0], lay.g4);
  T* og = static_cast<T*>(a.out) + row0 * d;
#pragma unroll
  for (int k = 0; k < NACC; ++k) {
    const int e = tid + k * kThreads;
    if (e < n4 && (e & (lay.g4 - 1)) == 0) {
      const int item = e >> lay.lg4;
      if (split) {
        a.part_acc[(s * R + row0) * d + item] = acc[k];
      } else {
        const float l = ls[item / d];
        og[item] = from_f<T>(l > 0.f ? acc[k] / l : 0.f);
      }
    }
  }
  for (int i = tid; i < nq; i += kThreads) {
    if (split) {
      a.part_m[s * R + row0 + i] = ms[i];
      a.part_l[s * R + row0 + i] = ls[i];
    } else {
      a.lse[row0 + i] = ls[i] > 0.f ? (ms[i] + log2f(ls[i])) * kLn2 : -INFINITY;
    }
  }
}

// Merge the splits of each query row: a warp per row. Only splits with keys are read (each has a
// finite max and a sum >= 1); a sample with no keys gets zeros and lse = -inf.
template <typename T>
__global__ void __launch_bounds__(kThreads) combine_kernel(const float* __restrict__ part_acc,
                                                           const float* __restrict__ part_m,
                                                           const float* __restrict__ part_l, T* __restrict__ out,
                                                           float* __restrict__ lse, const Seq seq, int64_t R, int Q,
                                                           int d, int tile, int splits) {
  const int lane = threadIdx.x & 31;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t row = first; row < R; row += step) {  // the same for the whole warp
    const int64_t bh = row / Q;
    const int64_t b = bh / seq.H;
    const int used = splits_used(locate(seq, b, static_cast<int>(bh - b * seq.H)).len, splits, tile);
    T* orow = out + row * d;
    if (used == 0) {
      for (int c = lane; c < d; c += 32) orow[c] = from_f<T>(0.f);
      if (lane == 0) lse[row] = -INFINITY;
      continue;
    }
    float m = -INFINITY;
    for (int s = lane; s < used; s += 32) m = fmaxf(m, part_m[s * R + row]);
    m = warp_max(m);
    float l = 0.f;
    for (int s = lane; s < used; s += 32) l += part_l[s * R + row] * exp2f(part_m[s * R + row] - m);
    l = warp_sum(l);
    const float inv = 1.f / l;
    for (int c = lane; c < d; c += 32) {
      float o = 0.f;
      for (int s = 0; s < used; ++s) o = fmaf(part_acc[(s * R + row) * d + c], exp2f(part_m[s * R + row] - m), o);
      orow[c] = from_f<T>(o * inv);
    }
    if (lane == 0) lse[row] = (m + log2f(l)) * kLn2;
  }
}

// ------------------------------------------------------------------------------------------------
// Backward

// delta[row] = sum_c dO[row][c] * O[row][c] in fp32: a warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads) delta_kernel(const T* __restrict__ grad, const T* __restrict__ out,
                                                         float* __restrict__ delta, int64_t R, int d) {
  const int lane = threadIdx.x & 31;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t row = first; row < R; row += step) {
    float x = 0.f;
    for (int c = lane; c < d; c += 32) x = fmaf(to_f(grad[row * d + c]), to_f(out[row * d + c]), x);
    x = warp_sum(x);
    if (lane == 0) delta[row] = x;
  }
}

struct BwdArgs {
  const void* grad;
  const void* q;
  const void* k;
  const void* v;
  const float* lse;
  const float* delta;  // [R]
  void* dk;
  void* dv;
  float* dq_part;  // [splits][R][d]: split s's sum_j dS K (unscaled)
  Seq seq;
  int64_t BH;
  int Q, d, tile, q_block, q_blocks, splits;
  float scale;
  bool vec;
};

template <typename T, int NKV, int NDQ>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const BwdArgs a) {
  extern __shared__ __align__(16) float smem[];
  const int tid = threadIdx.x;
  const int d = a.d, tile = a.tile, sst = tile + 1, QB = a.q_block;
  const int64_t bh = blockIdx.x;
  const int s = blockIdx.y;
  const int64_t b = bh / a.seq.H;
  const int h = static_cast<int>(bh - b * a.seq.H);
  const Sample sm = locate(a.seq, b, h);
  const int64_t R = a.BH * a.Q;
  T* dkg = static_cast<T*>(a.dk) + sm.base;
  T* dvg = static_cast<T*>(a.dv) + sm.base;

  // padded rows [len, L) get dk = dv = 0: split s zeroes its share (they are contiguous rows)
  {
    const int64_t pad = sm.rows - sm.len;
    if (pad > 0) {
      const int64_t per = cdiv64(pad, a.splits);
      const int64_t r0 = sm.len + s * per, r1 = min64(r0 + per, sm.rows);
      for (int64_t e = r0 * d + tid; e < r1 * d; e += kThreads) {
        dkg[e] = from_f<T>(0.f);
        dvg[e] = from_f<T>(0.f);
      }
    }
  }
  const int64_t sl = split_len(sm.len, a.splits, tile);
  const int64_t lo = s * sl, hi = min64(lo + sl, sm.len);
  if (lo >= hi) return;  // the dq reduce reads only splits with keys

  const BwdLayout lay(QB, tile, d);
  const int kst = lay.kst;
  float* qs = smem;                // [QB][d]   q
  float* gs = qs + QB * d;         // [QB][d]   dO
  float* ks = gs + QB * d;         // [tile][kst]
  float* vs = ks + tile * kst;     // [tile][kst]
  float* ps = vs + tile * kst;     // [QB][tile + 1]  P
  float* dss = ps + QB * sst;      // [QB][tile + 1]  dS
  float* l2 = dss + QB * sst;      // [QB] lse * log2(e)
  float* dl = l2 + QB;             // [QB] delta

  const float qk = a.scale * kLog2e;
  const T* qg = static_cast<const T*>(a.q);
  const T* gg = static_cast<const T*>(a.grad);
  const T* kg = static_cast<const T*>(a.k) + sm.base;
  const T* vg = static_cast<const T*>(a.v) + sm.base;
  float* dqp = a.dq_part + s * R * d;
  const bool one_qb = a.q_blocks == 1;

  float dk_acc[NKV], dv_acc[NKV], dq_acc[NDQ];
#pragma unroll
  for (int k = 0; k < NDQ; ++k) dq_acc[k] = 0.f;
  bool first = true;
  for (int64_t t0 = lo; t0 < hi; t0 += tile) {
    const int nt = static_cast<int>(min64(tile, hi - t0));
    __syncthreads();  // the previous tile's readers are done
    load_tile<T>(kg + t0 * sm.stride, vg + t0 * sm.stride, sm.stride, nt, tile, d, ks, kst, vs, kst, a.vec);
#pragma unroll
    for (int k = 0; k < NKV; ++k) dk_acc[k] = dv_acc[k] = 0.f;

    for (int qb = 0; qb < a.q_blocks; ++qb) {
      const int q0 = qb * QB;
      const int nq = min(QB, a.Q - q0);
      const int64_t row0 = bh * a.Q + q0;
      const int gc = group_for(int64_t{nq} * d);
      const int lgc = log2_pow2(gc);
      const int nc = (nq * d) << lgc;  // dQ: (i, c) slots x lanes; <= kTileElems
      if (qb > 0) __syncthreads();  // the previous query block's readers are done
      if (!one_qb || first) {
        for (int e = tid; e < nq * d; e += kThreads) {
          qs[e] = to_f(qg[row0 * d + e]);
          gs[e] = to_f(gg[row0 * d + e]);
        }
        for (int i = tid; i < nq; i += kThreads) {
          l2[i] = a.lse[row0 + i] * kLog2e;
          dl[i] = a.delta[row0 + i];
        }
      }
      if (!one_qb) {  // this query block's dq so far, from the block's own workspace slice
#pragma unroll
        for (int k = 0; k < NDQ; ++k) {
          const int e = tid + k * kThreads;
          if (e < nc) dq_acc[k] = (first || (e & (gc - 1)) != 0) ? 0.f : dqp[row0 * d + (e >> lgc)];
        }
      }
      __syncthreads();

      // P and dS for (i, j): two dot products over d, g2 lanes per pair
      const int n2 = (nq * tile) << lay.lg2;
      for (int e0 = 0; e0 < n2; e0 += kThreads) {
        const int e = e0 + tid;
        const int item = e >> lay.lg2, sub = e & (lay.g2 - 1);
        const bool valid = e < n2;
        int i = 0, j = 0;
        float x = 0.f, y = 0.f;
        if (valid) {
          i = item / tile;
          j = item - i * tile;
          const float* qr = qs + i * d;
          const float* gr = gs + i * d;
          const float* kr = ks + j * kst;
          const float* vr = vs + j * kst;
          for (int c = sub; c < d; c += lay.g2) {
            x = fmaf(qr[c], kr[c], x);
            y = fmaf(gr[c], vr[c], y);
          }
        }
        x = group_sum(x, lay.g2);
        y = group_sum(y, lay.g2);
        if (valid && sub == 0) {
          float p = 0.f, ds = 0.f;
          if (j < nt) {
            p = exp2f(x * qk - l2[i]);
            ds = p * (y - dl[i]);
          }
          ps[i * sst + j] = p;
          dss[i * sst + j] = ds;
        }
      }
      __syncthreads();

      // dV[j][c] += sum_i P[i][j] dO[i][c];  dK[j][c] += sum_i dS[i][j] q[i][c]  (the tile's rows)
#pragma unroll
      for (int k = 0; k < NKV; ++k) {
        const int e = tid + k * kThreads;
        if (e < nt * d) {
          const int j = e / d, c = e - j * d;
          float x = dv_acc[k], y = dk_acc[k];
          for (int i = 0; i < nq; ++i) {
            x = fmaf(ps[i * sst + j], gs[i * d + c], x);
            y = fmaf(dss[i * sst + j], qs[i * d + c], y);
          }
          dv_acc[k] = x;
          dk_acc[k] = y;
        }
      }
      // dQ[i][c] += sum_j dS[i][j] k[j][c], gc lanes per slot over interleaved keys
#pragma unroll
      for (int k = 0; k < NDQ; ++k) {
        const int e = tid + k * kThreads;
        if (e < nc) {
          const int item = e >> lgc, sub = e & (gc - 1);
          const int i = item / d, c = item - i * d;
          const float* dsr = dss + i * sst;
          float x = dq_acc[k];
          for (int j = sub; j < nt; j += gc) x = fmaf(dsr[j], ks[j * kst + c], x);
          dq_acc[k] = x;
        }
      }
      if (!one_qb) {
        if (gc > 1) dq_acc[0] = group_sum(dq_acc[0], gc);  // gc > 1: one slot per thread
#pragma unroll
        for (int k = 0; k < NDQ; ++k) {
          const int e = tid + k * kThreads;
          if (e < nc && (e & (gc - 1)) == 0) dqp[row0 * d + (e >> lgc)] = dq_acc[k];
        }
      }
    }

    // this tile's dk, dv: owned by this block, written directly
#pragma unroll
    for (int k = 0; k < NKV; ++k) {
      const int e = tid + k * kThreads;
      if (e < nt * d) {
        const int j = e / d, c = e - j * d;
        const int64_t off = (t0 + j) * sm.stride + c;
        dkg[off] = from_f<T>(dk_acc[k] * a.scale);
        dvg[off] = from_f<T>(dv_acc[k]);
      }
    }
    first = false;
  }

  if (one_qb) {
    const int nq = a.Q;  // one query block: all queries
    const int gc = group_for(int64_t{nq} * d);
    const int lgc = log2_pow2(gc);
    const int nc = (nq * d) << lgc;
    if (gc > 1) dq_acc[0] = group_sum(dq_acc[0], gc);
    const int64_t row0 = bh * a.Q;
#pragma unroll
    for (int k = 0; k < NDQ; ++k) {
      const int e = tid + k * kThreads;
      if (e < nc && (e & (gc - 1)) == 0) dqp[row0 * d + (e >> lgc)] = dq_acc[k];
    }
  }
}

// dq = scale * sum of the splits with keys (0 for an empty sample), cast to T.
template <typename T>
__global__ void __launch_bounds__(kThreads) dq_reduce_kernel(const float* __restrict__ part, T* __restrict__ dq,
                                                             const Seq seq, int64_t R, int Q, int d, int tile,
                                                             int splits, float scale) {
  const int64_t n = R * d;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += step) {
    const int64_t bh = e / d / Q;
    const int64_t b = bh / seq.H;
    const int used = splits_used(locate(seq, b, static_cast<int>(bh - b * seq.H)).len, splits, tile);
    float x = 0.f;
    for (int s = 0; s < used; ++s) x += part[s * n + e];
    dq[e] = from_f<T>(x * scale);
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

// Queries per block: up to 64, and q_block * d <= kTileElems (the accumulator slots).
int q_block_for(int64_t Q, int64_t d) {
  int cap = 64;
  while (cap > 1 && cap * d > kTileElems) cap /= 2;
  return static_cast<int>(std::min<int64_t>(Q, cap));
}
// Keys per tile: the largest power of two <= max_tile with tile * d <= kTileElems (the backward's
// dk / dv slots; the forward's shared tiles) and q_block * tile <= kTileElems (the forward's score
// buffer); at least 8 (0: d too large).
int tile_for(int64_t d, int q_block, int max_tile) {
  int t = max_tile;
  while (t > 8 && (t * d > kTileElems || int64_t{q_block} * t > kTileElems)) t /= 2;
  return t * d <= kTileElems && int64_t{q_block} * t <= kTileElems ? t : 0;
}

// Blocks for a grid-stride kernel over n items of `per_block` items a block.
unsigned stride_grid(int64_t n, int64_t per_block) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(cdiv64(n, per_block), int64_t{1} << 20)));
}

template <typename Kernel, typename Arg>
cudaError_t launch_smem(Kernel kernel, dim3 grid, int smem, cudaStream_t stream, const Arg& arg) {
  int dev = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  if (smem > optin) return cudaErrorInvalidConfiguration;
  if (smem > (48 << 10)) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, kThreads, smem, stream>>>(arg);
  return cudaGetLastError();
}

Seq make_seq(const int64_t* seq, bool jagged, int64_t H, int64_t kv_rows, int64_t d) {
  Seq s;
  s.p = seq;
  s.rows = kv_rows;
  s.H = static_cast<int>(H);
  s.d = static_cast<int>(d);
  s.jagged = jagged;
  return s;
}

// Register slots (per thread) that n work items x lanes need, rounded up to one of the compiled
// counts (`options`, ascending; 0 if none is enough).
int slots_for(int64_t n, std::initializer_list<int> options) {
  const int64_t need = cdiv64(n, kThreads);
  for (const int o : options)
    if (o >= need) return o;
  return 0;
}
int fwd_slots(int q_block, int64_t d) {
  return slots_for((q_block * d) << log2_pow2(group_for(q_block * d)), {1, 2, 4, 8, 16});
}
int bwd_kv_slots(int tile, int64_t d) { return slots_for(tile * d, {4, 8, 16}); }
int bwd_dq_slots(int q_block, int64_t d) {
  return slots_for((q_block * d) << log2_pow2(group_for(q_block * d)), {1, 4, 16});
}

bool plan_ok(const AttentionPlan& p, int64_t B, int64_t H, int64_t Q, int64_t d) {
  return p.tile >= 8 && p.tile <= 256 && p.q_block >= 1 && p.q_block <= 64 && int64_t{p.q_block} * d <= kTileElems &&
         int64_t{p.tile} * d <= kTileElems && int64_t{p.q_block} * p.tile <= kTileElems &&
         p.q_blocks == cdiv64(Q, p.q_block) && p.splits >= 1 &&
         p.splits <= kMaxSplits && B * H * p.q_blocks <= 0x7fffffff && H <= 0x7fffffff && Q <= 0x7fffffff;
}

template <typename T>
cudaError_t launch_fwd(int slots, dim3 grid, int smem, cudaStream_t stream, const FwdArgs& a) {
  switch (slots) {
    case 1: return launch_smem(fwd_kernel<T, 1>, grid, smem, stream, a);
    case 2: return launch_smem(fwd_kernel<T, 2>, grid, smem, stream, a);
    case 4: return launch_smem(fwd_kernel<T, 4>, grid, smem, stream, a);
    case 8: return launch_smem(fwd_kernel<T, 8>, grid, smem, stream, a);
    case 16: return launch_smem(fwd_kernel<T, 16>, grid, smem, stream, a);
  }
  return cudaErrorInvalidValue;
}

template <typename T, int NKV>
cudaError_t launch_bwd_dq(int dq_slots, dim3 grid, int smem, cudaStream_t stream, const BwdArgs& a) {
  switch (dq_slots) {
    case 1: return launch_smem(bwd_kernel<T, NKV, 1>, grid, smem, stream, a);
    case 4: return launch_smem(bwd_kernel<T, NKV, 4>, grid, smem, stream, a);
    case 16: return launch_smem(bwd_kernel<T, NKV, 16>, grid, smem, stream, a);
  }
  return cudaErrorInvalidValue;
}
template <typename T>
cudaError_t launch_bwd(int kv_slots, int dq_slots, dim3 grid, int smem, cudaStream_t stream, const BwdArgs& a) {
  switch (kv_slots) {
    case 4: return launch_bwd_dq<T, 4>(dq_slots, grid, smem, stream, a);
    case 8: return launch_bwd_dq<T, 8>(dq_slots, grid, smem, stream, a);
    case 16: return launch_bwd_dq<T, 16>(dq_slots, grid, smem, stream, a);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

AttentionPlan plan_target_attention(bool backward, int64_t B, int64_t H, int64_t Q, int64_t d, int64_t avg_len,
                                    int sm_count) {
  AttentionPlan p;
  if (B <= 0 || H <= 0 || Q <= 0 || d <= 0 || d > kAttentionMaxHeadDim) return p;
  // The forward takes up to 256 keys a tile (small d: more bytes per pass between barriers); the
  // backward 64 (its P and dS buffers and dk / dv slots grow with the tile).
  p.q_block = q_block_for(Q, d);
  p.tile = tile_for(d, p.q_block, backward ? 64 : 256);
  if (p.tile == 0 || p.q_block < 1) return AttentionPlan{};
  p.q_blocks = static_cast<int>(cdiv64(Q, p.q_block));
  const int64_t BH = B * H;
  // Split the keys while the blocks cannot fill the GPU (4 per SM aimed at), keeping each split at
  // least 4 tiles (and 128 keys) long so that the combine stays small next to the main pass.
  const int64_t blocks = BH * (backward ? 1 : p.q_blocks);
  const int64_t target = 4 * static_cast<int64_t>(std::max(sm_count, 1));
  const int64_t min_split = std::max<int64_t>(4 * p.tile, 128);
  int64_t splits = 1;
  if (blocks < target && avg_len > min_split)
    splits = std::min(cdiv64(target, blocks), cdiv64(avg_len, min_split));
  p.splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(splits, kMaxSplits)));
  const int64_t R = BH * Q;
  if (backward) {
    const BwdLayout lay(p.q_block, p.tile, static_cast<int>(d));
    p.smem_bytes = static_cast<int>(lay.smem_floats(p.q_block, p.tile, static_cast<int>(d)) * sizeof(float));
    p.workspace_floats = R + p.splits * R * d;  // delta, then the dq slices
  } else {
    // the largest of the full and the last (shorter) query block
    int64_t floats = 0;
    for (const int64_t nq : {int64_t{p.q_block}, Q - int64_t{p.q_blocks - 1} * p.q_block}) {
      const FwdLayout lay(static_cast<int>(nq), p.tile, static_cast<int>(d));
      floats = std::max(floats, lay.smem_floats(static_cast<int>(nq), p.tile, static_cast<int>(d)));
    }
    p.smem_bytes = static_cast<int>(floats * sizeof(float));
    p.workspace_floats = p.splits > 1 ? p.splits * R * (d + 2) : 0;
  }
  return p;
}

cudaError_t target_attention_forward(DType dtype, const AttentionPlan& plan, const void* q, const void* k,
                                     const void* v, const int64_t* seq, bool jagged, int64_t B, int64_t H, int64_t Q,
                                     int64_t kv_rows, int64_t d, float scale, void* out, float* lse, float* workspace,
                                     cudaStream_t stream) {
  if (B <= 0 || H <= 0 || Q <= 0 || d <= 0) return cudaSuccess;  // nothing to compute (the caller fills)
  if (!plan_ok(plan, B, H, Q, d) || (plan.splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const int64_t R = B * H * Q;
    FwdArgs a;
    a.q = q;
    a.k = k;
    a.v = v;
    a.out = out;
    a.lse = lse;
    a.part_acc = workspace;
    a.part_m = workspace ? workspace + plan.splits * R * d : nullptr;
    a.part_l = workspace ? a.part_m + plan.splits * R : nullptr;
    a.seq = make_seq(seq, jagged, H, kv_rows, d);
    a.BH = B * H;
    a.Q = static_cast<int>(Q);
    a.d = static_cast<int>(d);
    a.tile = plan.tile;
    a.q_block = plan.q_block;
    a.q_blocks = plan.q_blocks;
    a.splits = plan.splits;
    a.qscale = scale * kLog2e;
    a.vec = d % V == 0 && aligned16(k) && aligned16(v);
    const dim3 grid(static_cast<unsigned>(B * H * plan.q_blocks), static_cast<unsigned>(plan.splits));
    cudaError_t err = launch_fwd<T>(fwd_slots(plan.q_block, d), grid, plan.smem_bytes, stream, a);
    if (err != cudaSuccess || plan.splits == 1) return err;
    combine_kernel<T><<<stride_grid(R, kWarps), kThreads, 0, stream>>>(a.part_acc, a.part_m, a.part_l,
                                                                       static_cast<T*>(out), lse, a.seq, R, a.Q, a.d,
                                                                       plan.tile, plan.splits);
    return cudaGetLastError();
  });
}

cudaError_t target_attention_backward(DType dtype, const AttentionPlan& plan, const void* grad, const void* q,
                                      const void* k, const void* v, const void* out, const float* lse,
                                      const int64_t* seq, bool jagged, int64_t B, int64_t H, int64_t Q,
                                      int64_t kv_rows, int64_t d, float scale, void* dq, void* dk, void* dv,
                                      float* workspace, cudaStream_t stream) {
  if (B <= 0 || H <= 0 || Q <= 0 || d <= 0) return cudaSuccess;  // the caller zero-fills
  if (!plan_ok(plan, B, H, Q, d) || workspace == nullptr) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const int64_t R = B * H * Q;
    float* delta = workspace;
    delta_kernel<T><<<stride_grid(R, kWarps), kThreads, 0, stream>>>(static_cast<const T*>(grad),
                                                                     static_cast<const T*>(out), delta, R,
                                                                     static_cast<int>(d));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    BwdArgs a;
    a.grad = grad;
    a.q = q;
    a.k = k;
    a.v = v;
    a.lse = lse;
    a.delta = delta;
    a.dk = dk;
    a.dv = dv;
    a.dq_part = workspace + R;
    a.seq = make_seq(seq, jagged, H, kv_rows, d);
    a.BH = B * H;
    a.Q = static_cast<int>(Q);
    a.d = static_cast<int>(d);
    a.tile = plan.tile;
    a.q_block = plan.q_block;
    a.q_blocks = plan.q_blocks;
    a.splits = plan.splits;
    a.scale = scale;
    a.vec = d % V == 0 && aligned16(k) && aligned16(v);
    const dim3 grid(static_cast<unsigned>(B * H), static_cast<unsigned>(plan.splits));
    err = launch_bwd<T>(bwd_kv_slots(plan.tile, d), bwd_dq_slots(plan.q_block, d), grid, plan.smem_bytes, stream, a);
    if (err != cudaSuccess) return err;
    dq_reduce_kernel<T><<<stride_grid(R * d, kThreads), kThreads, 0, stream>>>(
        a.dq_part, static_cast<T*>(dq), a.seq, R, a.Q, a.d, plan.tile, plan.splits, scale);
    return cudaGetLastError();
  });
}

}  // namespace rankops::cuda

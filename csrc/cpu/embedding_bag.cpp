// CPU kernels for the embedding-bag family.
//
// Forward: each thread takes a contiguous range of samples and pools its bags table by table
// (pool_bags: one loop per table with the accumulator in registers for D in 8..128). The rows a
// bag gathers are random reads from tables far larger than the caches: the loop prefetches a few
// lookups ahead, across bag boundaries too (one-hot bags have one lookup each), and converts
// fp16/bf16 with AVX2/F16C vector loads.
//
// Backward and fused update: one machinery. The lookups of each table are radix-sorted by row
// (stable, so ties keep their position order), which groups the lookups of every unique row into
// one segment; each segment is reduced by one thread in that fixed order (deterministic, no
// atomics, no dense gradient) and handed to a row functor: "write the dense gradient row" or
// "apply SGD / Adagrad / row-wise Adagrad to this row in place".
//
// Index and offset values are checked in a first pass, before any output or weight is written.
#include "cpu/embedding_bag.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/alloc.h"
#include "cpu/parallel.h"
#include "registration.h"

namespace rankops::cpu {
namespace {

constexpr int kSum = 0, kMean = 1, kMax = 2;
constexpr int kSGD = 0, kAdagrad = 1, kRowwiseAdagrad = 2;

// ---------------------------------------------------------------------------------------------
// row arithmetic in fp32

// acc[0:D] += s * row[0:D]. The generic one serves double (the float dispatch includes it).
template <typename T>
inline void axpy(float* acc, const T* row, float s, int64_t D) {
  for (int64_t d = 0; d < D; ++d) acc[d] += s * static_cast<float>(row[d]);
}

inline void axpy(float* acc, const float* row, float s, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) acc[d] += s * row[d];
}

inline void axpy(float* acc, const c10::BFloat16* row, float s, int64_t D) {
  int64_t d = 0;
#if defined(__AVX2__)
  const __m256 vs = _mm256_set1_ps(s);
  for (; d + 8 <= D; d += 8) {
    // bf16 -> fp32 is the 16 bits placed on top of a zero mantissa tail.
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d));
    const __m256 v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(vs, v, _mm256_loadu_ps(acc + d)));
  }
#endif
  for (; d < D; ++d) acc[d] += s * static_cast<float>(row[d]);
}

inline void axpy(float* acc, const c10::Half* row, float s, int64_t D) {
  int64_t d = 0;
#if defined(__F16C__) && defined(__AVX2__)
  const __m256 vs = _mm256_set1_ps(s);
  for (; d + 8 <= D; d += 8) {
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + d)));
    _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(vs, v, _mm256_loadu_ps(acc + d)));
  }
#endif
  for (; d < D; ++d) acc[d] += s * static_cast<float>(row[d]);
}

template <typename A, typename B>
inline float dot_row(const A* a, const B* b, int64_t D) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < D; ++d) acc += static_cast<float>(a[d]) * static_cast<float>(b[d]);
  return acc;
}

template <typename T>
inline void store_row(T* dst, const float* src, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(src[d]);
}

template <>
inline void store_row(float* dst, const float* src, int64_t D) {
  std::copy(src, src + D, dst);
}

template <typename T>
inline void prefetch_row(const T* row, int64_t bytes) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define RANKOPS_EB_FIXED_D 1
template <typename T>
inline __m256 load8(const T* p);
template <>
inline __m256 load8(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
template <>
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Sum- or mean-pool the bags k0..k1 of one table (their output rows `out_stride` apart) with the
// accumulator in registers (kD/8 ymm), prefetching the row `dist` lookups ahead within
// [.., i_end). Everything that is fixed for the table (dim, mode, per-sample weights or not) is
// decided once here rather than per bag: one-hot bags are little more than a load and a store,
// and per-bag dispatch (and a store through a buffer) took as long as the lookups at D=16.
// fp32 rows are stored straight into the output; fp16/bf16 through an fp32 row and store_row.
// kD columns of rows kStride apart: D = 128 runs as two 64-column passes, since 16 accumulators
// would take every ymm register and spill (the second pass finds the bag's rows in L1).
// Returns false at a bad offset or index (it skips that bag or lookup; the caller then reports
// the exact position).
template <int kD, int kStride, bool kPsw, typename T, typename I>
bool pool_bags(T* out, int64_t out_stride, const T* base, const I* idx, const I* off, const T* psw, int64_t k0,
               int64_t k1, int64_t i_end, int64_t nnz_all, int64_t dist, uint64_t rows, bool mean) {
  constexpr int kV = kD / 8;
  bool ok = true;
  alignas(32) float buf[kStride];
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t i0 = off[k], i1 = off[k + 1];
    T* o = out + (k - k0) * out_stride;
    if (i0 < 0 || i1 < i0 || i1 > nnz_all) {
      ok = false;
      continue;
    }
    const __m256 scale = _mm256_set1_ps(mean && i1 > i0 ? 1.f / static_cast<float>(i1 - i0) : 1.f);
    for (int c = 0; c < kStride; c += kD) {
      __m256 acc[kV];
#pragma GCC unroll 16
      for (int j = 0; j < kV; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t i = i0; i < i1; ++i) {
        if (c == 0 && i + dist < i_end)
          prefetch_row(base + static_cast<int64_t>(idx[i + dist]) * kStride, kStride * sizeof(T));
        const uint64_t v = static_cast<uint64_t>(static_cast<int64_t>(idx[i]));
        if (v >= rows) {  // never taken on valid input
          ok = false;
          continue;
        }
        const T* row = base + static_cast<int64_t>(v) * kStride + c;
        if constexpr (kPsw) {
          const __m256 s = _mm256_set1_ps(static_cast<float>(psw[i]));
#pragma GCC unroll 16
          for (int j = 0; j < kV; ++j) acc[j] = _mm256_fmadd_ps(s, load8(row + 8 * j), acc[j]);
        } else {
#pragma GCC unroll 16
          for (int j = 0; j < kV; ++j) acc[j] = _mm256_add_ps(acc[j], load8(row + 8 * j));
        }
      }
      if (mean) {
#pragma GCC unroll 16
        for (int j = 0; j < kV; ++j) acc[j] = _mm256_mul_ps(acc[j], scale);
      }
      if constexpr (std::is_same_v<T, float>) {
#pragma GCC unroll 16
        for (int j = 0; j < kV; ++j) _mm256_storeu_ps(o + c + 8 * j, acc[j]);
      } else {
#pragma GCC unroll 16
        for (int j = 0; j < kV; ++j) _mm256_store_ps(buf + c + 8 * j, acc[j]);
      }
    }
    if constexpr (!std::is_same_v<T, float>) store_row(o, buf, kStride);
  }
  return ok;
}

// pool_bags for D in {8, 16, 32, 64, 128}; false (nothing done) for other dims.
template <typename T, typename I>
bool pool_bags_fixed(int64_t D, bool& ok, T* out, int64_t out_stride, const T* base, const I* idx, const I* off,
                     const T* psw, int64_t k0, int64_t k1, int64_t i_end, int64_t nnz_all, int64_t dist, uint64_t rows,
                     bool mean) {
  auto run = [&](auto kd, auto stride) {
    constexpr int kD = decltype(kd)::value, kS = decltype(stride)::value;
    ok = psw ? pool_bags<kD, kS, true>(out, out_stride, base, idx, off, psw, k0, k1, i_end, nnz_all, dist, rows, mean)
             : pool_bags<kD, kS, false>(out, out_stride, base, idx, off, psw, k0, k1, i_end, nnz_all, dist, rows, mean);
    return true;
  };
  using std::integral_constant;
  switch (D) {
    case 8: return run(integral_constant<int, 8>{}, integral_constant<int, 8>{});
    case 16: return run(integral_constant<int, 16>{}, integral_constant<int, 16>{});
    case 32: return run(integral_constant<int, 32>{}, integral_constant<int, 32>{});
    case 64: return run(integral_constant<int, 64>{}, integral_constant<int, 64>{});
    case 128: return run(integral_constant<int, 64>{}, integral_constant<int, 128>{});
    default: return false;
  }
}

template <typename T>
constexpr bool kVectorType = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;
#endif

// ---------------------------------------------------------------------------------------------
// value checks (before anything is written)

void check_tables(const int64_t* toff, int64_t T, int64_t R) {
  bool tables_ok = toff[0] == 0 && toff[T] == R;
  for (int64_t t = 0; t < T; ++t) tables_ok = tables_ok && toff[t] <= toff[t + 1];
  TORCH_CHECK_VALUE(tables_ok, "rankops.batched_embedding_bag: table_offsets must rise from 0 to weights.shape[0] = ",
                    R, ", got first ", toff[0], " last ", toff[T]);
}

template <typename I>
void check_values(const int64_t* toff, int64_t T, int64_t R, const I* idx, int64_t nnz, const I* off, int64_t B) {
  const char* op = "rankops.batched_embedding_bag";
  check_tables(toff, T, R);
  const int64_t nb = T * B;
  TORCH_CHECK_VALUE(off[0] == 0, op, ": offsets[0] = ", static_cast<int64_t>(off[0]), " must be 0 (table 0, bag 0)");
  // First decreasing position, found in parallel, reported as the smallest one.
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, nb, 16384, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      if (off[k + 1] < off[k]) {
        int64_t cur = first_bad.load();
        while (k < cur && !first_bad.compare_exchange_weak(cur, k)) {
        }
        return;
      }
  });
  if (first_bad.load() != std::numeric_limits<int64_t>::max()) {
    const int64_t p = first_bad.load();
    TORCH_CHECK_VALUE(false, op, ": offsets decrease at position ", p + 1, ": offsets[", p + 1,
                      "] = ", static_cast<int64_t>(off[p + 1]), " < offsets[", p, "] = ", static_cast<int64_t>(off[p]),
                      " (table ", p / B, ", bag ", p % B, ")");
  }
  TORCH_CHECK_VALUE(off[nb] == nnz, op, ": offsets[-1] = offsets[", nb, "] = ", static_cast<int64_t>(off[nb]),
                    " must equal the number of indices (", nnz, ")");
  // Offsets are sane: every bag's range lies inside indices. Now the indices themselves, table
  // by table (each table's ids are one contiguous range), in parallel chunks of that range.
  for (int64_t t = 0; t < T; ++t) {
    const int64_t rows = toff[t + 1] - toff[t];
    at::parallel_for(off[t * B], off[(t + 1) * B], 32768, [&](int64_t i0, int64_t i1) {
      bool bad = false;
      for (int64_t i = i0; i < i1; ++i) bad |= static_cast<uint64_t>(static_cast<int64_t>(idx[i])) >= static_cast<uint64_t>(rows);
      if (!bad) return;
      for (int64_t i = i0; i < i1; ++i)
        if (static_cast<uint64_t>(static_cast<int64_t>(idx[i])) >= static_cast<uint64_t>(rows)) {
          int64_t cur = first_bad.load();
          while (i < cur && !first_bad.compare_exchange_weak(cur, i)) {
          }
          return;
        }
    });
    if (first_bad.load() != std::numeric_limits<int64_t>::max()) break;
  }
  if (first_bad.load() != std::numeric_limits<int64_t>::max()) {
    const int64_t p = first_bad.load();
    const int64_t k = std::upper_bound(off, off + nb + 1, static_cast<I>(p)) - off - 1;
    const int64_t t = k / B;
    TORCH_CHECK_INDEX(false, op, ": indices[", p, "] = ", static_cast<int64_t>(idx[p]),
                      " is out of range for table ", t, " with ", toff[t + 1] - toff[t], " rows (bag ", k % B,
                      " of table ", t, ")");
  }
}

// ---------------------------------------------------------------------------------------------
// forward

// Returns true when it met a bad offset or index (it then skipped that bag or lookup and read
// nothing out of bounds); the caller then runs check_values for the exact error. Checking inside
// the one parallel pass costs a compare per lookup, where a separate pass cost a parallel region
// per table, which on a busy machine was a good part of the time.
template <typename T, typename I>
bool forward_kernel(const T* w, const int64_t* toff, const I* idx, const I* off, const T* psw, int mode, T* out,
                    int64_t* argmax, int64_t nT, int64_t B, int64_t D, int64_t nnz_all) {
  std::atomic<bool> any_bad{false};
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
  // Prefetch distance in lookups: enough rows in flight to cover DRAM latency, not so many that
  // they are evicted before use. Measured on the 2-core EPYC (D=64, L=20, 100k-row tables, one
  // thread): 16 ahead 91 ms, 32 ahead 70 ms, 64 ahead 140 ms; FBGEMM's TBE 56-66 ms.
  const int64_t dist = row_bytes <= 256 ? 32 : 16;
  // Each thread takes one contiguous range of samples and pools it table by table: ids and
  // offsets are then read sequentially (bags are table-major), and while the threads work on
  // table t only that table's rows are live, so a table that fits in the L2 TLB and the L3 stays
  // there for all its lookups, as in a loop of one embedding_bag per table. Measured at D=16,
  // L=20, 26 tables of 100k rows (6.4 MB each), B=4096, 2 threads: 10 ms, against 30 ms with
  // blocks of 32 samples that visit all 26 tables in turn (166 MB of rows live: a TLB and DRAM
  // miss for nearly every lookup).
  // (A call of a few thousand lookups stays on one thread.)
  const int64_t threads = nnz_all + nT * B < 8192 ? 1 : at::get_num_threads();
  const int64_t kBlock = std::max<int64_t>(1, (B + threads - 1) / threads);
  const int64_t nblocks = (B + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, 1, [&](int64_t q0, int64_t q1) {
    std::vector<float> acc_buf(D);
    float* acc = acc_buf.data();
    bool bad = false;
    // offsets clamped into [0, nnz] wherever they bound a read of idx
    auto at = [&](int64_t k) { return std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(off[k]), 0), nnz_all); };
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b0 = q * kBlock, b1 = std::min(B, b0 + kBlock);
      // The lookups of (t, b0..b1) are the contiguous range [off[t*B+b0], off[t*B+b1]); the row
      // `dist` lookups ahead is prefetched across bag boundaries (one-hot bags hold one), and the
      // first rows of the next table's range one table ahead.
      for (int64_t i = at(b0); i < std::min<int64_t>(at(b1), at(b0) + dist); ++i)
        prefetch_row(w + static_cast<int64_t>(idx[i]) * D, row_bytes);
      for (int64_t t = 0; t < nT; ++t) {
        const T* base = w + toff[t] * D;
        const uint64_t rows = static_cast<uint64_t>(toff[t + 1] - toff[t]);
        const int64_t i_end = at(t * B + b1);
        if (t + 1 < nT) {
          const T* next = w + toff[t + 1] * D;
          const int64_t n0 = at((t + 1) * B + b0), n1 = std::min<int64_t>(at((t + 1) * B + b1), n0 + dist);
          for (int64_t i = n0; i < n1; ++i) prefetch_row(next + static_cast<int64_t>(idx[i]) * D, row_bytes);
        }
#ifdef RANKOPS_EB_FIXED_D
        if constexpr (kVectorType<T>) {
          bool ok = true;
          if (mode != kMax && pool_bags_fixed(D, ok, out + (b0 * nT + t) * D, nT * D, base, idx, off, psw, t * B + b0,
                                              t * B + b1, i_end, nnz_all, dist, rows, mode == kMean)) {
            bad = bad || !ok;
            continue;
          }
        }
#endif
        // max pooling and the other dims: bag by bag
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t k = t * B + b;
          const int64_t i0 = off[k], i1 = off[k + 1];
          T* o = out + (b * nT + t) * D;
          if (i0 < 0 || i1 < i0 || i1 > nnz_all) {
            bad = true;
            continue;
          }
          if (mode == kMax) {
            int64_t* am = argmax + (b * nT + t) * D;
            if (i0 == i1) {
              std::fill(o, o + D, static_cast<T>(0.f));
              std::fill(am, am + D, int64_t{-1});
              continue;
            }
            std::fill(acc, acc + D, -std::numeric_limits<float>::infinity());
            std::fill(am, am + D, i0);
            for (int64_t i = i0; i < i1; ++i) {
              if (i + dist < i_end) prefetch_row(base + static_cast<int64_t>(idx[i + dist]) * D, row_bytes);
              if (static_cast<uint64_t>(static_cast<int64_t>(idx[i])) >= rows) {
                bad = true;
                continue;
              }
              const T* row = base + static_cast<int64_t>(idx[i]) * D;
              for (int64_t d = 0; d < D; ++d) {
                const float v = static_cast<float>(row[d]);
                if (v > acc[d]) {  // strict: the first of equal values wins, as in the reference
                  acc[d] = v;
                  am[d] = i;
                }
              }
            }
            store_row(o, acc, D);
            continue;
          }
          std::fill(acc, acc + D, 0.f);
          for (int64_t i = i0; i < i1; ++i) {
            if (i + dist < i_end) prefetch_row(base + static_cast<int64_t>(idx[i + dist]) * D, row_bytes);
            if (static_cast<uint64_t>(static_cast<int64_t>(idx[i])) >= rows) {
              bad = true;
              continue;
            }
            const float s = psw ? static_cast<float>(psw[i]) : 1.f;
            axpy(acc, base + static_cast<int64_t>(idx[i]) * D, s, D);
          }
          if (mode == kMean && i1 > i0) {
            const float inv = 1.f / static_cast<float>(i1 - i0);
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] *= inv;
          }
          store_row(o, acc, D);
        }
      }
    }
    if (bad) any_bad.store(true);
  });
  return any_bad.load();
}

// Per-sample weights in fp32 (the row reductions accumulate in fp32); undefined without them.
at::Tensor psw_float(const std::optional<at::Tensor>& psw) {
  return psw ? psw->to(at::kFloat).contiguous() : at::Tensor();
}

// ---------------------------------------------------------------------------------------------
// sorted segments: the lookups of each unique row, in position order

struct Segments {
  std::vector<int64_t> perm;  // positions in indices, sorted by (global row, position)
  std::vector<int64_t> row;   // global row of perm[j]
  std::vector<int32_t> bag;   // bag k = t*B + b of each position (unsorted, by position)
};

// Stable LSD radix sort of (key, value) pairs by key < 2^bits, 11 bits a pass.
void radix_sort(std::vector<uint32_t>& key, std::vector<int64_t>& val, int bits) {
  const int64_t n = static_cast<int64_t>(key.size());
  if (n <= 64) {  // insertion sort: stable, and cheaper than histograms for a handful
    for (int64_t i = 1; i < n; ++i) {
      const uint32_t k = key[i];
      const int64_t v = val[i];
      int64_t j = i - 1;
      for (; j >= 0 && key[j] > k; --j) {
        key[j + 1] = key[j];
        val[j + 1] = val[j];
      }
      key[j + 1] = k;
      val[j + 1] = v;
    }
    return;
  }
  constexpr int kBits = 11;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  std::vector<uint32_t> k2(n);
  std::vector<int64_t> v2(n);
  std::vector<int64_t> count(1 << kBits);
  for (int shift = 0; shift < bits; shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++count[(key[i] >> shift) & kMask];
    int64_t sum = 0;
    for (auto& c : count) {
      const int64_t c0 = c;
      c = sum;
      sum += c0;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t dst = count[(key[i] >> shift) & kMask]++;
      k2[dst] = key[i];
      v2[dst] = val[i];
    }
    key.swap(k2);
    val.swap(v2);
  }
}

template <typename I>
Segments sort_lookups(const int64_t* toff, const I* idx, const I* off, int64_t nT, int64_t B) {
  Segments s;
  const int64_t nnz = off[nT * B];
  s.perm.resize(nnz);
  s.row.resize(nnz);
  s.bag.resize(nnz);
  at::parallel_for(0, nT * B, 4096, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t i = off[k]; i < off[k + 1]; ++i) s.bag[i] = static_cast<int32_t>(k);
  });
  // The lookups of table t are contiguous (table-major bags) and its rows come before table
  // t+1's, so sorting each table's range on its own sorts the whole by global row.
  at::parallel_for(0, nT, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = off[t * B], i1 = off[(t + 1) * B], n = i1 - i0;
      if (n == 0) continue;
      const uint64_t rows = static_cast<uint64_t>(toff[t + 1] - toff[t]);
      int bits = 1;
      while (bits < 32 && (uint64_t{1} << bits) < rows) ++bits;
      std::vector<uint32_t> key(n);
      std::vector<int64_t> val(n);
      for (int64_t i = 0; i < n; ++i) {
        key[i] = static_cast<uint32_t>(idx[i0 + i]);
        val[i] = i0 + i;
      }
      radix_sort(key, val, bits);
      for (int64_t i = 0; i < n; ++i) {
        s.perm[i0 + i] = val[i];
        s.row[i0 + i] = toff[t] + key[i];
      }
    }
  });
  return s;
}

// For every unique row r touched: g = sum of its lookups' gradient rows (fp32, position order),
// then fn(r, g). One thread per row, so fn may write row r freely.
template <typename G, typename Fn>
void for_each_row_grad(const Segments& s, const G* grad, const float* psw_scale, const std::vector<float>& bag_scale,
                       int mode, const int64_t* argmax, int64_t nT, int64_t B, int64_t D, Fn fn) {
  const int64_t nnz = static_cast<int64_t>(s.perm.size());
  const int64_t grain = std::max<int64_t>(64, 16384 / std::max<int64_t>(1, D));
  at::parallel_for(0, nnz, grain, [&](int64_t j0, int64_t j1) {
    std::vector<float> g_buf(D);
    float* g = g_buf.data();
    int64_t j = j0;
    while (j > 0 && j < j1 && s.row[j] == s.row[j - 1]) ++j;  // that segment belongs to the previous task
    while (j < j1) {
      const int64_t r = s.row[j];
      std::fill(g, g + D, 0.f);
      for (; j < nnz && s.row[j] == r; ++j) {
        const int64_t p = s.perm[j];
        const int64_t k = s.bag[p];
        const int64_t b = k % B, t = k / B;
        const G* gr = grad + (b * nT + t) * D;
        if (mode == kMax) {
          const int64_t* am = argmax + (b * nT + t) * D;
          for (int64_t d = 0; d < D; ++d)
            if (am[d] == p) g[d] += static_cast<float>(gr[d]);
        } else {
          const float sc = psw_scale ? psw_scale[p] : bag_scale[k];
          axpy(g, gr, sc, D);
        }
      }
      fn(r, g);
    }
  });
}

// p itself when T is (const) float, else null: the fp32-only path's test and pointer in one.
template <typename T>
auto as_fp32(T* p) -> std::conditional_t<std::is_const_v<T>, const float*, float*> {
  if constexpr (std::is_same_v<std::remove_const_t<T>, float>) {
    return p;
  } else {
    return nullptr;
  }
}

// The fp32 dense weight gradient without a sort: gw (zeroed) += scale * grad row, for every lookup.
// Each thread owns one contiguous range of rows and scans every lookup in position order, adding
// those in its range: each row's sum is in position order, as for_each_row_grad's, whatever the
// thread count. The gradient rows are read in order, the scattered rows prefetched.
template <typename I>
void add_rows_in_position_order(float* gw, const float* grad, const float* psw_scale,
                                const std::vector<float>& bag_scale, const int64_t* toff, const I* idx, const I* off,
                                int64_t nT, int64_t B, int64_t R, int64_t D) {
  constexpr int64_t kAhead = 16;  // lookups: the scattered row's cache line is fetched this early
  for_chunks(R, num_chunks(R, 1024), [&](int64_t, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < nT; ++t) {
      if (toff[t + 1] <= r0 || toff[t] >= r1) continue;  // no row of this table is ours
      const int64_t base = toff[t], iend = off[(t + 1) * B];
      for (int64_t b = 0; b < B; ++b) {
        const int64_t k = t * B + b;
        const float* gr = grad + (b * nT + t) * D;
        for (int64_t i = off[k]; i < off[k + 1]; ++i) {
          if (i + kAhead < iend) __builtin_prefetch(gw + (base + static_cast<int64_t>(idx[i + kAhead])) * D, 1);
          const int64_t r = base + static_cast<int64_t>(idx[i]);
          if (r < r0 || r >= r1) continue;
          axpy(gw + r * D, gr, psw_scale ? psw_scale[i] : bag_scale[k], D);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// argument plumbing shared by the entry points

struct Args {
  int64_t nT, B, D, R, nnz;
};

Args check_args(const at::Tensor& w, const at::Tensor& toff, const at::Tensor& idx, const at::Tensor& off,
                const std::optional<at::Tensor>& psw, int64_t mode) {
  const char* op = "rankops.batched_embedding_bag";
  TORCH_CHECK_VALUE(w.dim() == 2, op, ": weights must be [R, D], got ", w.sizes());
  TORCH_CHECK_VALUE(toff.dim() == 1 && toff.numel() >= 2, op, ": table_offsets must be [T+1], T >= 1");
  TORCH_CHECK_VALUE(idx.dim() == 1 && off.dim() == 1, op, ": indices and offsets must be 1-D");
  TORCH_CHECK_TYPE(idx.scalar_type() == off.scalar_type(), op, ": indices and offsets must have one dtype");
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op, ": unknown mode code ", mode);
  Args a;
  a.nT = toff.numel() - 1;
  TORCH_CHECK_VALUE(off.numel() >= 1 && (off.numel() - 1) % a.nT == 0, op, ": offsets must have T*B+1 entries for T=",
                    a.nT, " tables, got ", off.numel());
  a.B = (off.numel() - 1) / a.nT;
  a.D = w.size(1);
  a.R = w.size(0);
  a.nnz = idx.numel();
  // Bags are numbered in int32 inside the backward (half the memory of the per-lookup bag array).
  TORCH_CHECK_VALUE(a.nT * a.B < std::numeric_limits<int32_t>::max(), op, ": too many bags (T*B = ", a.nT * a.B, ")");
  if (psw) {
    TORCH_CHECK_VALUE(psw->numel() == a.nnz, op, ": per_sample_weights has ", psw->numel(),
                      " entries but indices has ", a.nnz, "; they must match (one weight per lookup)");
    TORCH_CHECK_TYPE(psw->scalar_type() == w.scalar_type(), op, ": per_sample_weights must have the weights' dtype");
  }
  return a;
}

#define RANKOPS_DISPATCH_INDEX(TYPE, ...)                                                        \
  [&] {                                                                                          \
    if ((TYPE) == at::kInt) {                                                                    \
      using index_t = int32_t;                                                                   \
      return __VA_ARGS__();                                                                      \
    } else {                                                                                     \
      TORCH_CHECK_TYPE((TYPE) == at::kLong, "rankops: indices must be int32 or int64, got ", TYPE); \
      using index_t = int64_t;                                                                   \
      return __VA_ARGS__();                                                                      \
    }                                                                                            \
  }()

// Scale of each bag's lookups when there are no per-sample weights: 1, or 1/len for mean.
template <typename I>
std::vector<float> bag_scales(const I* off, int64_t nb, int mode) {
  std::vector<float> s(nb, 1.f);
  if (mode == kMean)
    for (int64_t k = 0; k < nb; ++k) {
      const int64_t n = off[k + 1] - off[k];
      if (n > 0) s[k] = 1.f / static_cast<float>(n);
    }
  return s;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> batched_embedding_bag(const at::Tensor& weights_, const at::Tensor& table_offsets_,
                                                         const at::Tensor& indices_, const at::Tensor& offsets_,
                                                         const std::optional<at::Tensor>& psw_, int64_t mode) {
  const Args a = check_args(weights_, table_offsets_, indices_, offsets_, psw_, mode);
  const auto w = weights_.contiguous();
  const auto toff = table_offsets_.to(at::kLong).contiguous();
  const auto idx = indices_.contiguous();
  const auto off = offsets_.contiguous();
  std::optional<at::Tensor> psw;
  if (psw_) psw = psw_->contiguous();
  auto out = empty_large({a.B, a.nT, a.D}, w.options());
  auto argmax = at::empty({mode == kMax ? a.B * a.nT * a.D : 0}, w.options().dtype(at::kLong));
  if (mode == kMax) argmax = argmax.view({a.B, a.nT, a.D});
  RANKOPS_DISPATCH_INDEX(idx.scalar_type(), [&] {
    const int64_t* tp = toff.data_ptr<int64_t>();
    const index_t* ip = idx.data_ptr<index_t>();
    const index_t* op = off.data_ptr<index_t>();
    check_tables(tp, a.nT, a.R);  // the kernel trusts the table bounds; offsets and ids it checks itself
    bool bad = false;
    if (out.numel() > 0) {
      RANKOPS_DISPATCH_FLOAT(w.scalar_type(), "batched_embedding_bag", [&] {
        bad = forward_kernel(w.data_ptr<scalar_t>(), tp, ip, op, psw ? psw->data_ptr<scalar_t>() : nullptr,
                             static_cast<int>(mode), out.data_ptr<scalar_t>(),
                             mode == kMax ? argmax.data_ptr<int64_t>() : nullptr, a.nT, a.B, a.D, a.nnz);
      });
    }
    // On trouble, or offsets that do not span exactly [0, nnz], the full check names the culprit
    // (and with B = 0 it is the only check).
    if (bad || out.numel() == 0 || op[0] != 0 || op[a.nT * a.B] != a.nnz) check_values(tp, a.nT, a.R, ip, a.nnz, op, a.B);
    TORCH_CHECK(!bad, "rankops.batched_embedding_bag: internal error: the kernel saw a bad offset or index that the "
                "check did not find");
  });
  return {out, argmax};
}

std::tuple<at::Tensor, at::Tensor> batched_embedding_bag_backward(
    const at::Tensor& grad_, const at::Tensor& weights_, const at::Tensor& table_offsets_, const at::Tensor& indices_,
    const at::Tensor& offsets_, const std::optional<at::Tensor>& psw_, int64_t mode, const at::Tensor& argmax_,
    bool need_weight_grad, bool need_psw_grad) {
  const Args a = check_args(weights_, table_offsets_, indices_, offsets_, psw_, mode);
  const auto w = weights_.contiguous();
  const auto grad = grad_.to(w.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == a.B * a.nT * a.D, "rankops.batched_embedding_bag_backward: grad has shape ",
                    grad.sizes(), ", expected [B, T, D] = [", a.B, ", ", a.nT, ", ", a.D, "]");
  const auto toff = table_offsets_.to(at::kLong).contiguous();
  const auto idx = indices_.contiguous();
  const auto off = offsets_.contiguous();
  const auto argmax = argmax_.contiguous();
  at::Tensor gw = need_weight_grad ? empty_large_like(w).zero_() : at::empty({0}, w.options());
  at::Tensor gp = (need_psw_grad && psw_) ? at::empty({a.nnz}, w.options()) : at::empty({0}, w.options());
  RANKOPS_DISPATCH_INDEX(idx.scalar_type(), [&] {
    const index_t* op = off.data_ptr<index_t>();
    const index_t* ip = idx.data_ptr<index_t>();
    const int64_t* tp = toff.data_ptr<int64_t>();
    RANKOPS_DISPATCH_FLOAT(w.scalar_type(), "batched_embedding_bag_backward", [&] {
      const scalar_t* g = grad.data_ptr<scalar_t>();
      if (need_weight_grad && a.nnz > 0) {
        const at::Tensor psw_f = psw_float(psw_);
        const float* pswp = psw_f.defined() ? psw_f.data_ptr<float>() : nullptr;
        const auto scales = bag_scales(op, a.nT * a.B, static_cast<int>(mode));
        scalar_t* gwp = gw.data_ptr<scalar_t>();
        const int64_t D = a.D;
        if (float* gw32 = as_fp32(gwp); gw32 && mode != kMax) {  // fp32 sum / mean: in place, no sort
          add_rows_in_position_order(gw32, as_fp32(g), pswp, scales, tp, ip, op, a.nT, a.B, a.R, D);
        } else {
          const Segments s = sort_lookups(tp, ip, op, a.nT, a.B);
          for_each_row_grad(s, g, pswp, scales, static_cast<int>(mode),
                            mode == kMax ? argmax.data_ptr<int64_t>() : nullptr, a.nT, a.B, D,
                            [&](int64_t r, const float* gr) { store_row(gwp + r * D, gr, D); });
        }
      }
      if (need_psw_grad && psw_ && a.nnz > 0) {
        // d out[b, t] / d psw[i] = weights[row_i]: one dot product per lookup.
        scalar_t* gpp = gp.data_ptr<scalar_t>();
        const scalar_t* wp = w.data_ptr<scalar_t>();
        const int64_t nT = a.nT, B = a.B, D = a.D;
        at::parallel_for(0, nT * B, 1024, [&](int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) {
            const int64_t t = k / B, b = k % B;
            const scalar_t* gr = g + (b * nT + t) * D;
            for (int64_t i = op[k]; i < op[k + 1]; ++i) {
              const scalar_t* row = wp + (tp[t] + static_cast<int64_t>(ip[i])) * D;
              gpp[i] = static_cast<scalar_t>(dot_row(gr, row, D));
            }
          }
        });
      }
    });
  });
  return {gw, gp};
}

void batched_embedding_bag_update(const at::Tensor& weights, const at::Tensor& table_offsets_,
                                  const at::Tensor& indices_, const at::Tensor& offsets_, const at::Tensor& state,
                                  const at::Tensor& grad_, const std::optional<at::Tensor>& psw_, int64_t mode,
                                  const at::Tensor& argmax_, int64_t optimizer, double lr_, double eps_) {
  const char* opname = "rankops.batched_embedding_bag_update";
  const Args a = check_args(weights, table_offsets_, indices_, offsets_, psw_, mode);
  TORCH_CHECK_VALUE(weights.is_contiguous() && state.is_contiguous(), opname,
                    ": weights and state must be contiguous (they are updated in place)");
  TORCH_CHECK_VALUE(optimizer >= 0 && optimizer <= 2, opname, ": unknown optimizer code ", optimizer);
  if (optimizer != kSGD) {
    const bool ok = state.scalar_type() == at::kFloat &&
                    (optimizer == kAdagrad ? state.sizes() == weights.sizes()
                                           : (state.dim() == 1 && state.size(0) == a.R));
    TORCH_CHECK_VALUE(ok, opname, ": optimizer state has dtype ", state.scalar_type(), " and shape ", state.sizes());
  }
  const auto grad = grad_.to(weights.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == a.B * a.nT * a.D, opname, ": grad has shape ", grad.sizes(),
                    ", expected [B, T, D] = [", a.B, ", ", a.nT, ", ", a.D, "]");
  const auto toff = table_offsets_.to(at::kLong).contiguous();
  const auto idx = indices_.contiguous();
  const auto off = offsets_.contiguous();
  const auto argmax = argmax_.contiguous();
  RANKOPS_DISPATCH_INDEX(idx.scalar_type(), [&] {
    const index_t* op = off.data_ptr<index_t>();
    const index_t* ip = idx.data_ptr<index_t>();
    const int64_t* tp = toff.data_ptr<int64_t>();
    // Every check before the first write: a bad batch leaves weights and state as they were.
    check_values(tp, a.nT, a.R, ip, a.nnz, op, a.B);
    if (a.nnz == 0 || a.D == 0) return;
    RANKOPS_DISPATCH_FLOAT(weights.scalar_type(), "batched_embedding_bag_update", [&] {
      const Segments s = sort_lookups(tp, ip, op, a.nT, a.B);
      const at::Tensor psw_f = psw_float(psw_);
      const auto scales = bag_scales(op, a.nT * a.B, static_cast<int>(mode));
      scalar_t* wp = weights.data_ptr<scalar_t>();
      float* sp = optimizer == kSGD ? nullptr : state.data_ptr<float>();
      const int64_t D = a.D;
      const float lr = static_cast<float>(lr_), eps = static_cast<float>(eps_);
      const int64_t* amp = mode == kMax ? argmax.data_ptr<int64_t>() : nullptr;
      const scalar_t* g = grad.data_ptr<scalar_t>();
      const float* pswp = psw_f.defined() ? psw_f.data_ptr<float>() : nullptr;
      const int m = static_cast<int>(mode);
      if (optimizer == kSGD) {
        for_each_row_grad(s, g, pswp, scales, m, amp, a.nT, a.B, D, [&](int64_t r, const float* gr) {
          scalar_t* wr = wp + r * D;
          for (int64_t d = 0; d < D; ++d) wr[d] = static_cast<scalar_t>(static_cast<float>(wr[d]) - lr * gr[d]);
        });
      } else if (optimizer == kAdagrad) {
        for_each_row_grad(s, g, pswp, scales, m, amp, a.nT, a.B, D, [&](int64_t r, const float* gr) {
          scalar_t* wr = wp + r * D;
          float* sr = sp + r * D;
          for (int64_t d = 0; d < D; ++d) {
            sr[d] += gr[d] * gr[d];
            wr[d] = static_cast<scalar_t>(static_cast<float>(wr[d]) - lr * gr[d] / (std::sqrt(sr[d]) + eps));
          }
        });
      } else {
        for_each_row_grad(s, g, pswp, scales, m, amp, a.nT, a.B, D, [&](int64_t r, const float* gr) {
          sp[r] += dot_row(gr, gr, D) / static_cast<float>(D);
          const float step = lr / (std::sqrt(sp[r]) + eps);
          scalar_t* wr = wp + r * D;
          for (int64_t d = 0; d < D; ++d) wr[d] = static_cast<scalar_t>(static_cast<float>(wr[d]) - step * gr[d]);
        });
      }
    });
  });
}

}  // namespace rankops::cpu

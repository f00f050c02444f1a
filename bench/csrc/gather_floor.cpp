// The gather floor of an embedding-bag forward: read every row the lookups name, table by table,
// and nothing else (no pooling per bag, no output rows, no checks). Each table's lookups are
// split evenly over the threads; every thread sums its rows into registers and prefetches `dist`
// lookups ahead. Any forward has to read these rows, so its time is at most as fast as this.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>

namespace {

template <int kD>
void read_rows(const float* w, const int64_t* toff, const int64_t* idx, const int64_t* start, int64_t nT,
               int64_t dist, float* partial) {
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      __m256 total[kD / 8];
      for (int j = 0; j < kD / 8; ++j) total[j] = _mm256_setzero_ps();
      for (int64_t t = 0; t < nT; ++t) {
        const float* base = w + toff[t] * kD;
        const int64_t n = start[t + 1] - start[t];
        const int64_t* ix = idx + start[t];
        const int64_t i0 = n * p / threads, i1 = n * (p + 1) / threads;
        for (int64_t i = i0; i < i1; ++i) {
          if (i + dist < i1) {
            const char* r = reinterpret_cast<const char*>(base + ix[i + dist] * kD);
            for (int o = 0; o < kD * 4; o += 64) __builtin_prefetch(r + o, 0, 3);
          }
          const float* row = base + ix[i] * kD;
          for (int j = 0; j < kD / 8; ++j) total[j] = _mm256_add_ps(total[j], _mm256_loadu_ps(row + 8 * j));
        }
      }
      for (int j = 0; j < kD / 8; ++j) _mm256_storeu_ps(partial + p * kD + 8 * j, total[j]);
    }
  });
}

}  // namespace

// weights [R, D] fp32, table_offsets [T+1], indices [nnz] int64 (table-major), starts [T+1]: where
// each table's lookups begin in indices. Returns [threads, D], the per-thread sums of the rows.
at::Tensor gather_floor(const at::Tensor& weights, const at::Tensor& table_offsets, const at::Tensor& indices,
                        const at::Tensor& starts, int64_t dist) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2, "fp32 [R, D]");
  TORCH_CHECK(indices.scalar_type() == at::kLong && table_offsets.scalar_type() == at::kLong &&
              starts.scalar_type() == at::kLong, "int64 ids and offsets");
  const int64_t D = weights.size(1), nT = table_offsets.numel() - 1;
  auto partial = at::empty({at::get_num_threads(), D}, weights.options());
  auto run = [&](auto kd) {
    read_rows<decltype(kd)::value>(weights.data_ptr<float>(), table_offsets.data_ptr<int64_t>(),
                                   indices.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), nT, dist,
                                   partial.data_ptr<float>());
  };
  switch (D) {
    case 16: run(std::integral_constant<int, 16>{}); break;
    case 64: run(std::integral_constant<int, 64>{}); break;
    case 128: run(std::integral_constant<int, 128>{}); break;
    default: TORCH_CHECK(false, "gather_floor: D in {16, 64, 128}, got ", D);
  }
  return partial;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("gather_floor", &gather_floor); }

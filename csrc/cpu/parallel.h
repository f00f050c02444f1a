// Deterministic chunked parallelism for kernels that reduce over the batch (bias and weight
// gradients): rows are split into at most one contiguous chunk per thread, each chunk writes its
// own partial sums, and the partials are added in chunk order afterwards, so a result does not
// depend on scheduling.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace rankops::cpu {

inline int64_t num_chunks(int64_t rows, int64_t min_rows) {
  const int64_t want = (rows + std::max<int64_t>(1, min_rows) - 1) / std::max<int64_t>(1, min_rows);
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), want));
}

// f(chunk, row_begin, row_end) for each of `chunks` contiguous row ranges.
template <typename F>
void for_chunks(int64_t rows, int64_t chunks, const F& f) {
  const int64_t per = (rows + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = std::min(rows, c * per), r1 = std::min(rows, (c + 1) * per);
      if (r0 < r1) f(c, r0, r1);
    }
  });
}

// Work handed out item by item from a shared counter, to at most one worker ("slot") per thread:
// on a shared machine a statically split range waits for its slowest thread (a core busy with
// another process), while here the other threads take over its items. Which slot gets which item
// varies from run to run, so per-slot partial sums agree only up to rounding.
inline int64_t num_slots(int64_t items) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items)); }

}  // namespace rankops::cpu

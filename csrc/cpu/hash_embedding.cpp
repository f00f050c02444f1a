// Linear probing over keys[S] (S a power of two, empty slots hold INT64_MIN), home slot
// splitmix64(id) & (S - 1): the same probe order as the reference and the Triton kernel.
//
// Inserts run in parallel: a slot is claimed with one compare-and-swap, so two threads that meet
// the same new id agree on its slot (the loser of the swap reads the winner's id and stops
// there), and two different ids never take one slot. Which of two colliding new ids gets the
// home slot depends on scheduling; what the map holds (id -> some slot, one slot per id) does not.
#include "cpu/hash_embedding.h"

#include <ATen/Parallel.h>

#include <cstdint>
#include <limits>

namespace rankops::cpu {
namespace {

constexpr int64_t kEmpty = std::numeric_limits<int64_t>::min();
constexpr int64_t kPrefetch = 16;

inline uint64_t splitmix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

void check(const at::Tensor& keys, const at::Tensor& ids, const char* op) {
  TORCH_CHECK_VALUE(keys.dim() == 1 && keys.scalar_type() == at::kLong && keys.is_contiguous() && keys.is_cpu(), op,
                    ": keys must be a contiguous 1-D int64 CPU tensor");
  const int64_t S = keys.numel();
  TORCH_CHECK_VALUE(S > 0 && (S & (S - 1)) == 0, op, ": the number of slots must be a power of two, got ", S);
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.scalar_type() == at::kLong && ids.is_cpu(), op,
                    ": ids must be a 1-D int64 CPU tensor");
}

template <bool kInsert>
at::Tensor probe(const at::Tensor& keys_t, const at::Tensor& ids_t) {
  const auto ids_c = ids_t.contiguous();
  auto out = at::empty_like(ids_c);
  const int64_t n = ids_c.numel(), S = keys_t.numel();
  const uint64_t mask = static_cast<uint64_t>(S - 1);
  int64_t* keys = keys_t.data_ptr<int64_t>();
  const int64_t* ids = ids_c.data_ptr<int64_t>();
  int64_t* slots = out.data_ptr<int64_t>();
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      // the probes are cache misses into a key array of many MB: ask for the home slot of an id
      // kPrefetch ahead so its line is on the way while this one is probed
      if (i + kPrefetch < end) {
        __builtin_prefetch(keys + (splitmix64(static_cast<uint64_t>(ids[i + kPrefetch])) & mask), kInsert, 1);
      }
      const int64_t id = ids[i];
      uint64_t s = splitmix64(static_cast<uint64_t>(id)) & mask;
      int64_t found = -1;
      for (int64_t p = 0; p < S; ++p, s = (s + 1) & mask) {
        int64_t k = __atomic_load_n(keys + s, __ATOMIC_ACQUIRE);
        if (k == kEmpty) {
          if (!kInsert) break;  // an absent id would sit here: stop looking
          if (__atomic_compare_exchange_n(keys + s, &k, id, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            found = static_cast<int64_t>(s);
            break;
          }
          // lost the race: k now holds the winner's id
        }
        if (k == id) {
          found = static_cast<int64_t>(s);
          break;
        }
      }
      slots[i] = found;
    }
  });
  return out;
}

}  // namespace

at::Tensor hash_insert(at::Tensor keys, const at::Tensor& ids) {
  check(keys, ids, "hash_insert");
  return probe<true>(keys, ids);
}

at::Tensor hash_lookup(const at::Tensor& keys, const at::Tensor& ids) {
  check(keys, ids, "hash_lookup");
  return probe<false>(keys, ids);
}

}  // namespace rankops::cpu

#include "cpu/alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rankops::cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeMinBytes = size_t{4} << 20;  // below this the faults cost little
// Freed blocks are kept for reuse up to this many bytes: a fresh block, even of huge pages, is
// zeroed by the kernel on first touch (a cost eager often escapes: glibc hands back its freed
// blocks below the mmap threshold without faults), and a training step allocates the
// same sizes every time. A block that would exceed the cap is freed. The cap is 1 GiB, or
// RANKOPS_CPU_CACHE_MB (read once; 0 turns the cache off).
size_t cache_cap() {
  static const size_t cap = [] {
    const char* env = std::getenv("RANKOPS_CPU_CACHE_MB");
    return env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20 : size_t{1} << 30;
  }();
  return cap;
}

// The cache: blocks by size (whole huge pages); a block is reused only for that exact size.
struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> blocks;
  size_t bytes = 0;

  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = blocks.find(n);
    if (it == blocks.end()) return nullptr;
    void* p = it->second;
    blocks.erase(it);
    bytes -= n;
    return p;
  }
  bool give(void* p, size_t n) {
    std::lock_guard<std::mutex> lock(mu);
    if (bytes + n > cache_cap()) return false;
    blocks.emplace(n, p);
    bytes += n;
    return true;
  }
};

Cache& cache() {
  static auto* c = new Cache();  // never destroyed: blocks may be freed during static destruction
  return *c;
}

// The profiler's memory timeline (bench/'s peak memory) sees these blocks like torch's own: each
// allocation and free is reported while memory profiling is on, so the block carries its size.
struct Block {
  void* ptr;
  size_t bytes;
  bool reported;
};

void free_huge(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  if (b->reported) {
    c10::reportMemoryUsageToProfiler(b->ptr, -static_cast<int64_t>(b->bytes), 0, 0, c10::Device(c10::DeviceType::CPU));
  }
  if (!cache().give(b->ptr, b->bytes)) std::free(b->ptr);
  delete b;
}

struct HugePageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n < kHugeMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = cache().take(bytes);
    if (p == nullptr) {
      p = std::aligned_alloc(kHugePage, bytes);
      TORCH_CHECK(p != nullptr, "rankops: out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the mapping stays 4 KiB pages
#endif
    }
    const bool report = c10::memoryProfilingEnabled();
    if (report) c10::reportMemoryUsageToProfiler(p, static_cast<int64_t>(bytes), 0, 0, c10::Device(c10::DeviceType::CPU));
    return {p, new Block{p, bytes, report}, &free_huge, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

HugePageAllocator g_allocator;

}  // namespace

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::detail::empty_generic(sizes, &g_allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

}  // namespace rankops::cpu

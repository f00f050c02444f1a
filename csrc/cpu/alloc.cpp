#include "cpu/alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rankops::cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeMinBytes = size_t{4} << 20;  // below this the faults cost little

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
  std::free(b->ptr);
  delete b;
}

struct HugePageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n < kHugeMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, bytes);
    TORCH_CHECK(p != nullptr, "rankops: out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the mapping stays 4 KiB pages
#endif
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

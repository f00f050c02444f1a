// Outputs of many megabytes, backed by transparent huge pages.
//
// torch's CPU allocator hands a large tensor straight to mmap and unmaps it when freed, so every
// call faults its output in anew, one 4 KiB page at a time. Under a hypervisor a fault costs
// about 1.8 us (measured on the 2-core EPYC VM): a fresh [4096, 26, 128] fp32 output took 26 ms
// to write, against 2 ms for a reused one, more than the embedding lookups themselves. Asking for
// huge pages (madvise MADV_HUGEPAGE; THP in "madvise" mode is the common default) makes that one
// fault per 2 MiB: 4.5 ms. Freed blocks are kept (up to 1 GiB, RANKOPS_CPU_CACHE_MB) and reused
// for the same size, as the CUDA caching allocator does, so a repeated call faults nothing at
// all. Small tensors keep torch's allocator.
#pragma once
#include <ATen/ATen.h>

namespace rankops::cpu {

// at::empty(sizes, options) on the CPU; storage of at least kHugeMinBytes comes from huge pages
// where the kernel grants them (a plain mapping where it does not). The storage stays resizable.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

inline at::Tensor empty_large_like(const at::Tensor& t) { return empty_large(t.sizes(), t.options()); }

}  // namespace rankops::cpu

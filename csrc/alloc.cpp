// rankops_C::empty_hugepage: an uninitialised CPU tensor whose storage comes from
// cpu/alloc.h (transparent huge pages from 4 MiB up). EmbeddingBagCollection allocates its
// tables with it: random rows of a table of many MB miss the TLB on almost every lookup with
// 4 KiB pages.
#include <torch/library.h>

#include "cpu/alloc.h"

namespace {
at::Tensor empty_hugepage(c10::IntArrayRef size, c10::ScalarType dtype) {
  return rankops::cpu::empty_large(size, at::TensorOptions().dtype(dtype));
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("empty_hugepage(int[] size, ScalarType dtype) -> Tensor", &empty_hugepage);
}

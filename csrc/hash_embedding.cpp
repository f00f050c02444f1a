// The hash_embedding family's private kernels: schemas and their CPU implementation (the GPU one
// is Triton: rankops/ops/hash_embedding/triton.py).
#include <torch/library.h>

#include "cpu/hash_embedding.h"

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("hash_insert(Tensor(a!) keys, Tensor ids) -> Tensor");
  m.def("hash_lookup(Tensor keys, Tensor ids) -> Tensor");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("hash_insert", &rankops::cpu::hash_insert);
  m.impl("hash_lookup", &rankops::cpu::hash_lookup);
}

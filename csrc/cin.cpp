// The CIN family's private kernels: schemas and their CPU implementations. There is no CUDA
// kernel: on a GPU the Triton kernel serves (rankops/ops/cin/triton.py).
#include <torch/library.h>

#include "cpu/cin.h"
#include "registration.h"

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("cin_layer(Tensor xk, Tensor x0, Tensor weight, Tensor? bias) -> Tensor");
  m.def("cin_layer_backward(Tensor grad, Tensor xk, Tensor x0, Tensor weight) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("cin_layer", &rankops::cpu::cin_layer);
  m.impl("cin_layer_backward", &rankops::cpu::cin_layer_backward);
}

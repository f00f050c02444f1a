// The activation family's private kernels: Dice with batch statistics, schemas and CPU
// implementations. On a GPU the reference (PyTorch) composition serves.
#include <torch/library.h>

#include "cpu/activation.h"

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("dice(Tensor x, Tensor mask, Tensor alpha, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("dice_backward(Tensor grad, Tensor x, Tensor mask, Tensor alpha, Tensor weight, Tensor bias, Tensor mean, "
        "Tensor var, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("dice", &rankops::cpu::dice);
  m.impl("dice_backward", &rankops::cpu::dice_backward);
}

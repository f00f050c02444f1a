// The cross family's private kernels: schemas and their CPU implementations. There are no CUDA
// kernels: on a GPU the Triton GEMM with the fused epilogue serves (rankops/ops/cross/triton.py).
#include <torch/library.h>

#include "cpu/cross.h"
#include "registration.h"

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("cross_layer(Tensor x0, Tensor xl, Tensor weight, Tensor bias, bool save) -> (Tensor, Tensor)");
  m.def("cross_layer_backward(Tensor grad, Tensor x0, Tensor xl, Tensor weight, Tensor p) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_layer_lowrank(Tensor x0, Tensor xl, Tensor u, Tensor v, Tensor bias, bool save) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("cross_layer_lowrank_backward(Tensor grad, Tensor x0, Tensor xl, Tensor u, Tensor v, Tensor t, Tensor p) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_net(Tensor x0, Tensor weight, Tensor bias, bool save) -> (Tensor, Tensor, Tensor)");
  m.def("cross_net_backward(Tensor grad, Tensor x0, Tensor weight, Tensor xs, Tensor ps) -> (Tensor, Tensor, Tensor)");
  m.def("cross_net_v1(Tensor x0, Tensor w, Tensor bias) -> Tensor");
  m.def("cross_net_v1_backward(Tensor grad, Tensor x0, Tensor w, Tensor bias) -> (Tensor, Tensor, Tensor)");
  m.def("cross_net_lowrank(Tensor x0, Tensor u, Tensor v, Tensor bias, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_net_lowrank_backward(Tensor grad, Tensor x0, Tensor u, Tensor v, Tensor xs, Tensor ts, Tensor ps) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_layer_v1(Tensor x0, Tensor xl, Tensor w, Tensor bias) -> Tensor");
  m.def("cross_layer_v1_backward(Tensor grad, Tensor x0, Tensor xl, Tensor w) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("cross_layer", &rankops::cpu::cross_layer);
  m.impl("cross_layer_backward", &rankops::cpu::cross_layer_backward);
  m.impl("cross_layer_lowrank", &rankops::cpu::cross_layer_lowrank);
  m.impl("cross_layer_lowrank_backward", &rankops::cpu::cross_layer_lowrank_backward);
  m.impl("cross_net", &rankops::cpu::cross_net);
  m.impl("cross_net_backward", &rankops::cpu::cross_net_backward);
  m.impl("cross_net_v1", &rankops::cpu::cross_net_v1);
  m.impl("cross_net_v1_backward", &rankops::cpu::cross_net_v1_backward);
  m.impl("cross_net_lowrank", &rankops::cpu::cross_net_lowrank);
  m.impl("cross_net_lowrank_backward", &rankops::cpu::cross_net_lowrank_backward);
  m.impl("cross_layer_v1", &rankops::cpu::cross_layer_v1);
  m.impl("cross_layer_v1_backward", &rankops::cpu::cross_layer_v1_backward);
}

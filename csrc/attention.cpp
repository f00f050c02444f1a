// The attention family's private kernels: schemas, and their CPU and CUDA implementations.
#include <torch/library.h>

#include "cpu/attention.h"
#include "registration.h"

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("target_attention(Tensor q, Tensor k, Tensor v, Tensor lengths, float scale) -> (Tensor, Tensor)");
  m.def(
      "target_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor lengths, Tensor out, Tensor lse, "
      "float scale) -> (Tensor, Tensor, Tensor)");
  m.def("jagged_target_attention(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale) -> (Tensor, Tensor)");
  m.def(
      "jagged_target_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor offsets, Tensor out, "
      "Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "din_attention_inference(Tensor q, Tensor keys, Tensor lengths, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
      "Tensor w_out, Tensor b_out, int act, bool normalize, Tensor alpha1, Tensor alpha2, Tensor mean1, Tensor var1, "
      "Tensor mean2, Tensor var2, float eps) -> Tensor");
  m.def(
      "din_attention_backward(Tensor grad, Tensor q, Tensor keys, Tensor lengths, Tensor w1, Tensor b1, Tensor w2, "
      "Tensor b2, Tensor w_out, Tensor b_out, int act, bool normalize, Tensor alpha1, Tensor alpha2, Tensor mean1, "
      "Tensor var1, Tensor mean2, Tensor var2, float eps) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("target_attention", &rankops::cpu::target_attention);
  m.impl("target_attention_backward", &rankops::cpu::target_attention_backward);
  m.impl("jagged_target_attention", &rankops::cpu::jagged_target_attention);
  m.impl("jagged_target_attention_backward", &rankops::cpu::jagged_target_attention_backward);
  m.impl("din_attention_inference", &rankops::cpu::din_attention_inference);
  m.impl("din_attention_backward", &rankops::cpu::din_attention_backward);
}

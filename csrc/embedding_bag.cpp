// The embedding-bag family's private kernels: schemas, and their CPU and CUDA implementations.
// Codes: mode 0 sum, 1 mean, 2 max; optimizer 0 sgd, 1 adagrad, 2 rowwise_adagrad.
#include <torch/library.h>

#include "cpu/embedding_bag.h"
#include "registration.h"

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def(
      "batched_embedding_bag(Tensor weights, Tensor table_offsets, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int mode) -> (Tensor, Tensor)");
  m.def(
      "batched_embedding_bag_backward(Tensor grad, Tensor weights, Tensor table_offsets, Tensor indices, "
      "Tensor offsets, Tensor? per_sample_weights, int mode, Tensor argmax, bool need_weight_grad, "
      "bool need_psw_grad) -> (Tensor, Tensor)");
  m.def(
      "batched_embedding_bag_update(Tensor(a!) weights, Tensor table_offsets, Tensor indices, Tensor offsets, "
      "Tensor(b!) state, Tensor grad, Tensor? per_sample_weights, int mode, Tensor argmax, int optimizer, "
      "float lr, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("batched_embedding_bag", &rankops::cpu::batched_embedding_bag);
  m.impl("batched_embedding_bag_backward", &rankops::cpu::batched_embedding_bag_backward);
  m.impl("batched_embedding_bag_update", &rankops::cpu::batched_embedding_bag_update);
}

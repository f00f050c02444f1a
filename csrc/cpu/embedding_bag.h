#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace rankops::cpu {
// Layout and codes: see rankops/ops/embedding_bag/reference.py (mode 0 sum, 1 mean, 2 max;
// optimizer 0 sgd, 1 adagrad, 2 rowwise_adagrad).
std::tuple<at::Tensor, at::Tensor> batched_embedding_bag(const at::Tensor& weights, const at::Tensor& table_offsets,
                                                         const at::Tensor& indices, const at::Tensor& offsets,
                                                         const std::optional<at::Tensor>& per_sample_weights,
                                                         int64_t mode);
std::tuple<at::Tensor, at::Tensor> batched_embedding_bag_backward(
    const at::Tensor& grad, const at::Tensor& weights, const at::Tensor& table_offsets, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights, int64_t mode,
    const at::Tensor& argmax, bool need_weight_grad, bool need_psw_grad);
void batched_embedding_bag_update(const at::Tensor& weights, const at::Tensor& table_offsets,
                                  const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& state,
                                  const at::Tensor& grad, const std::optional<at::Tensor>& per_sample_weights,
                                  int64_t mode, const at::Tensor& argmax, int64_t optimizer, double lr, double eps);
}  // namespace rankops::cpu

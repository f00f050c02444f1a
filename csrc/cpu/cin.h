#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace rankops::cpu {
at::Tensor cin_layer(const at::Tensor& xk, const at::Tensor& x0, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cin_layer_backward(const at::Tensor& grad,
                                                                              const at::Tensor& xk,
                                                                              const at::Tensor& x0,
                                                                              const at::Tensor& weight);
}  // namespace rankops::cpu

#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace rankops::cpu {
std::tuple<at::Tensor, at::Tensor, at::Tensor> dice(const at::Tensor& x, const at::Tensor& mask,
                                                    const at::Tensor& alpha, const at::Tensor& weight,
                                                    const at::Tensor& bias, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dice_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mask, const at::Tensor& alpha,
    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& var, double eps);
}  // namespace rankops::cpu

#pragma once
#include <ATen/ATen.h>

namespace rankops::cpu {
at::Tensor fm_interaction(const at::Tensor& x, bool reduce);
at::Tensor fm_interaction_backward(const at::Tensor& grad, const at::Tensor& x, bool reduce);
at::Tensor dot_interaction(const at::Tensor& x, bool self_interaction);
at::Tensor dot_interaction_backward(const at::Tensor& grad, const at::Tensor& x, bool self_interaction);
}  // namespace rankops::cpu

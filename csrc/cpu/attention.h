#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace rankops::cpu {
// Padded: q[B,H,Q,d], k/v[B,H,L,d], lengths[B] int64 -> (out[B,H,Q,d], lse[B,H,Q] fp32).
std::tuple<at::Tensor, at::Tensor> target_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& lengths, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor> target_attention_backward(const at::Tensor& grad, const at::Tensor& q,
                                                                         const at::Tensor& k, const at::Tensor& v,
                                                                         const at::Tensor& lengths,
                                                                         const at::Tensor& out, const at::Tensor& lse,
                                                                         double scale);
// Jagged: k/v[S,H,d] packed, offsets[B+1] int64.
std::tuple<at::Tensor, at::Tensor> jagged_target_attention(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& offsets,
                                                           double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor> jagged_target_attention_backward(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
    const at::Tensor& out, const at::Tensor& lse, double scale);
}  // namespace rankops::cpu

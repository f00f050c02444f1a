#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace rankops::cpu {
std::tuple<at::Tensor, at::Tensor> cross_layer(const at::Tensor& x0, const at::Tensor& xl, const at::Tensor& weight,
                                               const at::Tensor& bias, bool save);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_backward(const at::Tensor& grad,
                                                                                const at::Tensor& x0,
                                                                                const at::Tensor& xl,
                                                                                const at::Tensor& weight,
                                                                                const at::Tensor& p);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_layer_lowrank(const at::Tensor& x0, const at::Tensor& xl,
                                                                   const at::Tensor& u, const at::Tensor& v,
                                                                   const at::Tensor& bias, bool save);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_lowrank_backward(
    const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& xl, const at::Tensor& u, const at::Tensor& v,
    const at::Tensor& t, const at::Tensor& p);
at::Tensor cross_layer_v1(const at::Tensor& x0, const at::Tensor& xl, const at::Tensor& w, const at::Tensor& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_v1_backward(const at::Tensor& grad,
                                                                                   const at::Tensor& x0,
                                                                                   const at::Tensor& xl,
                                                                                   const at::Tensor& w);
int64_t cross_net_ld(int64_t N);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net(const at::Tensor& x0, const at::Tensor& weight,
                                                         const at::Tensor& bias, bool save);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net_backward(const at::Tensor& grad, const at::Tensor& x0,
                                                                  const at::Tensor& weight, const at::Tensor& xs,
                                                                  const at::Tensor& ps);
at::Tensor cross_net_v1(const at::Tensor& x0, const at::Tensor& w, const at::Tensor& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net_v1_backward(const at::Tensor& grad, const at::Tensor& x0,
                                                                     const at::Tensor& w, const at::Tensor& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_net_lowrank(const at::Tensor& x0,
                                                                             const at::Tensor& u,
                                                                             const at::Tensor& v,
                                                                             const at::Tensor& bias, bool save);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_net_lowrank_backward(
    const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& u, const at::Tensor& v, const at::Tensor& xs,
    const at::Tensor& ts, const at::Tensor& ps);
}  // namespace rankops::cpu

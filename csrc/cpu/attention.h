#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

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

namespace rankops::cpu {
// DIN's activation unit + pooling, inference (no autograd): q[B,d], keys[B,L,d], lengths[B] int64;
// w1[H1,4d], b1[H1]; w2[H2,H1], b2[H2] (H2 = 0: one hidden layer); w_out[Hlast], b_out[1];
// act 0 sigmoid / 1 prelu / 2 dice; alphas[Hlast...] per layer (prelu, dice); dice mean/var per layer.
at::Tensor din_attention_inference(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& lengths,
                                   const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                                   const at::Tensor& b2, const at::Tensor& w_out, const at::Tensor& b_out,
                                   int64_t act, bool normalize, const at::Tensor& alpha1, const at::Tensor& alpha2,
                                   const at::Tensor& mean1, const at::Tensor& var1, const at::Tensor& mean2,
                                   const at::Tensor& var2, double eps);
// Its backward: (dq, dkeys, dw1, db1, dw2, db2, dw_out, db_out, dalpha1, dalpha2), each shaped as its
// input (absent parameters: zeros of their empty shape); the Dice statistics are taken as given.
std::vector<at::Tensor> din_attention_backward(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& keys,
                                               const at::Tensor& lengths, const at::Tensor& w1, const at::Tensor& b1,
                                               const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& w_out,
                                               const at::Tensor& b_out, int64_t act, bool normalize,
                                               const at::Tensor& alpha1, const at::Tensor& alpha2,
                                               const at::Tensor& mean1, const at::Tensor& var1,
                                               const at::Tensor& mean2, const at::Tensor& var2, double eps);
}  // namespace rankops::cpu

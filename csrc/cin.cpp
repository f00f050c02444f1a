// The CIN family's private kernels: schemas, and their CPU and CUDA implementations.
#include <torch/library.h>

#include "cpu/cin.h"
#include "registration.h"

#ifdef RANKOPS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/cin.h"
#endif

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("cin_layer(Tensor xk, Tensor x0, Tensor weight, Tensor? bias) -> Tensor");
  m.def("cin_layer_backward(Tensor grad, Tensor xk, Tensor x0, Tensor weight) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("cin_layer", &rankops::cpu::cin_layer);
  m.impl("cin_layer_backward", &rankops::cpu::cin_layer_backward);
}

#ifdef RANKOPS_WITH_CUDA
// CUDA (csrc/cuda/cin.cu): the forward is one kernel; the backward runs that kernel twice, for dxk
// and dx0 (each a CIN layer over G with a permuted weight), and the weight-gradient kernel, whose
// per-split fp32 partials are summed here. db is a plain reduction of G. The kernels take the
// weight zero-padded to whole tiles (a copy of at most a few MB: [Hn, H*M]).
namespace {

using rankops::dtype_code;
namespace rc = rankops::cuda;

void check(const at::Tensor& xk, const at::Tensor& x0, const at::Tensor& w, const char* op) {
  TORCH_CHECK_VALUE(xk.dim() == 3 && x0.dim() == 3 && w.dim() == 3, op, ": xk, x0 and weight must be 3-D");
  TORCH_CHECK_VALUE(x0.size(0) == xk.size(0) && x0.size(2) == xk.size(2) && w.size(1) == xk.size(1) &&
                        w.size(2) == x0.size(1),
                    op, ": shapes do not match: xk ", xk.sizes(), ", x0 ", x0.sizes(), ", weight ", w.sizes());
  TORCH_CHECK_VALUE(xk.is_cuda() && x0.device() == xk.device() && w.device() == xk.device(), op,
                    ": xk, x0 and weight must be on one CUDA device");
  TORCH_CHECK_TYPE(x0.scalar_type() == xk.scalar_type() && w.scalar_type() == xk.scalar_type(), op,
                   ": xk, x0 and weight must have one dtype");
  TORCH_CHECK_VALUE(rc::cin_supported(xk.size(0), xk.size(1), x0.size(1), xk.size(2), w.size(0)), op,
                    ": sizes out of the CUDA kernel's range (B*D and H*M below 2^31): xk ", xk.sizes(), ", x0 ",
                    x0.sizes(), ", weight ", w.sizes());
}

// out[b, n, d] = sum_k w2[n, k] xk[b, h, d] x0[b, m, d] (+ bias) with k = h * M + m, w2 = [N, H*M].
void forward_into(const at::Tensor& xk, const at::Tensor& x0, const at::Tensor& w2, const float* bias,
                  at::Tensor& out) {
  const int64_t B = xk.size(0), H = xk.size(1), D = xk.size(2), M = x0.size(1), N = w2.size(0), K = H * M;
  const auto dt = dtype_code(xk);
  const auto L = rc::cin_forward_weight_layout(dt, N, K);
  auto wp = at::zeros({L.rows, L.cols}, w2.options());
  if (L.transposed) {
    wp.narrow(0, 0, K).narrow(1, 0, N).copy_(w2.t());
  } else {
    wp.narrow(0, 0, N).narrow(1, 0, K).copy_(w2);
  }
  C10_CUDA_CHECK(rc::cin_forward(dt, xk.data_ptr(), x0.data_ptr(), wp.data_ptr(), bias, out.data_ptr(), B, H, M, D,
                                 N, L, at::cuda::getCurrentCUDAStream()));
}

at::Tensor cin_layer_cuda(const at::Tensor& xk_, const at::Tensor& x0_, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias_) {
  check(xk_, x0_, weight, "cin_layer");
  const c10::cuda::CUDAGuard guard(xk_.device());
  const auto xk = xk_.contiguous(), x0 = x0_.contiguous();
  const int64_t B = xk.size(0), H = xk.size(1), D = xk.size(2), M = x0.size(1), N = weight.size(0);
  at::Tensor bias;
  if (bias_) {
    TORCH_CHECK_VALUE(bias_->numel() == N, "cin_layer: bias must have ", N, " elements, got ", bias_->sizes());
    TORCH_CHECK_VALUE(bias_->device() == xk.device(), "cin_layer: bias must be on xk's device");
    bias = bias_->to(at::kFloat).contiguous();
  }
  auto out = at::empty({B, N, D}, xk.options());
  if (out.numel() == 0) return out;
  if (H == 0 || M == 0) {  // an empty sum: only the bias
    out.zero_();
    if (bias.defined()) out.add_(bias.reshape({1, N, 1}));
    return out;
  }
  forward_into(xk, x0, weight.reshape({N, H * M}), bias.defined() ? bias.data_ptr<float>() : nullptr, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cin_layer_backward_cuda(const at::Tensor& grad_,
                                                                                   const at::Tensor& xk_,
                                                                                   const at::Tensor& x0_,
                                                                                   const at::Tensor& weight) {
  check(xk_, x0_, weight, "cin_layer_backward");
  const c10::cuda::CUDAGuard guard(xk_.device());
  const auto xk = xk_.contiguous(), x0 = x0_.contiguous();
  const int64_t B = xk.size(0), H = xk.size(1), D = xk.size(2), M = x0.size(1), N = weight.size(0), K = H * M;
  TORCH_CHECK_VALUE(grad_.device() == xk.device(), "cin_layer_backward: grad must be on xk's device");
  const auto g = grad_.to(xk.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef({B, N, D}), "cin_layer_backward: grad has shape ", g.sizes(),
                    ", expected [", B, ", ", N, ", ", D, "]");
  auto db = g.to(at::kFloat).sum(at::IntArrayRef{0, 2}).to(weight.scalar_type());
  if (B == 0 || D == 0 || K == 0 || N == 0) {
    return {at::zeros_like(xk), at::zeros_like(x0), at::zeros_like(weight, at::MemoryFormat::Contiguous), db};
  }
  auto dxk = at::empty_like(xk), dx0 = at::empty_like(x0);  // xk, x0 contiguous: so are these
  // dxk[b,h,d] = sum_{n,m} W[n,h,m] G[b,n,d] x0[b,m,d]; dx0[b,m,d] = sum_{n,h} W[n,h,m] G[b,n,d] xk[b,h,d]
  forward_into(g, x0, weight.permute({1, 0, 2}).reshape({H, N * M}), nullptr, dxk);
  forward_into(g, xk, weight.permute({2, 0, 1}).reshape({M, N * H}), nullptr, dx0);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto GL = rc::cin_weight_grad_layout(N, K, B, D, sms);
  auto ws = at::empty({GL.splits, GL.rows, GL.cols}, xk.options().dtype(at::kFloat));
  C10_CUDA_CHECK(rc::cin_weight_grad(dtype_code(xk), g.data_ptr(), xk.data_ptr(), x0.data_ptr(), ws.data_ptr<float>(),
                                     B, H, M, D, N, GL, at::cuda::getCurrentCUDAStream()));
  const auto dw2 = GL.splits == 1 ? ws[0] : ws.sum(0);  // a fixed-order reduction: deterministic
  auto dw = dw2.narrow(0, 0, N).narrow(1, 0, K).to(weight.scalar_type()).contiguous().view({N, H, M});
  return {dxk, dx0, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(rankops_C, CUDA, m) {
  m.impl("cin_layer", &cin_layer_cuda);
  m.impl("cin_layer_backward", &cin_layer_backward_cuda);
}
#endif

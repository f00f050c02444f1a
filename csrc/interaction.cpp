// The interaction family's private kernels: schemas, and their CPU and CUDA implementations.
#include <torch/library.h>

#include "cpu/interaction.h"
#include "registration.h"

#ifdef RANKOPS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/interaction.h"
#endif

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("fm_interaction(Tensor x, bool reduce) -> Tensor");
  m.def("fm_interaction_backward(Tensor grad, Tensor x, bool reduce) -> Tensor");
  m.def("dot_interaction(Tensor x, bool self_interaction) -> Tensor");
  m.def("dot_interaction_backward(Tensor grad, Tensor x, bool self_interaction) -> Tensor");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("fm_interaction", &rankops::cpu::fm_interaction);
  m.impl("fm_interaction_backward", &rankops::cpu::fm_interaction_backward);
  m.impl("dot_interaction", &rankops::cpu::dot_interaction);
  m.impl("dot_interaction_backward", &rankops::cpu::dot_interaction_backward);
}

#ifdef RANKOPS_WITH_CUDA
namespace {

using rankops::dtype_code;

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be [B, F, D], got ", x.sizes());
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor");
}

at::Tensor fm_interaction_cuda(const at::Tensor& x_, bool reduce) {
  check_x(x_, "fm_interaction");
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  auto out = at::empty({B, reduce ? 1 : D}, x.options());
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(rankops::cuda::fm_interaction(dtype_code(x), x.data_ptr(), out.data_ptr(), B, F, D, reduce,
                                               at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor fm_interaction_backward_cuda(const at::Tensor& grad_, const at::Tensor& x_, bool reduce) {
  check_x(x_, "fm_interaction_backward");
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto grad = grad_.to(x.scalar_type()).contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  TORCH_CHECK_VALUE(grad.numel() == B * (reduce ? 1 : D), "fm_interaction_backward: grad has shape ", grad.sizes());
  auto gx = at::empty_like(x);
  if (gx.numel() == 0) return gx;
  C10_CUDA_CHECK(rankops::cuda::fm_interaction_backward(dtype_code(x), grad.data_ptr(), x.data_ptr(), gx.data_ptr(), B,
                                                        F, D, reduce, at::cuda::getCurrentCUDAStream()));
  return gx;
}

at::Tensor dot_interaction_cuda(const at::Tensor& x_, bool self_interaction) {
  check_x(x_, "dot_interaction");
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  const int64_t P = self_interaction ? F * (F + 1) / 2 : F * (F - 1) / 2;
  auto out = at::empty({B, P}, x.options());
  if (out.numel() == 0) return out;
  if (D == 0) return out.zero_();
  C10_CUDA_CHECK(rankops::cuda::dot_interaction(dtype_code(x), x.data_ptr(), out.data_ptr(), B, F, D,
                                                self_interaction, at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor dot_interaction_backward_cuda(const at::Tensor& grad_, const at::Tensor& x_, bool self_interaction) {
  check_x(x_, "dot_interaction_backward");
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto grad = grad_.to(x.scalar_type()).contiguous();
  const int64_t B = x.size(0), F = x.size(1), D = x.size(2);
  const int64_t P = self_interaction ? F * (F + 1) / 2 : F * (F - 1) / 2;
  TORCH_CHECK_VALUE(grad.numel() == B * P, "dot_interaction_backward: grad has shape ", grad.sizes());
  auto gx = at::empty_like(x);
  if (gx.numel() == 0) return gx;
  C10_CUDA_CHECK(rankops::cuda::dot_interaction_backward(dtype_code(x), grad.data_ptr(), x.data_ptr(), gx.data_ptr(),
                                                         B, F, D, self_interaction, at::cuda::getCurrentCUDAStream()));
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankops_C, CUDA, m) {
  m.impl("fm_interaction", &fm_interaction_cuda);
  m.impl("fm_interaction_backward", &fm_interaction_backward_cuda);
  m.impl("dot_interaction", &dot_interaction_cuda);
  m.impl("dot_interaction_backward", &dot_interaction_backward_cuda);
}
#endif

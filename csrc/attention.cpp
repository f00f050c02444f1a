// The attention family's private kernels: schemas, and their CPU and CUDA implementations (the CUDA
// ones for target attention, padded and jagged; DIN's activation unit has none).
#include <torch/library.h>

#include "cpu/attention.h"
#include "registration.h"

#ifdef RANKOPS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "cuda/attention.h"
#endif

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("target_attention(Tensor q, Tensor k, Tensor v, Tensor lengths, float scale) -> (Tensor, Tensor)");
  m.def(
      "target_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor lengths, Tensor out, Tensor lse, "
      "float scale) -> (Tensor, Tensor, Tensor)");
  m.def("jagged_target_attention(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale) -> (Tensor, Tensor)");
  m.def(
      "jagged_target_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor offsets, Tensor out, "
      "Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "din_attention_inference(Tensor q, Tensor keys, Tensor lengths, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
      "Tensor w_out, Tensor b_out, int act, bool normalize, Tensor alpha1, Tensor alpha2, Tensor mean1, Tensor var1, "
      "Tensor mean2, Tensor var2, float eps) -> Tensor");
  m.def(
      "din_attention_backward(Tensor grad, Tensor q, Tensor keys, Tensor lengths, Tensor w1, Tensor b1, Tensor w2, "
      "Tensor b2, Tensor w_out, Tensor b_out, int act, bool normalize, Tensor alpha1, Tensor alpha2, Tensor mean1, "
      "Tensor var1, Tensor mean2, Tensor var2, float eps) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("target_attention", &rankops::cpu::target_attention);
  m.impl("target_attention_backward", &rankops::cpu::target_attention_backward);
  m.impl("jagged_target_attention", &rankops::cpu::jagged_target_attention);
  m.impl("jagged_target_attention_backward", &rankops::cpu::jagged_target_attention_backward);
  m.impl("din_attention_inference", &rankops::cpu::din_attention_inference);
  m.impl("din_attention_backward", &rankops::cpu::din_attention_backward);
}

#ifdef RANKOPS_WITH_CUDA
namespace {

using rankops::dtype_code;

// Shapes, dtypes and devices (the Python layer checks them too; the kernels assume them). The
// values of lengths / offsets are validated in Python (one sync there); the kernels clamp them.
void check_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& seq, int64_t kdim,
                const char* op) {
  TORCH_CHECK_VALUE(q.dim() == 4, op, ": q must be [B, H, Q, d], got ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == kdim && k.sizes() == v.sizes(), op, ": k and v must be ", kdim, "-D of one shape, got ",
                    k.sizes(), " and ", v.sizes());
  TORCH_CHECK_VALUE(k.size(-1) == q.size(-1) && k.size(1) == q.size(1), op,
                    ": q and k disagree on heads or head dim: ", q.sizes(), " vs ", k.sizes());
  TORCH_CHECK_VALUE(kdim == 3 || k.size(0) == q.size(0), op, ": q and k disagree on the batch");
  TORCH_CHECK_VALUE(seq.dim() == 1 && seq.size(0) == q.size(0) + (kdim == 3 ? 1 : 0), op,
                    kdim == 3 ? ": offsets must be [B+1]" : ": lengths must be [B]");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
                   ": q, k, v must share a dtype");
  TORCH_CHECK_VALUE(q.is_cuda() && k.device() == q.device() && v.device() == q.device() && seq.device() == q.device(),
                    op, ": q, k, v and the lengths / offsets must be on one CUDA device");
  TORCH_CHECK_VALUE(q.size(3) <= rankops::cuda::kAttentionMaxHeadDim, op, ": the CUDA kernels take head dims up to ",
                    rankops::cuda::kAttentionMaxHeadDim, ", got ", q.size(3), " (use the triton backend)");
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// One body for both layouts: kv_rows is L (padded) or S (jagged); avg_len picks the split count.
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                const at::Tensor& seq_, bool jagged, double scale) {
  const char* op = jagged ? "jagged_target_attention" : "target_attention";
  check_cuda(q_, k_, v_, seq_, jagged ? 3 : 4, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto seq = seq_.to(at::kLong).contiguous();
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), d = q.size(3);
  const int64_t kv_rows = jagged ? k.size(0) : k.size(2);
  auto out = at::empty_like(q);
  auto lse = at::empty({B, H, Q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) {  // as the CPU kernel: nothing to attend with
    lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, lse};
  }
  const int64_t avg_len = jagged ? (B ? kv_rows / B : 0) : kv_rows;
  const auto plan = rankops::cuda::plan_target_attention(false, B, H, Q, d, avg_len, sm_count());
  const auto ws = at::empty({std::max<int64_t>(plan.workspace_floats, 1)}, q.options().dtype(at::kFloat));
  C10_CUDA_CHECK(rankops::cuda::target_attention_forward(
      dtype_code(q), plan, q.data_ptr(), k.data_ptr(), v.data_ptr(), seq.data_ptr<int64_t>(), jagged, B, H, Q, kv_rows,
      d, static_cast<float>(scale), out.data_ptr(), lse.data_ptr<float>(),
      plan.workspace_floats ? ws.data_ptr<float>() : nullptr, at::cuda::getCurrentCUDAStream()));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_, const at::Tensor& q_,
                                                             const at::Tensor& k_, const at::Tensor& v_,
                                                             const at::Tensor& seq_, const at::Tensor& out_,
                                                             const at::Tensor& lse_, bool jagged, double scale) {
  const char* op = jagged ? "jagged_target_attention_backward" : "target_attention_backward";
  check_cuda(q_, k_, v_, seq_, jagged ? 3 : 4, op);
  const c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto seq = seq_.to(at::kLong).contiguous();
  const auto grad = grad_.to(q.scalar_type()).contiguous();
  const auto out = out_.to(q.scalar_type()).contiguous();
  const auto lse = lse_.to(at::kFloat).contiguous();
  TORCH_CHECK_VALUE(grad.sizes() == q.sizes() && out.sizes() == q.sizes(), op, ": grad ", grad.sizes(), " and out ",
                    out.sizes(), " must match q ", q.sizes());
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), d = q.size(3);
  TORCH_CHECK_VALUE(lse.numel() == B * H * Q, op, ": lse has shape ", lse.sizes());
  TORCH_CHECK_VALUE(grad.device() == q.device() && out.device() == q.device() && lse.device() == q.device(), op,
                    ": grad, out and lse must be on q's device");
  const int64_t kv_rows = jagged ? k.size(0) : k.size(2);
  // Every element is written by the kernels: valid key rows with their gradient, padding with 0.
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  if (q.numel() == 0) {  // no queries (or d = 0): no gradient anywhere
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  const int64_t avg_len = jagged ? kv_rows / B : kv_rows;
  const auto plan = rankops::cuda::plan_target_attention(true, B, H, Q, d, avg_len, sm_count());
  const auto ws = at::empty({std::max<int64_t>(plan.workspace_floats, 1)}, q.options().dtype(at::kFloat));
  C10_CUDA_CHECK(rankops::cuda::target_attention_backward(
      dtype_code(q), plan, grad.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
      lse.data_ptr<float>(), seq.data_ptr<int64_t>(), jagged, B, H, Q, kv_rows, d, static_cast<float>(scale),
      dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), ws.data_ptr<float>(), at::cuda::getCurrentCUDAStream()));
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor> target_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         const at::Tensor& lengths, double scale) {
  return forward_cuda(q, k, v, lengths, false, scale);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> target_attention_backward_cuda(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lengths,
    const at::Tensor& out, const at::Tensor& lse, double scale) {
  return backward_cuda(grad, q, k, v, lengths, out, lse, false, scale);
}
std::tuple<at::Tensor, at::Tensor> jagged_target_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                const at::Tensor& v, const at::Tensor& offsets,
                                                                double scale) {
  return forward_cuda(q, k, v, offsets, true, scale);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> jagged_target_attention_backward_cuda(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
    const at::Tensor& out, const at::Tensor& lse, double scale) {
  return backward_cuda(grad, q, k, v, offsets, out, lse, true, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(rankops_C, CUDA, m) {
  m.impl("target_attention", &target_attention_cuda);
  m.impl("target_attention_backward", &target_attention_backward_cuda);
  m.impl("jagged_target_attention", &jagged_target_attention_cuda);
  m.impl("jagged_target_attention_backward", &jagged_target_attention_backward_cuda);
}
#endif

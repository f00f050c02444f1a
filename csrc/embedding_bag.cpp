// The embedding-bag family's private kernels: schemas, and their CPU and CUDA implementations.
// Codes: mode 0 sum, 1 mean, 2 max; optimizer 0 sgd, 1 adagrad, 2 rowwise_adagrad.
#include <torch/library.h>

#include "cpu/embedding_bag.h"
#include "registration.h"

#ifdef RANKOPS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/embedding_bag.h"
#endif

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def(
      "batched_embedding_bag(Tensor weights, Tensor table_offsets, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int mode) -> (Tensor, Tensor)");
  m.def(
      "batched_embedding_bag_backward(Tensor grad, Tensor weights, Tensor table_offsets, Tensor indices, "
      "Tensor offsets, Tensor? per_sample_weights, int mode, Tensor argmax, bool need_weight_grad, "
      "bool need_psw_grad) -> (Tensor, Tensor)");
  m.def(
      "batched_embedding_bag_update(Tensor(a!) weights, Tensor table_offsets, Tensor indices, Tensor offsets, "
      "Tensor(b!) state, Tensor grad, Tensor? per_sample_weights, int mode, Tensor argmax, int optimizer, "
      "float lr, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("batched_embedding_bag", &rankops::cpu::batched_embedding_bag);
  m.impl("batched_embedding_bag_backward", &rankops::cpu::batched_embedding_bag_backward);
  m.impl("batched_embedding_bag_update", &rankops::cpu::batched_embedding_bag_update);
}

#ifdef RANKOPS_WITH_CUDA
namespace {

using rankops::dtype_code;

struct Shape {
  int64_t T, B, D, R, nnz;
};

// Shapes only: on CUDA the index and offset values were checked by the Python op before this
// runs (rankops/ops/embedding_bag: validate_values), as reading them here would sync anyway.
Shape check_cuda(const at::Tensor& w, const at::Tensor& toff, const at::Tensor& idx, const at::Tensor& off,
                 const std::optional<at::Tensor>& psw, int64_t mode) {
  const char* op = "rankops.batched_embedding_bag";
  TORCH_CHECK_VALUE(w.is_cuda() && idx.is_cuda() && off.is_cuda() && toff.is_cuda(), op, ": tensors must be on CUDA");
  TORCH_CHECK_VALUE(w.dim() == 2 && toff.dim() == 1 && toff.numel() >= 2 && idx.dim() == 1 && off.dim() == 1, op,
                    ": bad ranks");
  TORCH_CHECK_TYPE(idx.scalar_type() == off.scalar_type() &&
                       (idx.scalar_type() == at::kInt || idx.scalar_type() == at::kLong),
                   op, ": indices and offsets must both be int32 or both int64");
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op, ": unknown mode code ", mode);
  Shape s{toff.numel() - 1, 0, w.size(1), w.size(0), idx.numel()};
  TORCH_CHECK_VALUE((off.numel() - 1) % s.T == 0, op, ": offsets must have T*B+1 entries");
  s.B = (off.numel() - 1) / s.T;
  if (psw) TORCH_CHECK_VALUE(psw->numel() == s.nnz && psw->scalar_type() == w.scalar_type(), op, ": bad per_sample_weights");
  return s;
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& w_, const at::Tensor& toff_, const at::Tensor& idx_,
                                                const at::Tensor& off_, const std::optional<at::Tensor>& psw_,
                                                int64_t mode) {
  const Shape s = check_cuda(w_, toff_, idx_, off_, psw_, mode);
  const c10::cuda::CUDAGuard guard(w_.device());
  const auto w = w_.contiguous();
  const auto toff = toff_.to(at::kLong).contiguous();
  const auto idx = idx_.contiguous();
  const auto off = off_.contiguous();
  const auto psw = psw_ ? std::optional<at::Tensor>(psw_->contiguous()) : std::nullopt;
  auto out = at::empty({s.B, s.T, s.D}, w.options());
  auto argmax = mode == 2 ? at::empty({s.B, s.T, s.D}, w.options().dtype(at::kLong))
                          : at::empty({0}, w.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, argmax};
  C10_CUDA_CHECK(rankops::cuda::embedding_bag_forward(
      dtype_code(w), idx.scalar_type() == at::kLong, w.data_ptr(), toff.data_ptr<int64_t>(), idx.data_ptr(),
      off.data_ptr(), psw ? psw->data_ptr() : nullptr, static_cast<int>(mode), out.data_ptr(),
      mode == 2 ? argmax.data_ptr<int64_t>() : nullptr, s.T, s.B, s.D, at::cuda::getCurrentCUDAStream()));
  return {out, argmax};
}

// The lookups sorted by global row, as segments: (perm, bag of each position, seg [U+1], rows [U],
// per-lookup scale or undefined).
struct CudaSegments {
  at::Tensor perm, bag, out_rows, seg, rows, scale;
};

CudaSegments make_segments(const at::Tensor& toff, const at::Tensor& idx, const at::Tensor& off,
                           const std::optional<at::Tensor>& psw, int64_t mode, const Shape& s) {
  CudaSegments g;
  const auto off64 = off.to(at::kLong);
  const auto lengths = off64.slice(0, 1) - off64.slice(0, 0, -1);
  g.bag = at::repeat_interleave(at::arange(s.T * s.B, off64.options()), lengths, 0, s.nnz);
  // row of out / grad [B*T, D] of each lookup's bag k = t*B + b: b*T + t (the kernels divide nothing)
  g.out_rows = (at::remainder(g.bag, s.B) * s.T + at::floor_divide(g.bag, s.B)).contiguous();
  const auto rows = toff.index_select(0, at::floor_divide(g.bag, s.B)) + idx.to(at::kLong);
  auto [srows, perm] = at::sort(rows, /*stable=*/true, 0, false);
  g.perm = perm;
  auto [urows, inverse, counts] = at::unique_consecutive(srows, false, true);
  g.rows = urows;
  g.seg = at::zeros({urows.numel() + 1}, off64.options());
  g.seg.slice(0, 1).copy_(at::cumsum(counts, 0));
  if (psw) {
    g.scale = psw->to(at::kFloat).contiguous();
  } else if (mode == 1) {
    g.scale = (1.0 / lengths.to(at::kFloat)).index_select(0, g.bag).contiguous();
  }
  return g;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_, const at::Tensor& w_,
                                                 const at::Tensor& toff_, const at::Tensor& idx_,
                                                 const at::Tensor& off_, const std::optional<at::Tensor>& psw_,
                                                 int64_t mode, const at::Tensor& argmax_, bool need_weight_grad,
                                                 bool need_psw_grad) {
  const Shape s = check_cuda(w_, toff_, idx_, off_, psw_, mode);
  const c10::cuda::CUDAGuard guard(w_.device());
  const auto w = w_.contiguous();
  const auto grad = grad_.to(w.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == s.B * s.T * s.D, "rankops.batched_embedding_bag_backward: grad has shape ",
                    grad.sizes());
  const auto toff = toff_.to(at::kLong).contiguous();
  const auto idx = idx_.contiguous();
  const auto off = off_.contiguous();
  const auto argmax = argmax_.contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor gw = need_weight_grad ? at::zeros_like(w) : at::empty({0}, w.options());
  at::Tensor gp = (need_psw_grad && psw_) ? at::empty({s.nnz}, w.options()) : at::empty({0}, w.options());
  if (s.nnz == 0 || s.D == 0) {
    if (gp.numel()) gp.zero_();
    return {gw, gp};
  }
  if (need_weight_grad) {
    const auto g = make_segments(toff, idx, off, psw_, mode, s);
    C10_CUDA_CHECK(rankops::cuda::embedding_bag_segments(
        dtype_code(w), 0, static_cast<int>(mode), grad.data_ptr(), g.perm.data_ptr<int64_t>(),
        g.out_rows.data_ptr<int64_t>(), g.scale.defined() ? g.scale.data_ptr<float>() : nullptr,
        mode == 2 ? argmax.data_ptr<int64_t>() : nullptr, g.seg.data_ptr<int64_t>(), g.rows.data_ptr<int64_t>(),
        g.rows.numel(), w.data_ptr(), nullptr, gw.data_ptr(), s.D, 0.f, 0.f, stream));
  }
  if (need_psw_grad && psw_) {
    C10_CUDA_CHECK(rankops::cuda::embedding_bag_psw_grad(dtype_code(w), idx.scalar_type() == at::kLong,
                                                         grad.data_ptr(), w.data_ptr(), toff.data_ptr<int64_t>(),
                                                         idx.data_ptr(), off.data_ptr(), gp.data_ptr(), s.T, s.B, s.D,
                                                         stream));
  }
  return {gw, gp};
}

void update_cuda(const at::Tensor& w, const at::Tensor& toff_, const at::Tensor& idx_, const at::Tensor& off_,
                 const at::Tensor& state, const at::Tensor& grad_, const std::optional<at::Tensor>& psw_, int64_t mode,
                 const at::Tensor& argmax_, int64_t optimizer, double lr, double eps) {
  const Shape s = check_cuda(w, toff_, idx_, off_, psw_, mode);
  const c10::cuda::CUDAGuard guard(w.device());
  TORCH_CHECK_VALUE(w.is_contiguous() && state.is_contiguous(),
                    "rankops.batched_embedding_bag_update: weights and state must be contiguous");
  TORCH_CHECK_VALUE(optimizer >= 0 && optimizer <= 2, "rankops.batched_embedding_bag_update: unknown optimizer");
  const auto grad = grad_.to(w.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(grad.numel() == s.B * s.T * s.D, "rankops.batched_embedding_bag_update: grad has shape ",
                    grad.sizes());
  if (s.nnz == 0 || s.D == 0) return;
  const auto toff = toff_.to(at::kLong).contiguous();
  const auto idx = idx_.contiguous();
  const auto off = off_.contiguous();
  const auto argmax = argmax_.contiguous();
  const auto g = make_segments(toff, idx, off, psw_, mode, s);
  C10_CUDA_CHECK(rankops::cuda::embedding_bag_segments(
      dtype_code(w), static_cast<int>(optimizer) + 1, static_cast<int>(mode), grad.data_ptr(),
      g.perm.data_ptr<int64_t>(), g.out_rows.data_ptr<int64_t>(), g.scale.defined() ? g.scale.data_ptr<float>() : nullptr,
      mode == 2 ? argmax.data_ptr<int64_t>() : nullptr, g.seg.data_ptr<int64_t>(), g.rows.data_ptr<int64_t>(),
      g.rows.numel(), w.data_ptr(), optimizer == 0 ? nullptr : state.data_ptr<float>(), nullptr, s.D,
      static_cast<float>(lr), static_cast<float>(eps), at::cuda::getCurrentCUDAStream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(rankops_C, CUDA, m) {
  m.impl("batched_embedding_bag", &forward_cuda);
  m.impl("batched_embedding_bag_backward", &backward_cuda);
  m.impl("batched_embedding_bag_update", &update_cuda);
}
#endif

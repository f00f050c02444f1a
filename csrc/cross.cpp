// The cross family's private kernels: schemas, their CPU implementations, and CUDA ones for the
// full-rank and low-rank layers and stacks (cross_layer, cross_net, cross_layer_lowrank,
// cross_net_lowrank, and their backwards); the v1 ops have none (on a GPU the Triton kernels in
// rankops/ops/cross/triton.py serve them).
#include <torch/library.h>

#include "cpu/cross.h"
#include "registration.h"

#ifdef RANKOPS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/cross.h"
#endif

TORCH_LIBRARY_FRAGMENT(rankops_C, m) {
  m.def("cross_layer(Tensor x0, Tensor xl, Tensor weight, Tensor bias, bool save) -> (Tensor, Tensor)");
  m.def("cross_layer_backward(Tensor grad, Tensor x0, Tensor xl, Tensor weight, Tensor p) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_layer_lowrank(Tensor x0, Tensor xl, Tensor u, Tensor v, Tensor bias, bool save) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("cross_layer_lowrank_backward(Tensor grad, Tensor x0, Tensor xl, Tensor u, Tensor v, Tensor t, Tensor p) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_net(Tensor x0, Tensor weight, Tensor bias, bool save) -> (Tensor, Tensor, Tensor)");
  m.def("cross_net_backward(Tensor grad, Tensor x0, Tensor weight, Tensor xs, Tensor ps) -> (Tensor, Tensor, Tensor)");
  m.def("cross_net_v1(Tensor x0, Tensor w, Tensor bias) -> Tensor");
  m.def("cross_net_v1_backward(Tensor grad, Tensor x0, Tensor w, Tensor bias) -> (Tensor, Tensor, Tensor)");
  m.def("cross_net_lowrank(Tensor x0, Tensor u, Tensor v, Tensor bias, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_net_lowrank_backward(Tensor grad, Tensor x0, Tensor u, Tensor v, Tensor xs, Tensor ts, Tensor ps) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_layer_v1(Tensor x0, Tensor xl, Tensor w, Tensor bias) -> Tensor");
  m.def("cross_layer_v1_backward(Tensor grad, Tensor x0, Tensor xl, Tensor w) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rankops_C, CPU, m) {
  m.impl("cross_layer", &rankops::cpu::cross_layer);
  m.impl("cross_layer_backward", &rankops::cpu::cross_layer_backward);
  m.impl("cross_layer_lowrank", &rankops::cpu::cross_layer_lowrank);
  m.impl("cross_layer_lowrank_backward", &rankops::cpu::cross_layer_lowrank_backward);
  m.impl("cross_net", &rankops::cpu::cross_net);
  m.impl("cross_net_backward", &rankops::cpu::cross_net_backward);
  m.impl("cross_net_v1", &rankops::cpu::cross_net_v1);
  m.impl("cross_net_v1_backward", &rankops::cpu::cross_net_v1_backward);
  m.impl("cross_net_lowrank", &rankops::cpu::cross_net_lowrank);
  m.impl("cross_net_lowrank_backward", &rankops::cpu::cross_net_lowrank_backward);
  m.impl("cross_layer_v1", &rankops::cpu::cross_layer_v1);
  m.impl("cross_layer_v1_backward", &rankops::cpu::cross_layer_v1_backward);
}

#ifdef RANKOPS_WITH_CUDA
// ---------------------------------------------------------------------------------------------
// CUDA: the GEMMs on cuBLASLt, called directly (not through at::mm / at::addmm), because
//   - the compute type is ours: CUBLAS_COMPUTE_32F, so fp32 is IEEE whatever torch's TF32 flags
//     say (at::mm follows torch.backends.cuda.matmul.allow_tf32 / the fp32 precision setting, and
//     cuBLASLt has no math mode that could override the compute type);
//   - the bias goes into the forward GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS) and the residual's
//     gradient is the backward GEMM's beta * C, in place, with no copy through ATen's addmm;
//   - the [B, N] operands keep their own leading dimensions (cross_net's padded rows).
// Row-major C [M, Nc] = A' @ B' is, to cuBLASLt's column-major eyes, C^T [Nc, M] = B'^T @ A'^T,
// so every call passes (B, A) and the layouts of the row-major buffers read as their transposes.
// cuBLASLt has no epilogue that multiplies by another matrix, so out = x0 * p + xl and the
// backward's elementwise terms are passes of ours (csrc/cuda/cross.cu).
namespace {

using rankops::dtype_code;

constexpr int64_t kLtWorkspaceBytes = 32 << 20;  // what torch gives cuBLAS on Hopper; lets split-K through

void lt_check(cublasStatus_t st, const char* what) {
  TORCH_CHECK(st == CUBLAS_STATUS_SUCCESS, "rankops cross (cuda): ", what, " failed: ", cublasLtGetStatusName(st),
              " (", static_cast<int>(st), ")");
}

cudaDataType_t lt_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CUDA_R_32F;
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK_TYPE(false, "rankops cross (cuda): unsupported dtype ", t);
  }
}

// the largest power of two (up to 16) dividing the address, as torch tells cuBLASLt
uint32_t lt_alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 1;
  while (al < 16 && a % (al * 2) == 0) al *= 2;
  return al;
}

struct LtLayout {
  cublasLtMatrixLayout_t h = nullptr;
  LtLayout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld) {
    lt_check(cublasLtMatrixLayoutCreate(&h, t, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld),
             "cublasLtMatrixLayoutCreate");
  }
  ~LtLayout() {
    if (h) cublasLtMatrixLayoutDestroy(h);
  }
  LtLayout(const LtLayout&) = delete;
  LtLayout& operator=(const LtLayout&) = delete;
};

struct LtDesc {
  cublasLtMatmulDesc_t h = nullptr;
  LtDesc() { lt_check(cublasLtMatmulDescCreate(&h, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate"); }
  ~LtDesc() {
    if (h) cublasLtMatmulDescDestroy(h);
  }
  template <typename V>
  void set(cublasLtMatmulDescAttributes_t a, const V& v) {
    lt_check(cublasLtMatmulDescSetAttribute(h, a, &v, sizeof(v)), "cublasLtMatmulDescSetAttribute");
  }
  LtDesc(const LtDesc&) = delete;
  LtDesc& operator=(const LtDesc&) = delete;
};

struct LtPref {
  cublasLtMatmulPreference_t h = nullptr;
  LtPref() { lt_check(cublasLtMatmulPreferenceCreate(&h), "cublasLtMatmulPreferenceCreate"); }
  ~LtPref() {
    if (h) cublasLtMatmulPreferenceDestroy(h);
  }
  template <typename V>
  void set(cublasLtMatmulPreferenceAttributes_t a, const V& v) {
    lt_check(cublasLtMatmulPreferenceSetAttribute(h, a, &v, sizeof(v)), "cublasLtMatmulPreferenceSetAttribute");
  }
  LtPref(const LtPref&) = delete;
  LtPref& operator=(const LtPref&) = delete;
};

// Row-major C [M, Nc] (rows at ldc) = op(A) @ op(B) (+ C when accumulate) (+ bias [Nc] when bias),
// fp32 accumulation, rounded once into C's dtype:
//   op(A) = A [M, K] (rows at lda), or, when ta, A^T for A stored [K, M];
//   op(B) = B [K, Nc] (rows at ldb), or, when tb, B^T for B stored [Nc, K].
// In place when accumulating (C is both cuBLASLt's C and D, one layout). A, B, C and bias share
// the dtype dt.
void lt_gemm(at::ScalarType dt, int64_t M, int64_t Nc, int64_t K, const void* A, int64_t lda, bool ta,
             const void* Bm, int64_t ldb, bool tb, void* C, int64_t ldc, bool accumulate, const void* bias,
             const at::Tensor& workspace, cudaStream_t stream) {
  const cudaDataType_t t = lt_type(dt);
  LtDesc op;
  // cuBLASLt's A is our B: stored column-major as [Nc, K] (ld ldb) when !tb, as [K, Nc] when tb
  const int32_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  op.set(CUBLASLT_MATMUL_DESC_TRANSA, opa);
  op.set(CUBLASLT_MATMUL_DESC_TRANSB, opb);
  if (bias != nullptr) {
    op.set(CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(CUBLASLT_EPILOGUE_BIAS));
    op.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);  // length Nc = the rows of the column-major D
  }
  const LtLayout la(t, tb ? K : Nc, tb ? Nc : K, ldb);
  const LtLayout lb(t, ta ? M : K, ta ? K : M, lda);
  const LtLayout lc(t, Nc, M, ldc);
  LtPref pref;
  const uint64_t ws = static_cast<uint64_t>(workspace.numel());
  pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ws);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, lt_alignment(Bm));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, lt_alignment(A));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, lt_alignment(C));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, lt_alignment(C));
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  lt_check(cublasLtMatmulAlgoGetHeuristic(handle, op.h, la.h, lb.h, lc.h, lc.h, pref.h, 1, &heur, &found),
           "cublasLtMatmulAlgoGetHeuristic");
  TORCH_CHECK(found > 0, "rankops cross (cuda): cuBLASLt found no algorithm for [", M, ", ", K, "] @ [", K, ", ", Nc,
              "] (", dt, ")");
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  lt_check(cublasLtMatmul(handle, op.h, &alpha, Bm, la.h, A, lb.h, &beta, C, lc.h, C, lc.h, &heur.algo,
                          workspace.data_ptr(), ws, stream),
           "cublasLtMatmul");
}

at::Tensor lt_workspace(const at::Tensor& like) { return at::empty({kLtWorkspaceBytes}, like.options().dtype(at::kByte)); }

// The bias in the GEMM's epilogue where torch also trusts it (its addmm takes the cuBLASLt bias
// path for CUDA >= 12.1 only when both dims of the weight, [K, Nc], exceed 1); else the epilogue
// pass adds it.
bool fuse_bias(int64_t Nc, int64_t K) { return Nc > 1 && K > 1; }

void check_cuda(const char* op, std::initializer_list<const at::Tensor*> ts) {
  const auto dev = (*ts.begin())->device();
  for (const at::Tensor* t : ts) {
    TORCH_CHECK_VALUE(t->is_cuda() && t->device() == dev, op, ": every tensor must be on ", dev, ", got one on ",
                      t->device());
    TORCH_CHECK_TYPE(t->scalar_type() == (*ts.begin())->scalar_type(), op, ": every tensor must have x0's dtype ",
                     (*ts.begin())->scalar_type(), ", got ", t->scalar_type());
  }
  TORCH_CHECK_VALUE((*ts.begin())->size(1) <= INT32_MAX, op, ": in_dim too large");
}

std::tuple<at::Tensor, at::Tensor> cross_layer_cuda(const at::Tensor& x0_, const at::Tensor& xl_,
                                                    const at::Tensor& w_, const at::Tensor& b_, bool save) {
  TORCH_CHECK_VALUE(x0_.dim() == 2, "cross_layer: x0 must be 2-D, got ", x0_.sizes());
  const int64_t B = x0_.size(0), N = x0_.size(1);
  TORCH_CHECK_VALUE(xl_.sizes() == x0_.sizes() && w_.sizes() == at::IntArrayRef({N, N}) && b_.dim() == 1 &&
                        b_.numel() == N,
                    "cross_layer: shapes do not match: x0 ", x0_.sizes(), ", xl ", xl_.sizes(), ", weight ",
                    w_.sizes(), ", bias ", b_.sizes());
  check_cuda("cross_layer", {&x0_, &xl_, &w_, &b_});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous(), w = w_.contiguous(), bias = b_.contiguous();
  auto out = at::empty_like(x0, at::MemoryFormat::Contiguous);
  auto p = save ? at::empty_like(out) : x0.new_empty({0});
  if (out.numel() == 0) return {out, p};
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const bool fuse = fuse_bias(N, N);
  auto q = save ? p : out;  // without save the epilogue overwrites the GEMM's output in place
  lt_gemm(dt, B, N, N, xl.data_ptr(), N, false, w.data_ptr(), N, true, q.data_ptr(), N, false,
          fuse ? bias.data_ptr() : nullptr, lt_workspace(x0), stream);
  C10_CUDA_CHECK(rankops::cuda::cross_forward_epilogue(dtype_code(x0), x0.data_ptr(), N, xl.data_ptr(), N,
                                                       q.data_ptr(), N, fuse ? nullptr : bias.data_ptr(),
                                                       save && !fuse, out.data_ptr(), N, B, N, stream));
  return {out, p};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_backward_cuda(const at::Tensor& grad_,
                                                                                     const at::Tensor& x0_,
                                                                                     const at::Tensor& xl_,
                                                                                     const at::Tensor& w_,
                                                                                     const at::Tensor& p_) {
  TORCH_CHECK_VALUE(x0_.dim() == 2, "cross_layer_backward: x0 must be 2-D, got ", x0_.sizes());
  const int64_t B = x0_.size(0), N = x0_.size(1);
  TORCH_CHECK_VALUE(grad_.sizes() == x0_.sizes() && xl_.sizes() == x0_.sizes() && p_.sizes() == x0_.sizes() &&
                        w_.sizes() == at::IntArrayRef({N, N}),
                    "cross_layer_backward: grad ", grad_.sizes(), ", xl ", xl_.sizes(), ", p ", p_.sizes(),
                    " and weight ", w_.sizes(), " do not match x0 ", x0_.sizes());
  const auto g = grad_.to(x0_.scalar_type());
  check_cuda("cross_layer_backward", {&x0_, &xl_, &w_, &p_, &g});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous(), w = w_.contiguous(), p = p_.contiguous();
  const auto gc = g.contiguous();
  auto dx0 = at::empty_like(x0), dxl = at::empty_like(x0), dw = at::empty_like(w);
  auto db = at::empty({N}, w.options());
  if (N == 0) return {dx0, dxl, dw, db};
  if (B == 0) return {dx0, dxl, dw.zero_(), db.zero_()};
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto dp = at::empty_like(x0);
  auto partial = at::empty({rankops::cuda::kCrossPartialRows, N}, x0.options().dtype(at::kFloat));
  // dp = g * x0, dx0 = g * p, dxl = g (the C of the GEMM below), db = column sums of dp
  C10_CUDA_CHECK(rankops::cuda::cross_backward_prologue(
      dtype_code(x0), gc.data_ptr(), N, x0.data_ptr(), N, p.data_ptr(), N, dp.data_ptr(), N, dx0.data_ptr(), N,
      rankops::cuda::Dx0Mode::kStore, dxl.data_ptr(), N, partial.data_ptr<float>(), db.data_ptr(), B, N, stream));
  const auto ws = lt_workspace(x0);
  lt_gemm(dt, B, N, N, dp.data_ptr(), N, false, w.data_ptr(), N, false, dxl.data_ptr(), N, true, nullptr, ws,
          stream);  // dxl = g + dp @ W
  lt_gemm(dt, N, N, B, dp.data_ptr(), N, true, xl.data_ptr(), N, false, dw.data_ptr(), N, false, nullptr, ws,
          stream);  // dW = dp.T @ xl
  return {dx0, dxl, dw, db};
}

// cross_net: the layout of rankops/ops/cross/reference.py (and the CPU kernel): xs [L-1, B, ld]
// holds the inputs of layers 1..L-1, ps [L, B, ld] every p_l, ld = cross_net_ld(N), pads zero.
// The GEMMs write into them straight (their rows at ld: 16-byte aligned rows for cuBLASLt too).
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net_cuda(const at::Tensor& x0_, const at::Tensor& w_,
                                                              const at::Tensor& b_, bool save) {
  TORCH_CHECK_VALUE(x0_.dim() == 2, "cross_net: x0 must be 2-D, got ", x0_.sizes());
  const int64_t B = x0_.size(0), N = x0_.size(1);
  TORCH_CHECK_VALUE(w_.dim() == 3 && w_.size(0) >= 1 && w_.size(1) == N && w_.size(2) == N, "cross_net: weight ",
                    "must be [L, N, N] with L >= 1 and N = x0.size(1) = ", N, ", got ", w_.sizes());
  const int64_t L = w_.size(0), ld = rankops::cpu::cross_net_ld(N);
  TORCH_CHECK_VALUE(b_.dim() == 2 && b_.size(0) == L && b_.size(1) == N, "cross_net: bias must be [L, N] = [", L, ", ",
                    N, "], got ", b_.sizes());
  check_cuda("cross_net", {&x0_, &w_, &b_});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), w = w_.contiguous(), bias = b_.contiguous();
  auto out = at::empty_like(x0, at::MemoryFormat::Contiguous);
  at::Tensor xs, ps, bufs;
  if (save) {
    xs = at::empty({L - 1, B, ld}, x0.options());
    ps = at::empty({L, B, ld}, x0.options());
    if (ld != N) {  // the GEMMs and the epilogue write columns [0, N) only
      xs.narrow(2, N, ld - N).zero_();
      ps.narrow(2, N, ld - N).zero_();
    }
  } else {
    xs = x0.new_empty({0});
    ps = x0.new_empty({0});
    // the layers below the top take turns in two buffers, each output overwriting its own p
    bufs = at::empty({std::min<int64_t>(L - 1, 2), B, ld}, x0.options());
  }
  if (out.numel() == 0) return {out, xs, ps};
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto ws = lt_workspace(x0);
  const bool fuse = fuse_bias(N, N);
  const int64_t elem = x0.element_size();
  const auto* wp = static_cast<const char*>(w.data_ptr());
  const auto* bp = static_cast<const char*>(bias.data_ptr());
  const void* x = x0.data_ptr();  // this layer's input
  int64_t ldx = N;
  for (int64_t l = 0; l < L; ++l) {
    const bool last = l == L - 1;
    void* q;
    int64_t ldq;
    if (save) {
      q = ps[l].data_ptr(), ldq = ld;
    } else if (last) {
      q = out.data_ptr(), ldq = N;  // the epilogue then runs in place on out
    } else {
      q = bufs[l % 2].data_ptr(), ldq = ld;
    }
    void* y = last ? out.data_ptr() : (save ? xs[l].data_ptr() : q);
    const int64_t ldy = last ? N : ld;
    const void* wl = wp + l * N * N * elem;
    const void* bl = bp + l * N * elem;
    lt_gemm(dt, B, N, N, x, ldx, false, wl, N, true, q, ldq, false, fuse ? bl : nullptr, ws, stream);
    C10_CUDA_CHECK(rankops::cuda::cross_forward_epilogue(dtype_code(x0), x0.data_ptr(), N, x, ldx, q, ldq,
                                                         fuse ? nullptr : bl, save && !fuse, y, ldy, B, N, stream));
    x = y, ldx = ldy;
  }
  return {out, xs, ps};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_net_backward_cuda(const at::Tensor& grad_, const at::Tensor& x0_,
                                                                       const at::Tensor& w_, const at::Tensor& xs_,
                                                                       const at::Tensor& ps_) {
  TORCH_CHECK_VALUE(x0_.dim() == 2, "cross_net_backward: x0 must be 2-D, got ", x0_.sizes());
  const int64_t B = x0_.size(0), N = x0_.size(1);
  TORCH_CHECK_VALUE(w_.dim() == 3 && w_.size(0) >= 1 && w_.size(1) == N && w_.size(2) == N, "cross_net_backward: ",
                    "weight must be [L, N, N] with L >= 1 and N = x0.size(1) = ", N, ", got ", w_.sizes());
  const int64_t L = w_.size(0), ld = rankops::cpu::cross_net_ld(N);
  TORCH_CHECK_VALUE(grad_.sizes() == x0_.sizes(), "cross_net_backward: grad ", grad_.sizes(), " must have x0's shape ",
                    x0_.sizes());
  TORCH_CHECK_VALUE(xs_.sizes() == at::IntArrayRef({L - 1, B, ld}) && ps_.sizes() == at::IntArrayRef({L, B, ld}),
                    "cross_net_backward: xs ", xs_.sizes(), " and ps ", ps_.sizes(), " must be [", L - 1, ", ", B,
                    ", ", ld, "] and [", L, ", ", B, ", ", ld, "] (cross_net's saved activations)");
  const auto g = grad_.to(x0_.scalar_type());
  check_cuda("cross_net_backward", {&x0_, &w_, &xs_, &ps_, &g});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), w = w_.contiguous(), xs = xs_.contiguous(), ps = ps_.contiguous();
  const auto gc = g.contiguous();
  auto dx0 = at::empty_like(x0), dw = at::empty_like(w);
  auto db = at::empty({L, N}, w.options());
  if (N == 0) return {dx0, dw, db};
  if (B == 0) return {dx0, dw.zero_(), db.zero_()};
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto ws = lt_workspace(x0);
  auto G = at::empty({B, ld}, x0.options());   // the gradient flowing down the stack
  auto dp = at::empty({B, ld}, x0.options());
  auto acc = at::empty({B, N}, x0.options().dtype(at::kFloat));  // dx0's Hadamard terms, summed in fp32
  auto partial = at::empty({rankops::cuda::kCrossPartialRows, N}, x0.options().dtype(at::kFloat));
  const int64_t elem = x0.element_size();
  const auto* wp = static_cast<const char*>(w.data_ptr());
  auto* dwp = static_cast<char*>(dw.data_ptr());
  auto* dbp = static_cast<char*>(db.data_ptr());
  for (int64_t l = L - 1; l >= 0; --l) {
    const bool top = l == L - 1;
    // dp = g * x0, acc (+)= g * p_l, db_l; the top layer also copies grad into G
    C10_CUDA_CHECK(rankops::cuda::cross_backward_prologue(
        dtype_code(x0), top ? gc.data_ptr() : G.data_ptr(), top ? N : ld, x0.data_ptr(), N, ps[l].data_ptr(), ld,
        dp.data_ptr(), ld, acc.data_ptr(), N, top ? rankops::cuda::Dx0Mode::kInit : rankops::cuda::Dx0Mode::kAdd,
        top ? G.data_ptr() : nullptr, ld, partial.data_ptr<float>(), dbp + l * N * elem, B, N, stream));
    const void* xl = l == 0 ? x0.data_ptr() : xs[l - 1].data_ptr();
    const int64_t ldxl = l == 0 ? N : ld;
    lt_gemm(dt, N, N, B, dp.data_ptr(), ld, true, xl, ldxl, false, dwp + l * N * N * elem, N, false, nullptr, ws,
            stream);  // dW_l = dp.T @ x_l
    lt_gemm(dt, B, N, N, dp.data_ptr(), ld, false, wp + l * N * N * elem, N, false, G.data_ptr(), ld, true, nullptr,
            ws, stream);  // G = g + dp @ W_l: the gradient of this layer's input
  }
  // x_0 is x0: dx0 = the Hadamard terms + the gradient through the bottom layer's input
  C10_CUDA_CHECK(rankops::cuda::cross_finish_dx0(dtype_code(x0), acc.data_ptr<float>(), G.data_ptr(), ld,
                                                 dx0.data_ptr(), B, N, stream));
  return {dx0, dw, db};
}

// ---------------------------------------------------------------------------------------------
// Low rank: the same passes around two GEMMs each way, t = xl @ v.T [B, r] and p = t @ u.T + b;
// backward du = dp.T @ t, dt = dp @ u, dv = dt.T @ xl, dxl = g + dt @ v (dt rounded to the dtype
// once, as on the CPU). The stack's saved activations are unpadded, as in the reference:
// xs [L-1, B, N], ts [L, B, r], ps [L, B, N].

void check_lowrank(const char* op, const at::Tensor& x0, const at::Tensor& u, const at::Tensor& v, int64_t udim) {
  TORCH_CHECK_VALUE(x0.dim() == 2, op, ": x0 must be 2-D, got ", x0.sizes());
  const int64_t N = x0.size(1);
  const bool ok = udim == 2 ? (u.dim() == 2 && v.dim() == 2 && u.size(0) == N && v.size(1) == N &&
                               u.size(1) == v.size(0) && u.size(1) >= 1)
                            : (u.dim() == 3 && v.dim() == 3 && u.size(0) >= 1 && v.size(0) == u.size(0) &&
                               u.size(1) == N && v.size(2) == N && v.size(1) == u.size(2) && u.size(2) >= 1);
  TORCH_CHECK_VALUE(ok, op, ": shapes do not match: x0 ", x0.sizes(), ", u ", u.sizes(), ", v ", v.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_layer_lowrank_cuda(const at::Tensor& x0_, const at::Tensor& xl_,
                                                                        const at::Tensor& u_, const at::Tensor& v_,
                                                                        const at::Tensor& b_, bool save) {
  check_lowrank("cross_layer_lowrank", x0_, u_, v_, 2);
  const int64_t B = x0_.size(0), N = x0_.size(1), r = u_.size(1);
  TORCH_CHECK_VALUE(xl_.sizes() == x0_.sizes() && b_.dim() == 1 && b_.numel() == N, "cross_layer_lowrank: xl ",
                    xl_.sizes(), " and bias ", b_.sizes(), " do not match x0 ", x0_.sizes());
  check_cuda("cross_layer_lowrank", {&x0_, &xl_, &u_, &v_, &b_});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  const auto bias = b_.contiguous();
  auto out = at::empty_like(x0, at::MemoryFormat::Contiguous);
  auto t = at::empty({B, r}, x0.options());
  auto p = save ? at::empty_like(out) : x0.new_empty({0});
  if (out.numel() == 0) {
    if (!save) return {out, x0.new_empty({0}), x0.new_empty({0})};
    return {out, t.zero_(), p};  // N = 0: t = xl @ v.T is zero
  }
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto ws = lt_workspace(x0);
  const bool fuse = fuse_bias(N, r);
  auto q = save ? p : out;
  lt_gemm(dt, B, r, N, xl.data_ptr(), N, false, v.data_ptr(), N, true, t.data_ptr(), r, false, nullptr, ws,
          stream);  // t = xl @ v.T
  lt_gemm(dt, B, N, r, t.data_ptr(), r, false, u.data_ptr(), r, true, q.data_ptr(), N, false,
          fuse ? bias.data_ptr() : nullptr, ws, stream);  // p = t @ u.T (+ b)
  C10_CUDA_CHECK(rankops::cuda::cross_forward_epilogue(dtype_code(x0), x0.data_ptr(), N, xl.data_ptr(), N,
                                                       q.data_ptr(), N, fuse ? nullptr : bias.data_ptr(),
                                                       save && !fuse, out.data_ptr(), N, B, N, stream));
  if (!save) return {out, x0.new_empty({0}), x0.new_empty({0})};
  return {out, t, p};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_layer_lowrank_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& x0_, const at::Tensor& xl_, const at::Tensor& u_, const at::Tensor& v_,
    const at::Tensor& t_, const at::Tensor& p_) {
  check_lowrank("cross_layer_lowrank_backward", x0_, u_, v_, 2);
  const int64_t B = x0_.size(0), N = x0_.size(1), r = u_.size(1);
  TORCH_CHECK_VALUE(grad_.sizes() == x0_.sizes() && xl_.sizes() == x0_.sizes() && p_.sizes() == x0_.sizes() &&
                        t_.sizes() == at::IntArrayRef({B, r}),
                    "cross_layer_lowrank_backward: grad ", grad_.sizes(), ", xl ", xl_.sizes(), ", t ", t_.sizes(),
                    " and p ", p_.sizes(), " do not match x0 ", x0_.sizes());
  const auto g = grad_.to(x0_.scalar_type());
  check_cuda("cross_layer_lowrank_backward", {&x0_, &xl_, &u_, &v_, &t_, &p_, &g});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), xl = xl_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  const auto t = t_.contiguous(), p = p_.contiguous(), gc = g.contiguous();
  auto dx0 = at::empty_like(x0), dxl = at::empty_like(x0), du = at::empty_like(u), dv = at::empty_like(v);
  auto db = at::empty({N}, u.options());
  if (N == 0) return {dx0, dxl, du, dv, db};
  if (B == 0) return {dx0, dxl, du.zero_(), dv.zero_(), db.zero_()};
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto ws = lt_workspace(x0);
  auto dp = at::empty_like(x0);
  auto dtb = at::empty({B, r}, x0.options());
  auto partial = at::empty({rankops::cuda::kCrossPartialRows, N}, x0.options().dtype(at::kFloat));
  C10_CUDA_CHECK(rankops::cuda::cross_backward_prologue(
      dtype_code(x0), gc.data_ptr(), N, x0.data_ptr(), N, p.data_ptr(), N, dp.data_ptr(), N, dx0.data_ptr(), N,
      rankops::cuda::Dx0Mode::kStore, dxl.data_ptr(), N, partial.data_ptr<float>(), db.data_ptr(), B, N, stream));
  lt_gemm(dt, N, r, B, dp.data_ptr(), N, true, t.data_ptr(), r, false, du.data_ptr(), r, false, nullptr, ws,
          stream);  // du = dp.T @ t
  lt_gemm(dt, B, r, N, dp.data_ptr(), N, false, u.data_ptr(), r, false, dtb.data_ptr(), r, false, nullptr, ws,
          stream);  // dt = dp @ u
  lt_gemm(dt, r, N, B, dtb.data_ptr(), r, true, xl.data_ptr(), N, false, dv.data_ptr(), N, false, nullptr, ws,
          stream);  // dv = dt.T @ xl
  lt_gemm(dt, B, N, r, dtb.data_ptr(), r, false, v.data_ptr(), N, false, dxl.data_ptr(), N, true, nullptr, ws,
          stream);  // dxl = g + dt @ v
  return {dx0, dxl, du, dv, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_net_lowrank_cuda(const at::Tensor& x0_,
                                                                                  const at::Tensor& u_,
                                                                                  const at::Tensor& v_,
                                                                                  const at::Tensor& b_, bool save) {
  check_lowrank("cross_net_lowrank", x0_, u_, v_, 3);
  const int64_t B = x0_.size(0), N = x0_.size(1), L = u_.size(0), r = u_.size(2);
  TORCH_CHECK_VALUE(b_.dim() == 2 && b_.size(0) == L && b_.size(1) == N, "cross_net_lowrank: bias must be [L, N] = [",
                    L, ", ", N, "], got ", b_.sizes());
  check_cuda("cross_net_lowrank", {&x0_, &u_, &v_, &b_});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), u = u_.contiguous(), v = v_.contiguous(), bias = b_.contiguous();
  auto out = at::empty_like(x0, at::MemoryFormat::Contiguous);
  at::Tensor xs, ts, ps, tbuf, bufs;
  if (save) {
    xs = at::empty({L - 1, B, N}, x0.options());
    ts = at::empty({L, B, r}, x0.options());
    ps = at::empty({L, B, N}, x0.options());
  } else {
    tbuf = at::empty({B, r}, x0.options());
    bufs = at::empty({std::min<int64_t>(L - 1, 2), B, N}, x0.options());
  }
  auto result = [&]() -> std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> {
    if (!save) return {out, x0.new_empty({0}), x0.new_empty({0}), x0.new_empty({0})};
    return {out, xs, ts, ps};
  };
  if (out.numel() == 0) {
    if (save) ts.zero_();  // N = 0: every t is zero
    return result();
  }
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto ws = lt_workspace(x0);
  const bool fuse = fuse_bias(N, r);
  const int64_t elem = x0.element_size();
  const auto* up = static_cast<const char*>(u.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  const auto* bp = static_cast<const char*>(bias.data_ptr());
  const void* x = x0.data_ptr();  // this layer's input, [B, N] contiguous
  for (int64_t l = 0; l < L; ++l) {
    const bool last = l == L - 1;
    void* t = save ? ts[l].data_ptr() : tbuf.data_ptr();
    void* q = save ? ps[l].data_ptr() : (last ? out.data_ptr() : bufs[l % 2].data_ptr());
    void* y = last ? out.data_ptr() : (save ? xs[l].data_ptr() : q);
    const void* ul = up + l * N * r * elem;
    const void* vl = vp + l * r * N * elem;
    const void* bl = bp + l * N * elem;
    lt_gemm(dt, B, r, N, x, N, false, vl, N, true, t, r, false, nullptr, ws, stream);  // t = x @ v_l.T
    lt_gemm(dt, B, N, r, t, r, false, ul, r, true, q, N, false, fuse ? bl : nullptr, ws, stream);  // p = t @ u_l.T + b
    C10_CUDA_CHECK(rankops::cuda::cross_forward_epilogue(dtype_code(x0), x0.data_ptr(), N, x, N, q, N,
                                                         fuse ? nullptr : bl, save && !fuse, y, N, B, N, stream));
    x = y;
  }
  return result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_net_lowrank_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& x0_, const at::Tensor& u_, const at::Tensor& v_, const at::Tensor& xs_,
    const at::Tensor& ts_, const at::Tensor& ps_) {
  check_lowrank("cross_net_lowrank_backward", x0_, u_, v_, 3);
  const int64_t B = x0_.size(0), N = x0_.size(1), L = u_.size(0), r = u_.size(2);
  TORCH_CHECK_VALUE(grad_.sizes() == x0_.sizes() && xs_.sizes() == at::IntArrayRef({L - 1, B, N}) &&
                        ts_.sizes() == at::IntArrayRef({L, B, r}) && ps_.sizes() == at::IntArrayRef({L, B, N}),
                    "cross_net_lowrank_backward: grad ", grad_.sizes(), ", xs ", xs_.sizes(), ", ts ", ts_.sizes(),
                    " and ps ", ps_.sizes(), " are not cross_net_lowrank's saved activations for x0 ", x0_.sizes());
  const auto g = grad_.to(x0_.scalar_type());
  check_cuda("cross_net_lowrank_backward", {&x0_, &u_, &v_, &xs_, &ts_, &ps_, &g});
  const c10::cuda::CUDAGuard guard(x0_.device());
  const auto x0 = x0_.contiguous(), u = u_.contiguous(), v = v_.contiguous();
  const auto xs = xs_.contiguous(), ts = ts_.contiguous(), ps = ps_.contiguous(), gc = g.contiguous();
  auto dx0 = at::empty_like(x0), du = at::empty_like(u), dv = at::empty_like(v);
  auto db = at::empty({L, N}, u.options());
  if (N == 0) return {dx0, du, dv, db};
  if (B == 0) return {dx0, du.zero_(), dv.zero_(), db.zero_()};
  const auto dt = x0.scalar_type();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto ws = lt_workspace(x0);
  auto G = at::empty_like(x0);  // the gradient flowing down the stack
  auto dp = at::empty_like(x0);
  auto dtb = at::empty({B, r}, x0.options());
  auto acc = at::empty({B, N}, x0.options().dtype(at::kFloat));
  auto partial = at::empty({rankops::cuda::kCrossPartialRows, N}, x0.options().dtype(at::kFloat));
  const int64_t elem = x0.element_size();
  const auto* up = static_cast<const char*>(u.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  auto* dup = static_cast<char*>(du.data_ptr());
  auto* dvp = static_cast<char*>(dv.data_ptr());
  auto* dbp = static_cast<char*>(db.data_ptr());
  for (int64_t l = L - 1; l >= 0; --l) {
    const bool top = l == L - 1;
    C10_CUDA_CHECK(rankops::cuda::cross_backward_prologue(
        dtype_code(x0), top ? gc.data_ptr() : G.data_ptr(), N, x0.data_ptr(), N, ps[l].data_ptr(), N, dp.data_ptr(),
        N, acc.data_ptr(), N, top ? rankops::cuda::Dx0Mode::kInit : rankops::cuda::Dx0Mode::kAdd,
        top ? G.data_ptr() : nullptr, N, partial.data_ptr<float>(), dbp + l * N * elem, B, N, stream));
    const void* xl = l == 0 ? x0.data_ptr() : xs[l - 1].data_ptr();
    lt_gemm(dt, N, r, B, dp.data_ptr(), N, true, ts[l].data_ptr(), r, false, dup + l * N * r * elem, r, false,
            nullptr, ws, stream);  // du_l = dp.T @ t_l
    lt_gemm(dt, B, r, N, dp.data_ptr(), N, false, up + l * N * r * elem, r, false, dtb.data_ptr(), r, false, nullptr,
            ws, stream);  // dt = dp @ u_l
    lt_gemm(dt, r, N, B, dtb.data_ptr(), r, true, xl, N, false, dvp + l * r * N * elem, N, false, nullptr, ws,
            stream);  // dv_l = dt.T @ x_l
    lt_gemm(dt, B, N, r, dtb.data_ptr(), r, false, vp + l * r * N * elem, N, false, G.data_ptr(), N, true, nullptr,
            ws, stream);  // G = g + dt @ v_l
  }
  C10_CUDA_CHECK(rankops::cuda::cross_finish_dx0(dtype_code(x0), acc.data_ptr<float>(), G.data_ptr(), N,
                                                 dx0.data_ptr(), B, N, stream));
  return {dx0, du, dv, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(rankops_C, CUDA, m) {
  m.impl("cross_layer", &cross_layer_cuda);
  m.impl("cross_layer_backward", &cross_layer_backward_cuda);
  m.impl("cross_net", &cross_net_cuda);
  m.impl("cross_net_backward", &cross_net_backward_cuda);
  m.impl("cross_layer_lowrank", &cross_layer_lowrank_cuda);
  m.impl("cross_layer_lowrank_backward", &cross_layer_lowrank_backward_cuda);
  m.impl("cross_net_lowrank", &cross_net_lowrank_cuda);
  m.impl("cross_net_lowrank_backward", &cross_net_lowrank_backward_cuda);
}
#endif

// Launchers of the CUDA cross kernels (DCN-V2 full rank): the elementwise passes around the
// cuBLASLt GEMMs, which csrc/cross.cpp issues. Raw pointers, a dtype code and row strides in
// elements (every [B, N] operand is row-major with its own leading dimension); this header and the
// .cu behind it include no torch header.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace rankops::cuda {

// Rows of the fp32 partial column sums the backward prologue writes (at most; its buffer is
// [kCrossPartialRows, N]).
constexpr int64_t kCrossPartialRows = 256;

// Forward epilogue, one pass: with p = q[b, j] (+ bias[j] when bias is given),
//   y[b, j] = x0[b, j] * p + x[b, j],  and q[b, j] = p when write_p.
// q may be y (in place); x0 may be x. bias has x0's dtype.
cudaError_t cross_forward_epilogue(DType dtype, const void* x0, int64_t ld_x0, const void* x, int64_t ld_x, void* q,
                                   int64_t ld_q, const void* bias, bool write_p, void* y, int64_t ld_y, int64_t B,
                                   int64_t N, cudaStream_t stream);

// How the backward prologue writes dx0's share g * p.
enum class Dx0Mode : int {
  kStore = 0,  // dx0 (x0's dtype) = g * p
  kInit = 1,   // dx0 (fp32) = g * p
  kAdd = 2,    // dx0 (fp32) += g * p
};

// Backward prologue, one pass over g, x0 and p: dp = g * x0 (rounded once), dx0 per mode,
// gcopy = g when gcopy is given (the C the dxl GEMM then accumulates into), and db (x0's dtype,
// [N]) = the column sums of dp in fp32 (through partial, [kCrossPartialRows, N] fp32 scratch).
cudaError_t cross_backward_prologue(DType dtype, const void* g, int64_t ld_g, const void* x0, int64_t ld_x0,
                                    const void* p, int64_t ld_p, void* dp, int64_t ld_dp, void* dx0, int64_t ld_dx0,
                                    Dx0Mode mode, void* gcopy, int64_t ld_gcopy, float* partial, void* db, int64_t B,
                                    int64_t N, cudaStream_t stream);

// dx0[b, j] = acc[b, j] + G[b, j], rounded once (acc fp32 [B, N] contiguous, dx0 [B, N] contiguous).
cudaError_t cross_finish_dx0(DType dtype, const float* acc, const void* G, int64_t ld_G, void* dx0, int64_t B,
                             int64_t N, cudaStream_t stream);

}  // namespace rankops::cuda

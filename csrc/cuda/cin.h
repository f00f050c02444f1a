// Launchers of the CUDA CIN kernels. Raw pointers and a dtype code: this header and the .cu behind
// it include no torch header (fast nvcc builds); csrc/cin.cpp does the tensor side (checks, the
// padded weight copies, the workspace and its reduction).
//
// The forward kernel takes the weight as a zero-padded 2-D matrix whose layout it dictates
// (cin_forward_weight_layout): [rows >= N][cols >= K] row-major for the tensor-core path (fp16/bf16),
// or its transpose [rows >= K][cols >= N] for the fp32 SIMT path. The padding removes every tail
// check on the weight side and makes each of its rows 16-byte aligned.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace rankops::cuda {

struct CinWeightLayout {
  int64_t rows, cols;  // the padded matrix's shape
  bool transposed;     // false: [n][k] (rows pad N); true: [k][n] (rows pad K)
};

// The weight layout cin_forward expects for N output maps and K = H * M pairs.
CinWeightLayout cin_forward_weight_layout(DType dtype, int64_t N, int64_t K);

// out[b, n, d] = sum_{h<H, m<M} W[n, h*M + m] * xk[b, h, d] * x0[b, m, d] (+ bias[n]), all contiguous;
// w is the padded weight of cin_forward_weight_layout(dtype, N, H*M); bias is fp32 or null.
// Requires B*D < 2^31, H*M < 2^31 (cin_supported).
cudaError_t cin_forward(DType dtype, const void* xk, const void* x0, const void* w, const float* bias, void* out,
                        int64_t B, int64_t H, int64_t M, int64_t D, int64_t N, const CinWeightLayout& wl,
                        cudaStream_t stream);

struct CinGradLayout {
  int64_t rows, cols;  // each split's fp32 partial of dW is [rows >= N][cols >= K]
  int64_t splits;      // partials over disjoint (b, d) ranges, to be summed
};

CinGradLayout cin_weight_grad_layout(int64_t N, int64_t K, int64_t B, int64_t D, int sm_count);

// ws[s, n, k] = sum over split s's (b, d) of grad[b, n, d] * xk[b, h, d] * x0[b, m, d] (k = h*M + m),
// zero in the padding; ws is [splits, rows, cols] fp32 and every element of it is written.
cudaError_t cin_weight_grad(DType dtype, const void* grad, const void* xk, const void* x0, float* ws, int64_t B,
                            int64_t H, int64_t M, int64_t D, int64_t N, const CinGradLayout& gl,
                            cudaStream_t stream);

// Whether the sizes are in the kernels' range: 32-bit column and pair indices, grid limits.
bool cin_supported(int64_t B, int64_t H, int64_t M, int64_t D, int64_t N);

}  // namespace rankops::cuda

// Launchers of the CUDA embedding-bag kernels. Raw pointers and a dtype code: this header and the
// .cu behind it include no torch header; csrc/embedding_bag.cpp does the tensor side (checks,
// allocation, the sort that makes the per-row segments).
//
// Layout and codes as in rankops/ops/embedding_bag/reference.py: T tables stacked in weights
// [R, D], table-major bags k = t*B + b, out [B, T, D]; mode 0 sum, 1 mean, 2 max.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace rankops::cuda {

// out[b, t, :] = pool of the bag k = t*B + b; argmax (mode max) [B, T, D] or null.
cudaError_t embedding_bag_forward(DType dtype, bool index64, const void* weights, const int64_t* table_offsets,
                                  const void* indices, const void* offsets, const void* per_sample_weights, int mode,
                                  void* out, int64_t* argmax, int64_t T, int64_t B, int64_t D, cudaStream_t stream);

// One sub-warp per unique row u: g = sum over j in [seg[u], seg[u+1]) of the gradient row
// out_rows[p] (= b*T + t of the lookup's bag) of lookup p = perm[j] (times scale[perm[j]] when scale is given; for max only the elements it won),
// in j order (deterministic). Then op 0: grad_weights[row] = g; 1: SGD; 2: Adagrad (state
// [R, D]); 3: row-wise Adagrad (state [R]), applied to weights[row] in place.
cudaError_t embedding_bag_segments(DType dtype, int op, int mode, const void* grad, const int64_t* perm,
                                   const int64_t* out_rows, const float* scale, const int64_t* argmax,
                                   const int64_t* seg, const int64_t* rows, int64_t U, void* weights, float* state,
                                   void* grad_weights, int64_t D, float lr, float eps, cudaStream_t stream);

// grad_psw[i] = <grad[b, t, :], weights[table_offsets[t] + indices[i], :]> for each lookup i.
cudaError_t embedding_bag_psw_grad(DType dtype, bool index64, const void* grad, const void* weights,
                                   const int64_t* table_offsets, const void* indices, const void* offsets,
                                   void* grad_psw, int64_t T, int64_t B, int64_t D, cudaStream_t stream);

}  // namespace rankops::cuda

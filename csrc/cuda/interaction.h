// Launchers of the CUDA interaction kernels. Raw pointers and a dtype code: this header and the
// .cu behind it include no torch header (fast nvcc builds); csrc/interaction.cpp does the tensor side.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace rankops::cuda {

cudaError_t fm_interaction(DType dtype, const void* x, void* out, int64_t B, int64_t F, int64_t D, bool reduce,
                           cudaStream_t stream);
cudaError_t fm_interaction_backward(DType dtype, const void* grad, const void* x, void* grad_x, int64_t B, int64_t F,
                                    int64_t D, bool reduce, cudaStream_t stream);
cudaError_t dot_interaction(DType dtype, const void* x, void* out, int64_t B, int64_t F, int64_t D,
                            bool self_interaction, cudaStream_t stream);
cudaError_t dot_interaction_backward(DType dtype, const void* grad, const void* x, void* grad_x, int64_t B, int64_t F,
                                     int64_t D, bool self_interaction, cudaStream_t stream);

}  // namespace rankops::cuda

// placeholder: the CUDA interaction kernels are being written (see csrc/cuda/interaction.h)
#include "cuda/interaction.h"
namespace rankops::cuda {
cudaError_t fm_interaction(DType, const void*, void*, int64_t, int64_t, int64_t, bool, cudaStream_t) { return cudaErrorNotSupported; }
cudaError_t fm_interaction_backward(DType, const void*, const void*, void*, int64_t, int64_t, int64_t, bool, cudaStream_t) { return cudaErrorNotSupported; }
cudaError_t dot_interaction(DType, const void*, void*, int64_t, int64_t, int64_t, bool, cudaStream_t) { return cudaErrorNotSupported; }
cudaError_t dot_interaction_backward(DType, const void*, const void*, void*, int64_t, int64_t, int64_t, bool, cudaStream_t) { return cudaErrorNotSupported; }
}

// Host-side helpers of the CUDA launchers: the kernel instantiation for a dtype code, alignment
// and ceiling division. Included by the .cu files (no torch header).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace rankops::cuda {

// fn(T{}) for the element type of dtype (fp32, fp16, bf16): the launcher's body, instantiated per type.
template <typename Fn>
inline cudaError_t dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat: return fn(float{});
    case DType::kHalf: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace rankops::cuda

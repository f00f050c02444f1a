// Helpers shared by the op-family binding files (csrc/<family>.cpp).
#pragma once
#include <ATen/ATen.h>

#include "dtype.h"

namespace rankops {

inline DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "rankops: unsupported dtype ", t.scalar_type());
  }
}

// Dispatch over the three float dtypes the ops accept.
#define RANKOPS_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace rankops

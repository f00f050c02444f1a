// Element type code passed to the raw CUDA launchers (csrc/cuda/*.cu include no torch header).
#pragma once

namespace rankops {
enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2 };
}  // namespace rankops

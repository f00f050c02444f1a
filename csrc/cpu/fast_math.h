// Branch-free exp and sigmoid in fp32 that the compiler vectorises (std::exp in a loop it does not),
// shared by the CPU kernels that apply softmax or gated activations per element.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace rankops::cpu {

// exp(x) for x <= 0 (scores minus a running max), branch-free so the key loops vectorise.
// 2^t = 2^round(t) * 2^f, |f| <= 1/2, 2^f from Cephes' exp2f polynomial (rel. error ~2e-7).
inline float exp_nonpos(float x) {
  x = std::max(x, -87.0f);  // exp(-87) ~ 1.6e-38: underflows to nothing in an fp32 sum of ones
  const float t = x * 1.44269504088896341f;
  const float r = std::floor(t + 0.5f);
  const float f = t - r;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t e = static_cast<int32_t>(r) + 127;
  return p * std::bit_cast<float>(e << 23);
}

// sigmoid through exp(-|x|) <= 1 (no overflow), branch-free for the vectoriser.
inline float sigmoid_f(float x) {
  const float e = exp_nonpos(-std::fabs(x));
  const float r = 1.f / (1.f + e);
  return x >= 0.f ? r : e * r;
}

}  // namespace rankops::cpu

// Element conversions shared by the CUDA kernels: fp32 / fp16 / bf16 to and from fp32, one at a time
// and 16 bytes at a time (the vectorised paths, Cols). Device-only, no torch header.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace rankops::cuda {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// A 32-bit word holding two 16-bit elements (element 0 in the low half) <-> two floats.
template <typename T>
__device__ __forceinline__ float2 word_to_f2(unsigned w) {
  if constexpr (std::is_same_v<T, __half>) {
    return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu))),
                       __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16))));
  } else {  // bf16 is the top half of an fp32
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  }
}
template <typename T>
__device__ __forceinline__ unsigned f2_to_word(float a, float b) {
  if constexpr (std::is_same_v<T, __half>) {
    return static_cast<unsigned>(__half_as_ushort(__float2half_rn(a))) |
           (static_cast<unsigned>(__half_as_ushort(__float2half_rn(b))) << 16);
  } else {
    return static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(a))) |
           (static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(b))) << 16);
  }
}

// 16 bytes of T <-> 16 / sizeof(T) floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& r, float* f) {
  if constexpr (std::is_same_v<T, float>) {
    f[0] = __uint_as_float(r.x);
    f[1] = __uint_as_float(r.y);
    f[2] = __uint_as_float(r.z);
    f[3] = __uint_as_float(r.w);
  } else {
    const float2 a = word_to_f2<T>(r.x), b = word_to_f2<T>(r.y), c = word_to_f2<T>(r.z), d = word_to_f2<T>(r.w);
    f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y, f[4] = c.x, f[5] = c.y, f[6] = d.x, f[7] = d.y;
  }
}
template <typename T>
__device__ __forceinline__ uint4 pack16(const float* f) {
  if constexpr (std::is_same_v<T, float>) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  } else {
    return make_uint4(f2_to_word<T>(f[0], f[1]), f2_to_word<T>(f[2], f[3]), f2_to_word<T>(f[4], f[5]),
                      f2_to_word<T>(f[6], f[7]));
  }
}

// V consecutive elements of T moved as one access: a 16-byte vector (kVec), or one scalar.
template <typename T, bool kVec>
struct Cols {
  static constexpr int V = 1;
  using Raw = T;
  static __device__ __forceinline__ Raw load(const T* p) { return *p; }
  static __device__ __forceinline__ void store(T* p, Raw r) { *p = r; }
  static __device__ __forceinline__ void to_float(Raw r, float* f) { f[0] = to_f(r); }
  static __device__ __forceinline__ Raw from_float(const float* f) { return from_f<T>(f[0]); }
};
template <typename T>
struct Cols<T, true> {
  static constexpr int V = 16 / static_cast<int>(sizeof(T));
  using Raw = uint4;
  static __device__ __forceinline__ Raw load(const T* p) { return *reinterpret_cast<const uint4*>(p); }
  static __device__ __forceinline__ void store(T* p, Raw r) { *reinterpret_cast<uint4*>(p) = r; }
  static __device__ __forceinline__ void to_float(const Raw& r, float* f) { unpack16<T>(r, f); }
  static __device__ __forceinline__ Raw from_float(const float* f) { return pack16<T>(f); }
};

}  // namespace rankops::cuda

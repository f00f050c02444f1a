#pragma once
// Tensor-core primitives (sm_80+) shared by the CUDA kernels: mma.sync m16n8k16 with fp32
// accumulators and its ldmatrix operand loads. Device-only, no torch header.
// Written in PTX rather than WMMA because nvcc's bf16 WMMA loads compile to generic 32-bit loads
// (8 per 16x16 operand, no ldmatrix); the fp16 and bf16 paths are then one code.
//
// Register layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4), two 16-bit elements a
// register, the lower column / k in the low half:
//   A (16 x 16, row-major): a0 (row g, k 2t..), a1 (row g+8, k 2t..), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   B (16 x 8, k x n):      b0 (k 2t.., n g), b1 (k 2t+8.., n g)
//   C (16 x 8, fp32):       c0, c1 (row g, n 2t, 2t+1), c2, c3 (row g+8, n 2t, 2t+1)
// ldmatrix.x4 hands register m the 8x8 matrix whose row addresses lanes 8m..8m+7 gave, as
// (row g, columns 2t, 2t+1); with .trans as (rows 2t, 2t+1, column g).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace rankops::cuda {

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

}  // namespace rankops::cuda

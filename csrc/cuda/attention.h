// Launchers of the CUDA target-attention kernels (padded and jagged, forward and backward). Raw
// pointers and a dtype code: this header and the .cu behind it include no torch header (fast nvcc
// builds); csrc/attention.cpp does the tensor side (checks, outputs, the workspace, the stream).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace rankops::cuda {

// Head dims the kernels take: a key tile of at least 8 rows of d fp32 must fit one thread block's
// register accumulators (tile * d <= 4096, 16 slots of 256 threads).
constexpr int64_t kAttentionMaxHeadDim = 512;

// How one call is cut up; made by plan_target_attention, read by the launchers. The caller
// allocates `workspace_floats` fp32 elements of workspace (none when 0).
struct AttentionPlan {
  int tile = 0;        // keys per shared-memory tile: forward up to 256, backward up to 64 (tile * d <= 4096)
  int q_block = 0;     // queries per block: min(Q, 64), q_block * d <= 4096 (and q_block * tile <= 4096)
  int q_blocks = 0;    // ceil(Q / q_block)
  int splits = 1;      // key splits per (sample, head); 1: the forward writes out directly
  int smem_bytes = 0;  // dynamic shared memory of the main kernel
  int64_t workspace_floats = 0;
};

// backward: plan the backward (else the forward). avg_len: keys per sample (padded: L; jagged: S/B),
// used only to choose the split count. sm_count: multiprocessors of the device.
AttentionPlan plan_target_attention(bool backward, int64_t B, int64_t H, int64_t Q, int64_t d, int64_t avg_len,
                                    int sm_count);

// Forward. q, out [B,H,Q,d] contiguous; lse [B,H,Q] fp32. Padded (jagged false): k, v [B,H,L,d]
// contiguous, seq = lengths[B] (int64, device), kv_rows = L. Jagged: k, v [S,H,d] contiguous,
// seq = offsets[B+1], kv_rows = S. Lengths / offsets are clamped to [0, kv_rows] in the kernels
// (the Python layer validates them; the clamp only keeps a bad value from reading out of bounds).
cudaError_t target_attention_forward(DType dtype, const AttentionPlan& plan, const void* q, const void* k,
                                     const void* v, const int64_t* seq, bool jagged, int64_t B, int64_t H, int64_t Q,
                                     int64_t kv_rows, int64_t d, float scale, void* out, float* lse, float* workspace,
                                     cudaStream_t stream);

// Backward: grad, out in q's dtype and layout; lse fp32. Writes every element of dq, dk, dv (padded
// rows past a sample's length get 0).
cudaError_t target_attention_backward(DType dtype, const AttentionPlan& plan, const void* grad, const void* q,
                                      const void* k, const void* v, const void* out, const float* lse,
                                      const int64_t* seq, bool jagged, int64_t B, int64_t H, int64_t Q,
                                      int64_t kv_rows, int64_t d, float scale, void* dq, void* dk, void* dv,
                                      float* workspace, cudaStream_t stream);

}  // namespace rankops::cuda

// The hash_embedding family on the CPU: an open-addressing (linear probing) map from raw 64-bit
// ids to slots of a power-of-two key array, batched and thread-parallel.
#pragma once
#include <ATen/ATen.h>

namespace rankops::cpu {

// slots[i] = the slot holding ids[i], claiming an empty one on first sight (-1: every slot is taken).
at::Tensor hash_insert(at::Tensor keys, const at::Tensor& ids);
// slots[i] = the slot holding ids[i], or -1 where it is absent; keys are only read.
at::Tensor hash_lookup(const at::Tensor& keys, const at::Tensor& ids);

}  // namespace rankops::cpu

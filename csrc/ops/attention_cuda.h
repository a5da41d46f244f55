// CUDA multi-head attention: a flash-style prefill kernel (online softmax over
// key tiles in shared memory, never the [q_len, kv_len] matrix) and a decode
// kernel for one query over a KV cache, split along the cache with a second
// reduction pass. Same semantics as ops/attention.h (masking, causal, T5
// relative bias per distance, kv_batch_divisor, zeros for fully masked rows),
// with q/k/v/out in float32, float16 or bfloat16 and float32 arithmetic.
//
// Beams never copy their cache: with kv_index, query batch b reads position j
// of K/V from cache slot kv_index[b * kv_index_stride + j] (rows at
// k + slot * k_batch_stride + j * k_row_stride). beam_table_reorder_cuda
// maintains such a table from the parent pointers of a beam search step.
#pragma once
#ifdef PALI_WITH_CUDA

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "ops/attention.h"

namespace pali {

struct AttentionCudaParams {
  DType dtype = DType::f16;  // storage of q, k, v, out
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t q_len = 1;
  int64_t kv_len = 1;
  int64_t head_dim = 64;  // 64, 72, 80, 96 or 128 (prefill); the same, decode
  float scale = 1.0f;

  // Device pointers; strides in elements, 0 = dense (as ops/attention.h).
  const void* q = nullptr;
  int64_t q_row_stride = 0, q_batch_stride = 0;
  const void* k = nullptr;
  int64_t k_row_stride = 0, k_batch_stride = 0;
  const void* v = nullptr;
  int64_t v_row_stride = 0, v_batch_stride = 0;
  void* out = nullptr;
  int64_t out_row_stride = 0, out_batch_stride = 0;

  // Key padding mask (device, int32 or uint8, 1 = attend), indexed by the
  // request b / kv_batch_divisor (also when kv_index is given).
  const void* key_mask = nullptr;
  MaskType mask_type = MaskType::none;
  int64_t mask_batch_stride = 0;  // 0: kv_len

  bool causal = false;
  int64_t q_offset = 0;

  const float* rel_bias = nullptr;  // device float32 [heads, rel_bias_stride]
  int64_t rel_bias_stride = 0;
  int64_t rel_offset = 0;

  int64_t kv_batch_divisor = 1;

  // Optional beam index table, device int32 [batch, >= kv_len] (row stride
  // kv_index_stride): cache slot of each position. Overrides kv_batch_divisor
  // for K/V (not for key_mask).
  const int32_t* kv_index = nullptr;
  int64_t kv_index_stride = 0;
};

// Prefill (any q_len): tiles of 32 queries x 32 keys per block of 128 threads.
void attention_cuda(const AttentionCudaParams& p, cudaStream_t stream = nullptr);

// Decode (q_len must be 1): the keys are split across blocks; the partial
// results go to `workspace` (at least attention_decode_workspace_bytes(p)
// bytes of device memory) and a second kernel combines them.
size_t attention_decode_workspace_bytes(const AttentionCudaParams& p);
void attention_decode_cuda(const AttentionCudaParams& p, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream = nullptr);

// new_table[b, j] = old_table[parents[b], j] for j < len, new_table[b, len] = b
// (the slot where hypothesis b writes its next position), for b < batch;
// tables are device int32 [batch, stride] (stride > len); parents device int32 [batch].
// new_table must not be old_table.
void beam_table_reorder_cuda(const int32_t* old_table, int32_t* new_table, const int32_t* parents,
                             int64_t batch, int64_t stride, int64_t len, cudaStream_t stream = nullptr);

}  // namespace pali

#endif  // PALI_WITH_CUDA

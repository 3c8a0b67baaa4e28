// Launcher of the dense / paged prefill attention kernel (docs/ffi-contract.md,
// msa_attention). Independent of the XLA headers.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/common/elem_type.h"

namespace msa::cuda {

struct AttentionParams {
  const void* q;              // [T, Hq, D], kBF16 or kF16
  ElemType q_type;
  const void* k;              // dense [Tk, Hkv, D] or paged [num_pages, Hkv, page_size, D]
  const void* v;              // same shape as k
  ElemType kv_type;           // q_type or kFP8E4M3 (k and v share it)
  const int32_t* q_indptr;    // [batch + 1]
  const int32_t* kv_indptr;   // [batch + 1] (dense; ignored when paged)
  const int32_t* kv_lens;     // [batch]
  const int32_t* page_table;  // [batch, max_pages] (paged; ignored when dense)
  void* o;                    // [T, Hq, D] in q_type
  float* lse;                 // [T, Hq]
  float* block_max;           // [T, Hq, num_blocks]; unused when num_blocks == 0
  int64_t total_q;            // T
  int64_t q_heads;            // Hq
  int64_t kv_heads;           // Hkv (Hq % Hkv == 0)
  int64_t head_dim;           // 64 or 128
  int64_t num_blocks;         // NB (0: block maxima not requested)
  int64_t batch;              // B
  int64_t dense_rows;         // Tk (dense)
  int64_t num_pages, page_size, max_pages;  // paged; page_size a multiple of 64
  int64_t block_size;         // multiple of 64 when num_blocks > 0 (== page_size when paged)
  float scale, k_scale, v_scale;
  bool causal, paged;
};

// True when the kernels support this configuration (dtypes, head_dim, page /
// block sizes, index ranges); launch_attention returns cudaErrorInvalidValue
// otherwise. `why` (optional) gets a short reason.
bool attention_supported(const AttentionParams& p, const char** why = nullptr);

// Grid depends on shapes and attributes only: no host sync, no allocation
// (CUDA-graph safe). Every element of o, lse (and block_max) is written.
cudaError_t launch_attention(const AttentionParams& p, cudaStream_t stream);

}  // namespace msa::cuda

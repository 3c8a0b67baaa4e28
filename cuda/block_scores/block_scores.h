// Launcher of the index-branch block-score kernel (docs/ffi-contract.md,
// msa_block_scores). Independent of the XLA headers.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/common/elem_type.h"

namespace msa::cuda {

struct BlockScoresParams {
  const void* q;               // q_idx [T, H, head_dim], kBF16 or kF16
  ElemType q_type;
  const void* k;               // dense [Tk, head_dim] or paged [num_pages, 1, page_size, head_dim]
  ElemType k_type;             // q_type or kFP8E4M3
  const int32_t* q_indptr;     // [batch + 1]
  const int32_t* kv_indptr;    // [batch + 1] (dense; ignored when paged)
  const int32_t* kv_lens;      // [batch]
  const int32_t* page_table;   // [batch, max_pages] (paged; ignored when dense)
  float* scores;               // [T, H, num_blocks]
  int64_t total_q;             // T
  int64_t heads;               // H (index heads; all share the one index key head)
  int64_t head_dim;            // 64 or 128
  int64_t num_blocks;          // NB
  int64_t batch;               // B
  int64_t dense_rows;          // Tk (dense)
  int64_t num_pages, page_size, max_pages;  // paged
  int64_t block_size;          // multiple of 64; == page_size when paged
  float scale, k_scale;
  bool causal, paged;
};

// True when the kernels support this configuration (dtypes, head_dim,
// block_size); launch_block_scores returns cudaErrorInvalidValue otherwise.
bool block_scores_supported(const BlockScoresParams& p);

// Grid depends on shapes and attributes only: no host sync, no allocation
// (CUDA-graph safe). Every element of scores is written.
cudaError_t launch_block_scores(const BlockScoresParams& p, cudaStream_t stream);

}  // namespace msa::cuda

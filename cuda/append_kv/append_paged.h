// Launcher of the paged-cache append kernel (docs/ffi-contract.md,
// msa_append_paged).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/common/elem_type.h"

namespace msa::cuda {

struct AppendPagedParams {
  void* cache;                // [num_pages, heads, page_size, head_dim]
  ElemType cache_type;
  const void* new_tokens;     // [batch, steps, heads, head_dim]
  ElemType new_type;
  const int32_t* page_table;  // [batch, max_pages]
  const int32_t* positions;   // [batch]
  int64_t num_pages, heads, page_size, head_dim, batch, steps, max_pages;
  float scale;                // stored value = new / scale
};

cudaError_t launch_append_paged(const AppendPagedParams& p, cudaStream_t stream);

}  // namespace msa::cuda

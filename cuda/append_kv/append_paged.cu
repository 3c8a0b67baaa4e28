// Paged-cache append: one thread per element of the new tokens, consecutive
// threads on consecutive head_dim elements (coalesced on both sides). The
// grid depends on shapes only; out-of-range positions and page ids are skipped.
#include "cuda/append_kv/append_paged.h"
#include "cuda/common/convert.cuh"

namespace msa::cuda {
namespace {

template <typename In, typename Out>
__global__ void append_paged_kernel(AppendPagedParams p) {
  const int64_t total = p.batch * p.steps * p.heads * p.head_dim;
  const In* src = static_cast<const In*>(p.new_tokens);
  Out* dst = static_cast<Out*>(p.cache);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t e = i % p.head_dim;
    int64_t h = (i / p.head_dim) % p.heads;
    int64_t s = (i / (p.head_dim * p.heads)) % p.steps;
    int64_t b = i / (p.head_dim * p.heads * p.steps);
    int32_t start = p.positions[b];
    if (start < 0) continue;
    int64_t pos = int64_t(start) + s;
    int64_t page_idx = pos / p.page_size;
    if (page_idx >= p.max_pages) continue;
    int32_t page = p.page_table[b * p.max_pages + page_idx];
    if (page < 0 || page >= p.num_pages) continue;
    int64_t out = ((int64_t(page) * p.heads + h) * p.page_size + pos % p.page_size) * p.head_dim + e;
    dst[out] = from_float<Out>(to_float<In>(src[i]) / p.scale);
  }
}

template <typename In>
cudaError_t launch_for_input(const AppendPagedParams& p, dim3 grid, dim3 block, cudaStream_t stream) {
  switch (p.cache_type) {
    case ElemType::kF32: append_paged_kernel<In, float><<<grid, block, 0, stream>>>(p); break;
    case ElemType::kBF16: append_paged_kernel<In, __nv_bfloat16><<<grid, block, 0, stream>>>(p); break;
    case ElemType::kF16: append_paged_kernel<In, __half><<<grid, block, 0, stream>>>(p); break;
    case ElemType::kFP8E4M3: append_paged_kernel<In, __nv_fp8_e4m3><<<grid, block, 0, stream>>>(p); break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_append_paged(const AppendPagedParams& p, cudaStream_t stream) {
  const int64_t total = p.batch * p.steps * p.heads * p.head_dim;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  dim3 grid(unsigned(blocks < 65535 * 16 ? blocks : 65535 * 16)), block(threads);
  switch (p.new_type) {
    case ElemType::kF32: return launch_for_input<float>(p, grid, block, stream);
    case ElemType::kBF16: return launch_for_input<__nv_bfloat16>(p, grid, block, stream);
    case ElemType::kF16: return launch_for_input<__half>(p, grid, block, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace msa::cuda

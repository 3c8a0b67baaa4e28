// Launcher of msa_block_scores: picks the kernel (prefill-shaped, or
// decode-shaped when requests have few rows) and its instance ({bf16, fp16}
// q_idx x {same dtype, fp8 e4m3} keys x head_dim {64, 128}) and a grid that
// depends on shapes and attributes only (CUDA-graph safe: no host sync, no
// allocation).
#include <algorithm>
#include <cmath>

#include "cuda/block_scores/block_scores.h"
#include "cuda/block_scores/block_scores_kernel.cuh"
#include "cuda/block_scores/decode_scores_kernel.cuh"

namespace msa::cuda {

namespace {

using block_scores::KernelArgs;
using block_scores::KernelTraits;

int num_sms() {
  static int cached = 0;
  if (cached == 0) {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && n > 0)
      cached = n;
    else
      return 132;
  }
  return cached;
}

template <class Tr>
cudaError_t launch(const BlockScoresParams& p, cudaStream_t stream) {
  KernelArgs a{};
  a.p = p;
  const int64_t rows = p.total_q * p.heads;
  a.num_slots = (rows + Tr::kBlockM - 1) / Tr::kBlockM + p.batch + 2;
  // KV chunks: enough CTAs for ~4 waves of 2 CTAs/SM when there are few row
  // tiles (decode, short prefill on a long cache); chunks are whole blocks.
  const int64_t target = int64_t(4) * 2 * num_sms();
  int64_t chunks = std::min<int64_t>(p.num_blocks, std::max<int64_t>(1, (target + a.num_slots - 1) / a.num_slots));
  a.chunk_blocks = (p.num_blocks + chunks - 1) / chunks;
  a.chunk_blocks = std::max<int64_t>(a.chunk_blocks, (p.num_blocks + 65534) / 65535);  // gridDim.y <= 65535
  chunks = (p.num_blocks + a.chunk_blocks - 1) / a.chunk_blocks;
  const float s = p.scale * p.k_scale;
  a.out_scale = std::fabs(s);
  a.negate_q = s < 0.0f;
  if (a.num_slots > 0x7fffffff) return cudaErrorInvalidValue;

  auto kernel = block_scores::block_scores_kernel<Tr>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  dim3 grid(unsigned(a.num_slots), unsigned(chunks)), block(Tr::kThreads);
  kernel<<<grid, block, Tr::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

// Decode-shaped batches (few rows per request, see uses_decode_kernel):
// grid (request, chunk of whole blocks). Chunks are a multiple of the 4 warps
// (a warp owns whole blocks) sized for ~16 waves of kMinBlocks CTAs per SM:
// short CTAs balance the memory traffic over the SMs better than few long
// ones (B=8 x 1M fp8 keys on an H200: ~4% faster than 4 waves).
template <class Tr>
cudaError_t launch_decode(const BlockScoresParams& p, cudaStream_t stream) {
  namespace ds = block_scores::decode_shaped;
  constexpr int64_t kWaves = 16;
  ds::DecodeArgs a{};
  a.p = p;
  const int64_t target = kWaves * Tr::kMinBlocks * num_sms();
  const int64_t want = std::max<int64_t>(1, (target + p.batch - 1) / p.batch);
  int64_t cb = (p.num_blocks + want - 1) / want;
  cb = std::max<int64_t>(cb, (p.num_blocks + 65534) / 65535);  // gridDim.y <= 65535
  cb = (cb + Tr::kWarps - 1) / Tr::kWarps * Tr::kWarps;
  const int64_t chunks = (p.num_blocks + cb - 1) / cb;
  a.chunk_blocks = cb;
  const float s = p.scale * p.k_scale;
  a.out_scale = std::fabs(s);
  a.negate_q = s < 0.0f;
  if (p.batch < 1 || p.batch > 0x7fffffff) return cudaErrorInvalidValue;

  auto kernel = ds::decode_scores_kernel<Tr>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  dim3 grid(unsigned(p.batch), unsigned(chunks)), block(Tr::kThreads);
  kernel<<<grid, block, Tr::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

// Static (shapes only, CUDA-graph safe): at most 16 flattened (token, head)
// rows per request on average, e.g. decode (T == B) with H <= 16. The decode
// kernel is correct for any runtime q_indptr, just slower for long requests.
bool uses_decode_kernel(const BlockScoresParams& p) { return p.total_q * p.heads <= 16 * p.batch; }

template <class Elem, bool kFp8K>
cudaError_t launch_dim(const BlockScoresParams& p, cudaStream_t stream) {
  namespace ds = block_scores::decode_shaped;
  const bool dec = uses_decode_kernel(p);
  switch (p.head_dim) {
    case 64:
      return dec ? launch_decode<ds::Traits<Elem, kFp8K, 64>>(p, stream)
                 : launch<KernelTraits<Elem, kFp8K, 64>>(p, stream);
    case 128:
      return dec ? launch_decode<ds::Traits<Elem, kFp8K, 128>>(p, stream)
                 : launch<KernelTraits<Elem, kFp8K, 128>>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <class Elem>
cudaError_t launch_k(const BlockScoresParams& p, cudaStream_t stream) {
  if (p.k_type == ElemType::kFP8E4M3) return launch_dim<Elem, true>(p, stream);
  return launch_dim<Elem, false>(p, stream);
}

}  // namespace

bool block_scores_supported(const BlockScoresParams& p) {
  const bool q_ok = p.q_type == ElemType::kBF16 || p.q_type == ElemType::kF16;
  const bool k_ok = p.k_type == p.q_type || p.k_type == ElemType::kFP8E4M3;
  const bool d_ok = p.head_dim == 64 || p.head_dim == 128;
  const bool bs_ok = p.block_size > 0 && p.block_size % 64 == 0 && (!p.paged || p.block_size == p.page_size);
  return q_ok && k_ok && d_ok && bs_ok && p.heads > 0;
}

cudaError_t launch_block_scores(const BlockScoresParams& p, cudaStream_t stream) {
  if (!block_scores_supported(p)) return cudaErrorInvalidValue;
  if (p.total_q == 0 || p.num_blocks == 0) return cudaSuccess;  // nothing to write
  if (p.q_type == ElemType::kBF16) return launch_k<cute::bfloat16_t>(p, stream);
  return launch_k<cute::half_t>(p, stream);
}

}  // namespace msa::cuda

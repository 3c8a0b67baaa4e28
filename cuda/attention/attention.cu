// Launcher of msa_attention: picks the kernel instance ({bf16, fp16} q x
// {same dtype, fp8 e4m3} K/V x head_dim {64, 128}) and a grid that depends on
// shapes and attributes only (CUDA-graph safe: no host sync, no allocation).
#include <cmath>
#include <cstdint>

#include "cuda/attention/attention.h"
#include "cuda/attention/attention_kernel.cuh"

namespace msa::cuda {

namespace {

using attention::KernelArgs;
using attention::KernelTraits;

template <class Tr>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  KernelArgs a{};
  a.p = p;
  const int64_t group = p.q_heads / p.kv_heads;
  a.num_slots = attention::num_tile_slots(p.total_q, group, p.batch, Tr::kBlockM);
  const int64_t ctas = a.num_slots * p.kv_heads;
  if (ctas > 0x7fffffff) return cudaErrorInvalidValue;
  const float c = p.scale * p.k_scale;
  a.c_nat = std::fabs(c);
  a.c2 = std::fmax(a.c_nat * 1.4426950408889634f, 1e-30f);
  a.negate_q = c < 0.0f;

  auto kernel = attention::attention_kernel<Tr>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<dim3(unsigned(ctas)), dim3(Tr::kThreads), Tr::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <class Elem, bool kFp8>
cudaError_t launch_dim(const AttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return launch<KernelTraits<Elem, kFp8, 64>>(p, stream);
    case 128: return launch<KernelTraits<Elem, kFp8, 128>>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <class Elem>
cudaError_t launch_kv(const AttentionParams& p, cudaStream_t stream) {
  if (p.kv_type == ElemType::kFP8E4M3) return launch_dim<Elem, true>(p, stream);
  return launch_dim<Elem, false>(p, stream);
}

}  // namespace

bool attention_supported(const AttentionParams& p, const char** why) {
  const char* r = nullptr;
  constexpr int64_t kTile = 64;  // KernelTraits::kBlockN
  if (p.q_type != ElemType::kBF16 && p.q_type != ElemType::kF16)
    r = "q must be bfloat16 or float16 (float32 has no CUDA kernel)";
  else if (p.kv_type != p.q_type && p.kv_type != ElemType::kFP8E4M3)
    r = "k/v must have q's dtype or float8_e4m3fn";
  else if (p.head_dim != 64 && p.head_dim != 128)
    r = "head_dim must be 64 or 128";
  else if (p.kv_heads < 1 || p.q_heads < p.kv_heads || p.q_heads % p.kv_heads != 0)
    r = "q heads must be a multiple of the KV heads";
  else if (p.paged && (p.page_size < kTile || p.page_size % kTile != 0))
    r = "page_size must be a multiple of 64";
  else if (p.num_blocks > 0 && (p.block_size < kTile || p.block_size % kTile != 0))
    r = "block_size must be a multiple of 64 when block maxima are requested";
  else if (p.total_q * p.q_heads >= (int64_t(1) << 31) || p.batch >= (int64_t(1) << 30))
    r = "T * Hq must be below 2^31";
  else if (p.paged ? (p.max_pages * p.page_size >= (int64_t(1) << 31) - 64 || p.num_pages >= (int64_t(1) << 31))
                   : p.dense_rows >= (int64_t(1) << 31) - 64)
    r = "KV capacity must be below 2^31 tokens";
  else if (p.kv_heads * p.head_dim * 2 * (p.paged ? p.page_size : kTile) >= (int64_t(1) << 31))
    r = "K/V page (or 64-token tile) must be below 2 GiB";
  if (why) *why = r;
  return r == nullptr;
}

cudaError_t launch_attention(const AttentionParams& p, cudaStream_t stream) {
  if (!attention_supported(p)) return cudaErrorInvalidValue;
  if (p.total_q == 0 || p.q_heads == 0) return cudaSuccess;  // nothing to write
  if (p.q_type == ElemType::kBF16) return launch_kv<cute::bfloat16_t>(p, stream);
  return launch_kv<cute::half_t>(p, stream);
}

}  // namespace msa::cuda

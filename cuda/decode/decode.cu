// Launcher of msa_decode: picks the kernel instance ({bf16, fp16} q x {same
// dtype, fp8 e4m3} caches x head_dim {64, 128}); the grids depend on shapes
// and attributes only (CUDA-graph safe: no host sync, no allocation).
#include <cmath>

#include "cuda/decode/decode.h"
#include "cuda/decode/decode_kernel.cuh"

namespace msa::cuda {

namespace {

using decode::KernelArgs;
using decode::Traits;

template <class Tr>
cudaError_t launch(const DecodeParams& p, cudaStream_t stream) {
  KernelArgs a{};
  a.p = p;
  const int64_t G = p.q_heads / p.kv_heads;
  a.head_chunks = (G + Tr::kHeads - 1) / Tr::kHeads;
  a.row_bytes = uint32_t(Tr::kRowBytes);
  a.scale_log2 = p.scale * p.k_scale * 1.4426950408889634f;
  // v / page_size as (v * ps_mul) >> ps_shift, exact for 0 <= v < 2^31 (page_size in
  // [1, 2^20] by decode_supported): ps_mul = ceil(2^(31+l) / ps) < 2^32, l = ceil(log2 ps).
  {
    const uint64_t ps = uint64_t(p.page_size);
    int l = 0;
    while ((uint64_t(1) << l) < ps) ++l;
    a.ps_shift = 31 + l;
    a.ps_mul = uint32_t(((uint64_t(1) << (31 + l)) + ps - 1) / ps);
  }
  const int64_t S = p.num_splits;
  if (S > 1) {
    const int64_t lse_bytes = decode_detail::round_up(p.batch * p.q_heads * S * 4, 256);
    a.lse_part = static_cast<float*>(p.scratch);
    a.o_part = reinterpret_cast<float*>(static_cast<char*>(p.scratch) + lse_bytes);
  }
  const int64_t ctas = p.batch * p.kv_heads * a.head_chunks * S;
  if (ctas <= 0) return cudaSuccess;
  if (ctas > 0x7fffffff) return cudaErrorInvalidValue;

  auto kernel = decode::decode_split_kernel<Tr>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  // All of the unified L1 as shared memory (the copies bypass L1): kMinBlocks CTAs
  // per SM need up to ~226 KB (fp8, D = 128: 3 x 72.6 KB).
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess) return err;
  kernel<<<unsigned(ctas), Tr::kThreads, Tr::kSmemBytes, stream>>>(a);
  err = cudaGetLastError();
  if (err != cudaSuccess || S == 1) return err;

  const int64_t rows = p.batch * p.q_heads;
  const int64_t blocks = (rows + 3) / 4;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  using Elem = typename Tr::Elem;
  decode::decode_combine_kernel<Elem><<<unsigned(blocks), 128, 0, stream>>>(
      a.lse_part, a.o_part, static_cast<Elem*>(p.o), p.lse, rows, S, int(p.head_dim));
  return cudaGetLastError();
}

template <class Elem, bool kFp8>
cudaError_t launch_dim(const DecodeParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return launch<Traits<Elem, kFp8, 64>>(p, stream);
    case 128: return launch<Traits<Elem, kFp8, 128>>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <class Elem>
cudaError_t launch_kv(const DecodeParams& p, cudaStream_t stream) {
  if (p.kv_type == ElemType::kFP8E4M3) return launch_dim<Elem, true>(p, stream);
  return launch_dim<Elem, false>(p, stream);
}

}  // namespace

bool decode_supported(const DecodeParams& p) {
  const bool q_ok = p.q_type == ElemType::kBF16 || p.q_type == ElemType::kF16;
  const bool kv_ok = p.kv_type == p.q_type || p.kv_type == ElemType::kFP8E4M3;
  const bool d_ok = p.head_dim == 64 || p.head_dim == 128;
  const bool heads_ok = p.kv_heads >= 1 && p.q_heads >= p.kv_heads && p.q_heads % p.kv_heads == 0;
  const bool pages_ok = p.page_size >= 1 && p.page_size <= (int64_t(1) << 20) && p.max_pages >= 0 &&
                        p.max_pages * p.page_size <= 0x7fffffff &&
                        p.num_pages * p.kv_heads * p.page_size <= int64_t(0xffffffff);
  const int64_t n = p.sparse ? p.topk : p.max_pages;
  const bool splits_ok = decode_splits_ok(n, p.num_splits) &&
                         (p.num_splits == 1 || p.scratch_bytes >= decode_scratch_bytes(p.batch, p.q_heads,
                                                                                       p.head_dim, p.num_splits));
  return q_ok && kv_ok && d_ok && heads_ok && pages_ok && splits_ok;
}

cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream) {
  if (!decode_supported(p)) return cudaErrorInvalidValue;
  if (p.batch == 0 || p.q_heads == 0) return cudaSuccess;
  if (p.q_type == ElemType::kBF16) return launch_kv<__nv_bfloat16>(p, stream);
  return launch_kv<__half>(p, stream);
}

}  // namespace msa::cuda

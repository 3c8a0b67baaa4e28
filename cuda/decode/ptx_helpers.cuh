// msa_decode: the split kernel's own PTX pieces (zero-filling copy, an opaque pointer,
// warp reductions); the shared ones (cp.async groups, ldmatrix, mma, fp8x4) are in
// cuda/common/mma_sm80.cuh.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/common/mma_sm80.cuh"

namespace msa::cuda::decode {

// 16-byte copy, or 16 zero bytes when zero_fill (the source is then not read).
__device__ __forceinline__ void cp_async_16_zfill(uint32_t dst, const void* src, bool zero_fill) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, p;\n}\n" ::"r"(dst),
      "l"(src), "r"(int(zero_fill)));
}
// The same pointer, hidden from the optimiser's re-association.
__device__ __forceinline__ const uint8_t* opaque(const uint8_t* x) {
  uint64_t r;
  asm("mov.b64 %0, %1;" : "=l"(r) : "l"(reinterpret_cast<uint64_t>(x)));
  return reinterpret_cast<const uint8_t*>(r);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

}  // namespace msa::cuda::decode

// msa_decode: the split-K combine kernel (log-sum-exp merge of the per-split partials).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decode/ptx_helpers.cuh"  // Mma<Elem>::from_float, warp reductions

namespace msa::cuda::decode {

// A warp per (b, q head) row: o = sum_s w_s o_s / sum_s w_s, w_s = exp(lse_s - max),
// lse = max + log(sum w_s); rows whose splits are all empty get o = 0, lse = -inf.
template <class Elem>
__global__ void __launch_bounds__(128) decode_combine_kernel(const float* __restrict__ lse_part,
                                                             const float* __restrict__ o_part,
                                                             Elem* __restrict__ o, float* __restrict__ lse,
                                                             int64_t rows, int64_t S, int D) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (row >= rows) return;
  const float* lp = lse_part + row * S;
  float M = -INFINITY;
  for (int64_t s = lane; s < S; s += 32) M = fmaxf(M, lp[s]);
  M = warp_max(M);
  Elem* out = o + row * D;
  if (M == -INFINITY) {
    for (int d = lane; d < D; d += 32) out[d] = Mma<Elem>::from_float(0.0f);
    if (lane == 0) lse[row] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (int64_t s = lane; s < S; s += 32) sum += __expf(lp[s] - M);
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
  const float* op = o_part + row * S * D;
  for (int d0 = lane * 4; d0 < D; d0 += 128) {
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int64_t s = 0; s < S; ++s) {
      const float ls = lp[s];
      if (ls == -INFINITY) continue;
      const float w = __expf(ls - M);
      const float4 x = *reinterpret_cast<const float4*>(op + s * D + d0);
      acc.x += w * x.x;
      acc.y += w * x.y;
      acc.z += w * x.z;
      acc.w += w * x.w;
    }
    out[d0] = Mma<Elem>::from_float(acc.x * inv);
    out[d0 + 1] = Mma<Elem>::from_float(acc.y * inv);
    out[d0 + 2] = Mma<Elem>::from_float(acc.z * inv);
    out[d0 + 3] = Mma<Elem>::from_float(acc.w * inv);
  }
  if (lane == 0) lse[row] = M + __logf(sum);
}

}  // namespace msa::cuda::decode

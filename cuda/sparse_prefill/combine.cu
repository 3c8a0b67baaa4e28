// LSE combine of the per-slot partials of one pass: a warp per (row, head),
// slots in order (deterministic, no atomics):
//   m = max_s lse_s, w_s = exp(lse_s - m), o = sum_s w_s o_s / sum_s w_s,
//   lse = m + log(sum_s w_s); no partial (every lse_s = -inf): o = 0, lse = -inf.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/sparse_prefill/internal.h"

namespace msa::cuda::sparse_prefill {

namespace {

template <class E>
struct Pair;
template <>
struct Pair<__nv_bfloat16> {
  using T = __nv_bfloat162;
  __device__ static float2 to2(T x) { return __bfloat1622float2(x); }
  __device__ static T from2(float2 x) { return __float22bfloat162_rn(x); }
};
template <>
struct Pair<__half> {
  using T = __half2;
  __device__ static float2 to2(T x) { return __half22float2(x); }
  __device__ static T from2(float2 x) { return __float22half2_rn(x); }
};

constexpr int kWarps = 8;

// kPairs: element pairs per lane (D = 64 * kPairs).
template <class E, int kPairs>
__global__ void __launch_bounds__(kWarps * 32) combine_kernel(const SparsePrefillParams p, const PassView v) {
  using P2 = typename Pair<E>::T;
  constexpr int kD = 64 * kPairs;
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // tl * Hq + h
  if (row >= v.tc * p.q_heads) return;
  const int64_t K = p.topk;
  const float* lse = v.part_lse + row * K;
  const P2* po = static_cast<const P2*>(v.part_o) + row * K * (kD / 2);
  float m = -INFINITY;
  for (int64_t s = 0; s < K; ++s) m = fmaxf(m, lse[s]);
  float acc[2 * kPairs];
#pragma unroll
  for (int i = 0; i < 2 * kPairs; ++i) acc[i] = 0.0f;
  float sum = 0.0f;
  if (m != -INFINITY) {
    for (int64_t s = 0; s < K; ++s) {
      const float ls = lse[s];
      if (ls == -INFINITY) continue;
      const float w = __expf(ls - m);
      sum += w;
      const P2* src = po + s * (kD / 2) + lane * kPairs;
#pragma unroll
      for (int i = 0; i < kPairs; ++i) {
        const float2 x = Pair<E>::to2(src[i]);
        acc[2 * i] += w * x.x;
        acc[2 * i + 1] += w * x.y;
      }
    }
  }
  const int64_t t = v.t0 + row / p.q_heads, h = row % p.q_heads;
  P2* dst = static_cast<P2*>(p.o) + (t * p.q_heads + h) * (kD / 2) + lane * kPairs;
  const bool any = m != -INFINITY && sum > 0.0f;
  const float inv = any ? 1.0f / sum : 0.0f;
#pragma unroll
  for (int i = 0; i < kPairs; ++i) dst[i] = Pair<E>::from2(make_float2(acc[2 * i] * inv, acc[2 * i + 1] * inv));
  if (lane == 0) p.lse[t * p.q_heads + h] = any ? m + __logf(sum) : (m != m ? m : -INFINITY);
}

template <class E>
cudaError_t launch_e(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  const int64_t rows = v.tc * p.q_heads;
  if (rows == 0) return cudaSuccess;
  const unsigned grid = unsigned((rows + kWarps - 1) / kWarps);
  switch (p.head_dim) {
    case 64: combine_kernel<E, 1><<<grid, kWarps * 32, 0, stream>>>(p, v); break;
    case 128: combine_kernel<E, 2><<<grid, kWarps * 32, 0, stream>>>(p, v); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_combine(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  if (p.q_type == ElemType::kBF16) return launch_e<__nv_bfloat16>(p, v, stream);
  return launch_e<__half>(p, v, stream);
}

}  // namespace msa::cuda::sparse_prefill

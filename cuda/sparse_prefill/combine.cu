// LSE combine of the per-slot partials of one pass: a warp per (row, head),
// deterministic (fixed order, no atomics):
//   m = max_s lse_s, w_s = exp(lse_s - m), o = sum_s w_s o_s / sum_s w_s,
//   lse = m + log(sum_s w_s); no partial (every lse_s = -inf): o = 0, lse = -inf.
// Bandwidth-bound on the partial O: each lane reads 16 bytes (8 elements) of a
// slot's row, so a warp covers 32 / (D / 8) slots per load and keeps 16 slots'
// loads in flight; the K LSEs are read once, one slot per lane.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <utility>

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
constexpr unsigned kFull = 0xffffffffu;
constexpr int kSlotsInFlight = 16;  // slots whose 16-byte loads a lane issues together

// 16 bytes at src + kOffset bytes if pred, else zeros: one predicated load
// into zeroed registers. (A C++ `pred ? load : 0` compiles to a load plus a
// predicated move that waits for it, which serialises a lane's loads; the
// immediate offset keeps one address register for the whole group.)
template <int kOffset>
__device__ __forceinline__ uint4 load16_or_zero(const uint4* src, bool pred) {
  uint4 x;
  asm("{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4+%6];\n"
      "}\n"
      : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w)
      : "l"(src), "r"(int(pred)), "n"(kOffset));
  return x;
}

// x[u] = 16 bytes at src + u * kStride bytes if bit u of ok, else zeros.
template <int kStride, int... U>
__device__ __forceinline__ void load_group(uint4* x, const uint4* src, unsigned ok, std::integer_sequence<int, U...>) {
  ((x[U] = load16_or_zero<U * kStride>(src, (ok >> U) & 1u)), ...);
}

// 8 elements (16 bytes) of a row -> float, weighted, into acc[8].
template <class E>
__device__ __forceinline__ void fma8(float* acc, float w, const uint4& x) {
  using P2 = typename Pair<E>::T;
  const uint32_t u[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = Pair<E>::to2(*reinterpret_cast<const P2*>(&u[i]));
    acc[2 * i] += w * f.x;
    acc[2 * i + 1] += w * f.y;
  }
}

template <class E>
__device__ __forceinline__ uint4 pack8(const float* a) {
  using P2 = typename Pair<E>::T;
  uint32_t u[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const P2 h = Pair<E>::from2(make_float2(a[2 * i], a[2 * i + 1]));
    u[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return make_uint4(u[0], u[1], u[2], u[3]);
}

// Lane (sub, col): slot sub of each group of kSub slots, elements [8 col, 8 col + 8).
template <class E, int kD>
__global__ void __launch_bounds__(kWarps * 32) combine_kernel(const SparsePrefillParams p, const PassView v) {
  constexpr int kLanesPerSlot = kD / 8;           // 16 (D = 128) or 8 (D = 64)
  constexpr int kSub = 32 / kLanesPerSlot;        // slots per warp-wide load: 2 or 4
  constexpr int kUnroll = kSlotsInFlight / kSub;  // loads per lane in flight
  const int lane = threadIdx.x & 31, sub = lane / kLanesPerSlot, col = lane % kLanesPerSlot;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // tl * Hq + h
  if (row >= v.tc * p.q_heads) return;  // warp-uniform
  const int K = int(p.topk);
  const float* lse = v.part_lse + row * K;
  const uint4* po = static_cast<const uint4*>(v.part_o) + row * K * kLanesPerSlot + col;

  // m = max over the slots (fmaxf: a NaN lse is ignored here, as before).
  float m = -INFINITY;
  for (int s = lane; s < K; s += 32) m = fmaxf(m, __ldg(lse + s));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, o));

  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
  float wsum = 0.0f;  // this lane's slots c0 + lane
  if (m != -INFINITY) {
    for (int c0 = 0; c0 < K; c0 += 32) {  // 32 slots: lane c0 + lane holds the weight
      const int nc = K - c0 < 32 ? K - c0 : 32;
      const float ls = lane < nc ? __ldg(lse + c0 + lane) : -INFINITY;
      const bool live = ls != -INFINITY;  // -inf: no partial written for the slot
      const float w = live ? __expf(ls - m) : 0.0f;
      wsum += w;
      const unsigned live_mask = __ballot_sync(kFull, live);
      for (int s0 = 0; s0 < nc; s0 += kSlotsInFlight) {
        uint4 x[kUnroll];
        float wx[kUnroll];
        unsigned ok = 0;  // bit u: slot s0 + u * kSub + sub (< 32) has a partial
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int s = s0 + u * kSub + sub;
          ok |= unsigned(s < nc && ((live_mask >> s) & 1u)) << u;
        }
        load_group<kSub * kD * 2>(x, po + int64_t(c0 + s0 + sub) * kLanesPerSlot, ok,
                                  std::make_integer_sequence<int, kUnroll>{});
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const float ws = __shfl_sync(kFull, w, s0 + u * kSub + sub);
          wx[u] = (ok >> u) & 1u ? ws : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) fma8<E>(acc, wx[u], x[u]);
      }
    }
  }
  // Fixed-order reductions: the kSub slot groups of acc, all lanes of wsum.
#pragma unroll
  for (int o = kLanesPerSlot; o < 32; o <<= 1) {
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] += __shfl_xor_sync(kFull, acc[i], o);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) wsum += __shfl_xor_sync(kFull, wsum, o);

  const int64_t t = v.t0 + row / p.q_heads, h = row % p.q_heads;
  const bool any = m != -INFINITY && wsum > 0.0f;
  const float inv = any ? 1.0f / wsum : 0.0f;
  if (sub == 0) {
    float out[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = acc[i] * inv;
    reinterpret_cast<uint4*>(p.o)[(t * p.q_heads + h) * kLanesPerSlot + col] = pack8<E>(out);
  }
  if (lane == 0) p.lse[t * p.q_heads + h] = any ? m + __logf(wsum) : (m != m ? m : -INFINITY);
}

template <class E>
cudaError_t launch_e(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  const int64_t rows = v.tc * p.q_heads;
  if (rows == 0) return cudaSuccess;
  const unsigned grid = unsigned((rows + kWarps - 1) / kWarps);
  switch (p.head_dim) {
    case 64: combine_kernel<E, 64><<<grid, kWarps * 32, 0, stream>>>(p, v); break;
    case 128: combine_kernel<E, 128><<<grid, kWarps * 32, 0, stream>>>(p, v); break;
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

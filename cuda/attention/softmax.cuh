// Online softmax (FlashAttention-2) over SM80 accumulator fragments, fp32,
// exp2 with the softmax scale folded with log2(e). A thread owns 2 * MMA_M
// rows ("slots": slot 2m+h = atom m, half h); the 4 threads of a quad share
// a row, so row maxima are quad-reduced per tile and row sums at the end.
//
// Scores are kept in raw units (q.k, sign already folded so that the scale
// c > 0); the running max m is raw, p = exp2(x * c2 - m * c2).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

namespace msa::cuda::attention {

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Sets the invisible columns of a (4, MMA_M, MMA_N) score fragment to -inf:
// columns >= lim[slot] (tile-relative), or every column when !tile_ok. The
// SM80 C fragment puts value (v, ., j) at tile column col0 + 8j + v, with
// col0 = 2 * (lane % 4).
template <int kRows, class AccS>
__device__ __forceinline__ void mask_scores(AccS& s, const int (&lim)[kRows], int col0, bool tile_ok) {
  constexpr int kMmaM = kRows / 2;
  constexpr int kMmaN = decltype(cute::size<2>(s))::value;
#pragma unroll
  for (int m = 0; m < kMmaM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int l = (tile_ok ? lim[2 * m + h] : -1) - col0;
#pragma unroll
      for (int j = 0; j < kMmaN; ++j)
#pragma unroll
        for (int v = 0; v < 2; ++v)
          if (8 * j + v >= l) s(2 * h + v, m, j) = -INFINITY;
    }
}

template <int kMmaM>
struct OnlineSoftmax {
  static constexpr int kRows = 2 * kMmaM;
  float m[kRows];  // running row max (raw units), -inf: nothing visible yet
  float l[kRows];  // this thread's partial row sums of p

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      m[r] = -INFINITY;
      l[r] = 0.f;
    }
  }

  // One K/V tile: s (4, MMA_M, MMA_N) raw scores (-inf = invisible) become p
  // in place, o (4, MMA_M, MMA_D) is rescaled to the new max. tile_max gets
  // each row's max over this tile (quad-reduced, raw units, -inf if none).
  // c2 > 0 (never 0: the launcher clamps it).
  template <class AccS, class AccO>
  __device__ __forceinline__ void step(AccS& s, AccO& o, float c2, float (&tile_max)[kRows]) {
    constexpr int kMmaN = decltype(cute::size<2>(s))::value;
    constexpr int kMmaD = decltype(cute::size<2>(o))::value;
    float rescale[kRows];
    bool changed = false;
#pragma unroll
    for (int mi = 0; mi < kMmaM; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 2 * mi + h;
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) mx = fmaxf(mx, fmaxf(s(2 * h, mi, j), s(2 * h + 1, mi, j)));
        mx = quad_max(mx);
        tile_max[r] = mx;
        const float new_m = fmaxf(m[r], mx);
        const float ms = new_m == -INFINITY ? 0.f : new_m * c2;
        rescale[r] = exp2f(m[r] * c2 - ms);  // 0 while m was -inf, exactly 1 when unchanged
        changed |= new_m != m[r];
        m[r] = new_m;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kMmaN; ++j)
#pragma unroll
          for (int v = 0; v < 2; ++v) {
            const float p = exp2f(fmaf(s(2 * h + v, mi, j), c2, -ms));
            s(2 * h + v, mi, j) = p;
            sum += p;
          }
        l[r] = l[r] * rescale[r] + sum;
      }
    // O rescale only when some row of the warp got a new max (rare after the
    // first tiles): skipping a factor of exactly 1 changes no bit.
    if (__any_sync(0xffffffffu, changed)) {
#pragma unroll
      for (int mi = 0; mi < kMmaM; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int j = 0; j < kMmaD; ++j) {
            o(2 * h, mi, j) *= rescale[2 * mi + h];
            o(2 * h + 1, mi, j) *= rescale[2 * mi + h];
          }
    }
  }

  // o /= row sum (times out_scale, the V dequantisation scale); lse = natural
  // log-sum-exp of the scaled scores (c_nat = c2 / log2(e)); rows that saw
  // nothing: o = 0, lse = -inf.
  template <class AccO>
  __device__ __forceinline__ void finalize(AccO& o, float c_nat, float out_scale, float (&lse)[kRows]) {
    constexpr int kMmaD = decltype(cute::size<2>(o))::value;
#pragma unroll
    for (int mi = 0; mi < kMmaM; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 2 * mi + h;
        const float sum = quad_sum(l[r]);
        const bool any = sum > 0.f;
        const float inv = any ? out_scale / sum : 0.f;
        lse[r] = any ? m[r] * c_nat + logf(sum) : -INFINITY;
#pragma unroll
        for (int j = 0; j < kMmaD; ++j) {
          o(2 * h, mi, j) *= inv;
          o(2 * h + 1, mi, j) *= inv;
        }
      }
  }
};

}  // namespace msa::cuda::attention

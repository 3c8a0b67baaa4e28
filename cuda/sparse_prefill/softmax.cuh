// Online softmax of one key tile for the sparse-prefill main kernels
// (FlashAttention-3 hopper/softmax.h style): main_kernel.cuh's two tile loops
// (mma.sync and wgmma) and main_kernel_ws.cuh's consumer warpgroups call the
// same code, so that their outputs stay bit-identical.
//
// Fragment order (S, P and O alike): the m16n8 C layout, value 2 h + vv of
// n-atom j at flat index 4 j + 2 h + vv, i.e. row 16 w + lane / 4 + 8 h and
// column 8 j + 2 (lane % 4) + vv of warp w's 16 rows. The mma.sync fragments
// (partition_fragment_C: (MMA, 1, N), compact) and the wgmma m64nN
// accumulators are both indexed this way.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>

namespace msa::cuda::sparse_prefill {

__host__ __device__ constexpr int frag_idx(int h, int vv, int j) { return 4 * j + 2 * h + vv; }

// Online softmax of tile n (kN keys) of S in acc_s, for the thread's two rows
// (h = 0: 16 w + lane / 4, h = 1: + 8) with running row_max / row_sum (log2
// domain of the scaled scores; row_sum: this thread's columns only, the quad
// sum is in softmax_finalize): mask (`masked`: only tiles past the leading
// full ones), row max over the quad, P = exp2(S scale_log2 - m) -> rP
// (Elem), row sums, O *= corr. kFirst: tile 0, where O is not live yet (it is
// zero, and corr is 0: the rescale is skipped, not computed). row_vis: the
// item's visible keys per MMA row (RowSetup::vis); tid: the thread's index
// among the kernel's 256 MMA threads; zero: a zero ptxas cannot fold
// (MainArgs::zero). (The statistics stay the caller's arrays, not members of
// a softmax object: that changed the order of NVVM's loop phis and so the
// SASS.)
template <int kN, class AccS, class AccP, class AccO, bool kFirst>
__device__ __forceinline__ void online_softmax_step(AccS& acc_s, AccP& rP, AccO& acc_o, float (&row_max)[2],
                                                    float (&row_sum)[2], std::integral_constant<bool, kFirst>,
                                                    bool masked, float scale_log2, const int32_t* row_vis, int tid,
                                                    int n, int zero) {
  using Elem = typename AccP::value_type;
  constexpr int kMmaN = kN / 8;  // n-atoms of the tile per thread
  constexpr int kOAtoms = decltype(cute::size(acc_o))::value / 4;
  static_assert(decltype(cute::size(acc_s))::value == 4 * kMmaN, "S holds the tile's kN columns");
  static_assert(kMmaN % 2 == 0, "two interleaved max chains per row");
  // Scaled scores x = S sc: for sc > 0 (the usual case) the max is taken on
  // the raw S and scaled once (rounding is monotone, so fl(sc max S) is the
  // max of fl(sc S)), and P = exp2(fma(S, sc, -m)): one FFMA per score
  // instead of a multiply and a subtract. Any other scale multiplies S first
  // and continues with sc = 1.
  float sc = scale_log2;
  if (!(sc > 0.0f)) {
#pragma unroll
    for (int i = 0; i < cute::size(acc_s); ++i) acc_s(i) *= sc;
    sc = 1.0f;
  }
  if (masked) {
    // Column 8 j + 2 (lane % 4) + vv of the tile is visible iff it is
    // below vis - n kN; compared as 8 j + vv < that - 2 (lane % 4). The
    // row's vis is read again here (at an index ptxas cannot hoist out of
    // the loop: n & zero), so it holds no register across the loop.
    const int t = tid + (n & zero), r0 = (t >> 5) * 16 + ((t & 31) >> 2);
    const int lim0 = row_vis[r0] - n * kN - 2 * (t & 3), lim1 = row_vis[r0 + 8] - n * kN - 2 * (t & 3);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int lim = h == 0 ? lim0 : lim1;
#pragma unroll
      for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
        for (int vv = 0; vv < 2; ++vv) {
          float& x = acc_s(frag_idx(h, vv, j));
          x = 8 * j + vv < lim ? x : -INFINITY;
        }
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    // Row max of the raw scores: two chains (even / odd n-atoms), exact.
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kMmaN; j += 2) {
#pragma unroll
      for (int vv = 0; vv < 2; ++vv) {
        mx0 = fmaxf(mx0, acc_s(frag_idx(h, vv, j)));
        mx1 = fmaxf(mx1, acc_s(frag_idx(h, vv, j + 1)));
      }
    }
    float mx = fmaxf(mx0, mx1);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx = fmaxf(row_max[h], mx * sc);
    const float m_use = mx == -INFINITY ? 0.0f : mx;
    const float corr = exp2f(row_max[h] - m_use);  // row_max = -inf -> 0
    row_max[h] = mx;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
      for (int vv = 0; vv < 2; ++vv) {
        const float pe = exp2f(fmaf(acc_s(frag_idx(h, vv, j)), sc, -m_use));
        rP(frag_idx(h, vv, j)) = Elem(pe);
        sum += pe;
      }
    }
    row_sum[h] = row_sum[h] * corr + sum;
    if constexpr (!kFirst) {
#pragma unroll
      for (int j = 0; j < kOAtoms; ++j) {
#pragma unroll
        for (int vv = 0; vv < 2; ++vv) acc_o(frag_idx(h, vv, j)) *= corr;
      }
    }
  }
}

// After the last tile: the row sums over the quad; row_sum[h] becomes the O
// scale out_scale / l (0 for a row without a visible key: it is not needed
// past this point), row_lse[h] = m + log l in natural log (-inf there).
__device__ __forceinline__ void softmax_finalize(const float (&row_max)[2], float (&row_sum)[2], float out_scale,
                                                 float (&row_lse)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = row_sum[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const bool any = row_max[h] != -INFINITY && sum > 0.0f;
    row_sum[h] = any ? out_scale / sum : 0.0f;
    row_lse[h] = any ? (row_max[h] + __log2f(sum)) * 0.69314718055994530942f : -INFINITY;
  }
}

}  // namespace msa::cuda::sparse_prefill

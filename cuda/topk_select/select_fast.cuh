// topk_select: the fast path for m <= 32 on a staged segment (threshold = m-th largest
// lane maximum, <= 32 candidates ranked exactly); it returns false for anything it cannot
// decide, and the caller runs the exact selection. See topk_select.cu.
#pragma once

#include <cstdint>

#include "cuda/topk_select/round.cuh"
#include "cuda/topk_select/select_exact.cuh"

namespace msa::cuda::topk {

// Rank of key k (lane `lane`) among the 32 keys[0..32): larger keys, plus equal
// keys of lower lanes (so the ranks are 0..31, each once). All 32 lanes call it.
__device__ __forceinline__ int warp_rank(const uint32_t* keys, uint32_t k, int lane) {
  uint32_t gt = 0u;
#pragma unroll
  for (int g = 0; g < 8; ++g) {
    const uint4 v = *reinterpret_cast<const uint4*>(&keys[4 * g]);
    gt |= (v.x > k ? 1u : 0u) << (4 * g);
    gt |= (v.y > k ? 1u : 0u) << (4 * g + 1);
    gt |= (v.z > k ? 1u : 0u) << (4 * g + 2);
    gt |= (v.w > k ? 1u : 0u) << (4 * g + 3);
  }
  return __popc(gt) + __popc(__match_any_sync(kFull, k) & ((1u << lane) - 1u));
}

// Staged segment elements outside [elo, ehi) (elo < ehi) -> NaN, by whole
// 16-byte chunks where possible. A __syncwarp() must follow before reading.
template <int V>
__device__ __forceinline__ void nan_outside(uint32_t* st, int elo, int ehi, int lane) {
  constexpr uint32_t kNaN = 0x7fffffffu;
  const uint4 nan4 = make_uint4(kNaN, kNaN, kNaN, kNaN);
  const int qlo = elo >> 2, qhi = (ehi + 3) >> 2;  // whole chunks [0, qlo) and [qhi, V*32)
  for (int q = lane; q < qlo; q += 32) reinterpret_cast<uint4*>(st)[q] = nan4;
  if (lane < (elo & 3)) st[qlo * 4 + lane] = kNaN;
  if (lane < qhi * 4 - ehi) st[ehi + lane] = kNaN;
  for (int q = qhi + lane; q < V * 32; q += 32) reinterpret_cast<uint4*>(st)[q] = nan4;
}

// Fast selection of the m <= 32 best eligible scores of a score segment (the
// usual case), on the floats themselves: x holds the lane's chunks j*32+lane
// (position (j*32+lane)*4+c), ineligible elements are NaN. Returns false (and
// writes nothing) when it cannot decide; the exact path runs then.
//  1. t = m-th largest lane maximum (fmaxf skips NaN; the maxima are ranked
//     against each other through shared memory: no serial sort). Every
//     element that is not a candidate (x >= t fails: smaller or NaN) ranks
//     below every candidate, so the best m are the best of the candidates as
//     soon as there are C >= m of them, whatever t is. (The compares may flush
//     subnormals: a monotone map, the candidates only grow.) Needs C <= 32.
//  2. The candidate bits, transposed through shared memory into 32-position
//     words (lane w: positions [32w, 32w+32)), give the candidates in position
//     order: candidate i (one per lane) is the i-th in ascending position.
//  3. Exact rank of candidate i on the order-preserving keys: larger keys,
//     plus equal keys at lower positions (= lower lanes, __match_any_sync);
//     the chosen ones are emitted in lane order, i.e. ascending positions.
template <int V, class Emit>
__device__ __forceinline__ bool select_fast(const float (&x)[V][4], int m, int lane,
                                            const uint32_t* stage, WarpSmem& sm, Emit emit) {
  static_assert(V == 4 || V == 8 || V == 16, "fast path: 4, 8 or 16 chunks per lane");
  constexpr int NH = V > 8 ? 2 : 1;  // 32-bit candidate mask words per lane
  // 1. Lane maximum (pairwise tree: short dependency chain).
  float t4[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    float v = x[0][c];
#pragma unroll
    for (int j = 1; j < V; ++j) v = fmaxf(v, x[j][c]);
    t4[c] = v;
  }
  float mx = fmaxf(fmaxf(t4[0], t4[1]), fmaxf(t4[2], t4[3]));
  if ((__float_as_uint(mx) & 0x7fffffffu) > 0x7f800000u) mx = -INFINITY;  // no eligible number
  // t = the lane maximum of rank m-1 (keys, ties to the lower lane: unique ranks).
  uint32_t* keys = reinterpret_cast<uint32_t*>(sm.pre);
  const uint32_t mk = number_key(mx);
  keys[lane] = mk;
  __syncwarp();
  const unsigned win = __ballot_sync(kFull, warp_rank(keys, mk, lane) == m - 1);
  const float t = __shfl_sync(kFull, mx, __ffs(win) - 1);
  // Candidate mask: bit (j%8)*4+c of word j/8 for chunk j, element c.
  uint32_t cmw[NH];
#pragma unroll
  for (int h = 0; h < NH; ++h) cmw[h] = 0u;
#pragma unroll
  for (int j = 0; j < V; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) cmw[j / 8] |= (x[j][c] >= t ? 1u : 0u) << ((j % 8) * 4 + c);
  int cnt = 0;
#pragma unroll
  for (int h = 0; h < NH; ++h) cnt += __popc(cmw[h]);
  const int C = int(__reduce_add_sync(kFull, unsigned(cnt)));
  if (C < m || C > 32) return false;
  // 2. Transpose: word w = lane + 32h holds chunk j = w/4, lanes 8(w%4)..+7.
#pragma unroll
  for (int h = 0; h < NH; ++h) sm.bits[h * 32 + lane] = cmw[h];
  __syncwarp();
  const int q8 = (lane & 3) * 8, sh = (lane >> 2) * 4;
  uint32_t W[NH];
#pragma unroll
  for (int h = 0; h < NH; ++h) {
    const uint4 a = *reinterpret_cast<const uint4*>(&sm.bits[h * 32 + q8]);
    const uint4 b = *reinterpret_cast<const uint4*>(&sm.bits[h * 32 + q8 + 4]);
    W[h] = ((a.x >> sh) & 15u) | (((a.y >> sh) & 15u) << 4) | (((a.z >> sh) & 15u) << 8) |
           (((a.w >> sh) & 15u) << 12) | (((b.x >> sh) & 15u) << 16) | (((b.y >> sh) & 15u) << 20) |
           (((b.z >> sh) & 15u) << 24) | (((b.w >> sh) & 15u) << 28);
  }
  // Exclusive prefix of the word counts in position order (h, then lane);
  // both counts in one scan (each <= C <= 32 fits 8 bits).
  const unsigned own = unsigned(__popc(W[0])) | (NH > 1 ? unsigned(__popc(W[NH - 1])) << 8 : 0u);
  unsigned incl = own;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned v = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += v;
  }
  const unsigned excl = incl - own;
  int base[NH];
  base[0] = int(excl & 0xffu);
  if constexpr (NH > 1) base[NH - 1] = int(__shfl_sync(kFull, incl, 31) & 0xffu) + int(excl >> 8);
  // Candidate i -> ck[i] (key), cp[i] (position), read back from the stage.
  uint32_t* ck = keys;  // the lane maxima were read before the transpose's __syncwarp
  int* cp = sm.pre + 32;
#pragma unroll
  for (int h = 0; h < NH; ++h) {
    uint32_t w = W[h];
    int idx = base[h];
    const int pbase = (h * 32 + lane) * 32;
    while (w != 0u) {
      const int p = pbase + __ffs(w) - 1;
      w &= w - 1u;
      ck[idx] = number_key(__uint_as_float(stage[p]));
      cp[idx] = p;
      ++idx;
    }
  }
  if (lane >= C) ck[lane] = 0u;  // below every candidate key (>= 0x00800000)
  __syncwarp();
  // 3. Rank among the candidates.
  const uint32_t ki = ck[lane];
  const int pi = cp[lane];
  const unsigned lt = (1u << lane) - 1u;
  const int rank = warp_rank(ck, ki, lane);  // every lane: __match_any_sync inside
  const bool sel = lane < C && rank < m;
  const unsigned sb = __ballot_sync(kFull, sel);
  if (sel) emit(__popc(sb & lt), pi, ki);
  return true;
}

}  // namespace msa::cuda::topk

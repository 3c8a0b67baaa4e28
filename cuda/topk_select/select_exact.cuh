// topk_select: the exact selection of the m best keys of a segment held in a warp's
// registers (threshold from the lane maxima, compaction + exact ranking in shared memory,
// bisection fallback), emitted in ascending position order. See topk_select.cu.
#pragma once

#include <cstdint>

#include "cuda/topk_select/round.cuh"

namespace msa::cuda::topk {

// Emits, in ascending position order, the elements whose flag is set:
// emit(index among flagged, position, key). Position of (j, c) in lane l:
// (j*32 + l)*4 + c.
template <int V, class Flag, class Emit>
__device__ __forceinline__ int emit_ordered(const uint32_t (&key)[V][4], int lane, Flag flag,
                                            Emit emit) {
  const unsigned lt = (1u << lane) - 1u;
  int base = 0;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    bool f[4];
    unsigned bal[4];
    int before = 0, total = 0;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      f[c] = flag(key[j][c]);
      bal[c] = __ballot_sync(kFull, f[c]);
      before += __popc(bal[c] & lt);
      total += __popc(bal[c]);
    }
    int local = base + before;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (f[c]) emit(local, (j * 32 + lane) * 4 + c, key[j][c]);
      local += f[c] ? 1 : 0;
    }
    base += total;
  }
  return base;
}

template <int V>
__device__ __forceinline__ int warp_count_ge(const uint32_t (&key)[V][4], uint32_t c) {
  int cnt = 0;
#pragma unroll
  for (int j = 0; j < V; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) cnt += key[j][e] >= c ? 1 : 0;
  return int(__reduce_add_sync(kFull, unsigned(cnt)));
}

// Per-warp shared memory of the selection. The fast path (select_fast) reuses
// bits as its candidate masks and pre as its candidate keys [0, 32) and
// positions [32, 64).
struct __align__(16) WarpSmem {
  uint2 cand[kCap];  // (key, position) of the compacted candidates
  uint32_t bits[64];  // chosen positions (segments <= 2048)
  int pre[64];        // chosen positions before word w
};

// Emits the m best elements (largest key, then lowest position) among the
// keys != 0: emit(index in ascending position order, position, key).
// Requires 1 <= m <= E = #(keys != 0).
template <int V, class Emit>
__device__ __forceinline__ void select_top(const uint32_t (&key)[V][4], int m, int E, int lane,
                                           WarpSmem& sm, Emit emit) {
  if (m >= E) {
    emit_ordered<V>(key, lane, [](uint32_t k) { return k != 0u; }, emit);
    return;
  }
  // 1. Lower bound t of the m-th largest key.
  uint32_t t = 1u;
  if (m <= 32) {
    uint32_t mx = 0u;
#pragma unroll
    for (int j = 0; j < V; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) mx = max(mx, key[j][c]);
    // Descending bitonic sort of the 32 lane maxima.
#pragma unroll
    for (int k = 2; k <= 32; k <<= 1) {
#pragma unroll
      for (int j = k >> 1; j > 0; j >>= 1) {
        const uint32_t o = __shfl_xor_sync(kFull, mx, j);
        const bool desc = (lane & k) == 0, lower = (lane & j) == 0;
        mx = (desc == lower) ? max(mx, o) : min(mx, o);
      }
    }
    t = max(__shfl_sync(kFull, mx, m - 1), 1u);
  } else if (m <= 64) {
    uint32_t m1 = 0u, m2 = 0u;
#pragma unroll
    for (int j = 0; j < V; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        m2 = max(m2, min(m1, key[j][c]));
        m1 = max(m1, key[j][c]);
      }
    uint32_t v = 0u;  // m-th largest of the 64 lane top-2 values
#pragma unroll 1
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t c = v | (1u << bit);
      const unsigned cnt = __reduce_add_sync(kFull, unsigned(m1 >= c) + unsigned(m2 >= c));
      if (cnt >= unsigned(m)) v = c;
    }
    t = max(v, 1u);
  }
  // At least m keys are >= t (all >= 1, so eligible): the best m are among them.
  int cnt = 0;
#pragma unroll
  for (int j = 0; j < V; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) cnt += key[j][e] >= t ? 1 : 0;
  const int C = int(__reduce_add_sync(kFull, unsigned(cnt)));
  if (C <= kCap) {
    // 2. Compact the candidates (lane-major order), rank them exactly.
    int incl = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += v;
    }
    int off = incl - cnt;
#pragma unroll
    for (int j = 0; j < V; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (key[j][c] >= t) {
          sm.cand[off] = make_uint2(key[j][c], unsigned((j * 32 + lane) * 4 + c));
          ++off;
        }
    sm.bits[lane] = 0u;
    sm.bits[lane + 32] = 0u;
    __syncwarp();
    const int i0 = lane, i1 = lane + 32;
    const uint2 c0 = i0 < C ? sm.cand[i0] : make_uint2(0u, 0u);
    const uint2 c1 = i1 < C ? sm.cand[i1] : make_uint2(0u, 0u);
    int r0 = 0, r1 = 0;
    if (C <= 32) {
#pragma unroll 4
      for (int j = 0; j < C; ++j) {
        const uint2 cj = sm.cand[j];
        r0 += (cj.x > c0.x || (cj.x == c0.x && cj.y < c0.y)) ? 1 : 0;
      }
    } else {
#pragma unroll 4
      for (int j = 0; j < C; ++j) {
        const uint2 cj = sm.cand[j];
        r0 += (cj.x > c0.x || (cj.x == c0.x && cj.y < c0.y)) ? 1 : 0;
        r1 += (cj.x > c1.x || (cj.x == c1.x && cj.y < c1.y)) ? 1 : 0;
      }
    }
    const bool sel0 = i0 < C && r0 < m, sel1 = i1 < C && r1 < m;
    // 3. Ascending position order: bitmap of the chosen positions.
    if (sel0) atomicOr(&sm.bits[c0.y >> 5], 1u << (c0.y & 31u));
    if (sel1) atomicOr(&sm.bits[c1.y >> 5], 1u << (c1.y & 31u));
    __syncwarp();
    const uint32_t w0 = sm.bits[2 * lane], w1 = sm.bits[2 * lane + 1];
    const int n0 = __popc(w0);
    const int nw = n0 + __popc(w1);
    int winc = nw;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(kFull, winc, o);
      if (lane >= o) winc += v;
    }
    sm.pre[2 * lane] = winc - nw;
    sm.pre[2 * lane + 1] = winc - nw + n0;
    __syncwarp();
    if (sel0) {
      const uint32_t w = c0.y >> 5;
      emit(sm.pre[w] + __popc(sm.bits[w] & ((1u << (c0.y & 31u)) - 1u)), int(c0.y), c0.x);
    }
    if (sel1) {
      const uint32_t w = c1.y >> 5;
      emit(sm.pre[w] + __popc(sm.bits[w] & ((1u << (c1.y & 31u)) - 1u)), int(c1.y), c1.x);
    }
    __syncwarp();
    return;
  }
  // 4. Exact m-th largest key by bisection, then the lowest positions among
  // the keys equal to it.
  uint32_t kth = 0u;
#pragma unroll 1
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t c = kth | (1u << bit);
    if (warp_count_ge<V>(key, c) >= m) kth = c;
  }
  const int need = m - (kth == 0xffffffffu ? 0 : warp_count_ge<V>(key, kth + 1u));  // >= 1
  const unsigned lt = (1u << lane) - 1u;
  int eq_base = 0, out_base = 0;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    bool eq[4];
    unsigned eb[4];
    int eq_before = 0, eq_total = 0;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      eq[c] = key[j][c] == kth;
      eb[c] = __ballot_sync(kFull, eq[c]);
      eq_before += __popc(eb[c] & lt);
      eq_total += __popc(eb[c]);
    }
    bool sel[4];
    int eq_rank = eq_base + eq_before;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      sel[c] = key[j][c] > kth || (eq[c] && eq_rank < need);
      eq_rank += eq[c] ? 1 : 0;
    }
    eq_base += eq_total;
    unsigned sb[4];
    int before = 0, total = 0;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      sb[c] = __ballot_sync(kFull, sel[c]);
      before += __popc(sb[c] & lt);
      total += __popc(sb[c]);
    }
    int idx = out_base + before;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (sel[c]) emit(idx, (j * 32 + lane) * 4 + c, key[j][c]);
      idx += sel[c] ? 1 : 0;
    }
    out_base += total;
  }
}

}  // namespace msa::cuda::topk

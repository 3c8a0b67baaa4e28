// Block top-k selection (docs/ffi-contract.md, msa_topk_select).
//
// Persistent warps loop over (row, segment) items; a segment (<= 2048 blocks)
// lives in registers: lane l holds float4 chunks j*32+l (j < V), so every load
// instruction of the warp reads 512 contiguous bytes. With 16-byte aligned
// rows, the next item's segment is prefetched with cp.async into a per-warp
// shared-memory double buffer while the current one is selected (the exact
// path reads back only the lane's own chunks; the fast path reads any lane's,
// after a __syncwarp()).
// Scores become order-preserving uint32 keys (integer ops only: NaN -> 1,
// below every number; -0 -> +0; 0 marks "not eligible"); ties are broken by
// position, and positions are in id order.
//
// Score segments of >= 1024 blocks (V >= 8) with m <= 32 slots (the usual
// case) first try select_fast: threshold, compaction and ranking on the
// staged floats with shared-memory transposes instead of serial shuffle
// chains (see there); it hands anything it cannot decide with at most 32
// candidates (ties, NaN, short rows) to the exact selection below.
//
// Exact selection of the m best keys of a segment:
//  1. a lower bound t of the m-th largest key: the m-th largest lane maximum
//     (m <= 32, bitonic sort across lanes) or of the lane top-2 (m <= 64,
//     bisection); at least m keys are >= t, so the top m are among them;
//  2. if at most 64 keys are >= t: compact them (prefix sum of lane counts)
//     to shared memory, rank each exactly against the others (key, then
//     position), and place the chosen ones in ascending position order with a
//     64-word position bitmap;
//  3. otherwise (ties, adversarial rows): exact bisection of the m-th largest
//     key over the registers, then the lowest positions among equal keys.
// The chosen positions are emitted in ascending order with ballot prefixes.
//
// A row of one segment writes ids directly (forced blocks + chosen, ascending,
// -1 padding). Otherwise each segment writes its local best min(M, E) as
// (key, id) slots to scratch and merge rounds run the same kernel on them.
#include "cuda/topk_select/topk_select.h"

#include <algorithm>
#include <climits>
#include <utility>

namespace msa::cuda {
namespace {

constexpr int kWarps = 4;   // warps per CTA, each on its own (row, segment)
constexpr int kCap = 64;    // candidates ranked in shared memory
constexpr unsigned kFull = 0xffffffffu;

// Division by a runtime constant d >= 1 (heads, block_size, splits): multiply
// and shifts for 32-bit dividends (q = (t + ((n - t) >> sh1)) >> sh2 with
// t = umulhi(n, mul), Granlund-Montgomery), 64-bit division otherwise. The
// constants come from the launcher (shapes only).
struct FastDiv {
  int64_t d = 1;
  uint32_t mul = 1, sh1 = 0, sh2 = 0;
  bool ok = true;  // d < 2^32
};
inline FastDiv make_fastdiv(int64_t d) {
  FastDiv f;
  f.d = d < 1 ? 1 : d;
  if (uint64_t(f.d) >> 32) {
    f.ok = false;
    return f;
  }
  uint32_t l = 0;
  while ((uint64_t(1) << l) < uint64_t(f.d)) ++l;  // ceil(log2 d) <= 32
  f.mul = uint32_t((((uint64_t(1) << l) - uint64_t(f.d)) << 32) / uint64_t(f.d) + 1);
  f.sh1 = l < 1 ? l : 1;
  f.sh2 = l > 1 ? l - 1 : 0;
  return f;
}
__device__ __forceinline__ uint32_t fdiv32(uint32_t n, const FastDiv& f) {
  if (!f.ok) return 0u;  // d >= 2^32 > n
  const uint32_t t = __umulhi(n, f.mul);
  return (t + ((n - t) >> f.sh1)) >> f.sh2;
}
__device__ __forceinline__ int64_t fdiv(int64_t n, const FastDiv& f) {  // n >= 0
  if (f.ok && (uint64_t(n) >> 32) == 0) {
    const uint32_t u = uint32_t(n), t = __umulhi(u, f.mul);
    return int64_t((t + ((u - t) >> f.sh1)) >> f.sh2);
  }
  return n / f.d;
}

struct RoundArgs {
  // input: round 0 reads scores, later rounds candidates of the previous one
  const float* scores;       // [rows, nb]
  const uint32_t* in_keys;   // [rows, in_stride]
  const int32_t* in_ids;     // [rows, in_stride]
  int64_t in_stride;
  int64_t n;                 // elements per row in this round
  int64_t seg;               // elements per segment (multiple of 4)
  int64_t splits;            // segments per row
  int64_t items;             // rows * splits
  // output
  bool final_out;
  int32_t* ids;              // [rows, k] (final round)
  uint32_t* out_keys;        // [rows, out_stride] (other rounds)
  int32_t* out_ids;
  int64_t out_stride;
  // row metadata
  const int32_t* q_indptr;
  const int32_t* kv_lens;
  int64_t rows, tokens, heads, batch, nb, k, local, sink, block_size;
  int64_t kv_cap;            // kv_lens are clipped to [0, kv_cap = nb * block_size]
  bool causal;
  FastDiv heads_div, bs_div, splits_div;
};

// Order-preserving key of a number (no NaN): positives u | 2^31, negatives -u
// (two's complement; -0 -> 2^31 like +0). -inf -> 0x00800000, +inf ->
// 0xff800000; NaN would land outside [0x00800000, 0xff800000] (see key_is_nan).
__device__ __forceinline__ uint32_t number_key(float x) {
  const uint32_t u = __float_as_uint(x);
  const uint32_t s = uint32_t(int32_t(u) >> 31);
  return (u ^ (s | 0x80000000u)) - s;
}
// For a number_key of any bit pattern: true iff it came from a NaN.
__device__ __forceinline__ bool key_is_nan(uint32_t k) {
  return k > 0xff800000u || k < 0x00800000u;
}
// Key of a score: NaN -> 1 (below -inf), numbers as number_key (>= 0x00800000).
[[maybe_unused]] __device__ __forceinline__ uint32_t score_key(float x) {
  const uint32_t k = number_key(x);
  return key_is_nan(k) ? 1u : k;
}

__device__ __forceinline__ int64_t div_s64(int64_t a, int64_t b) {  // a >= 0, b > 0
  if (((uint64_t(a) | uint64_t(b)) >> 32) == 0) return int64_t(uint32_t(a) / uint32_t(b));
  return a / b;
}

// n / block_size (FD: the launcher's multiply-shift constants).
template <bool FD>
__device__ __forceinline__ int64_t div_bs(const RoundArgs& a, int64_t n) {
  if constexpr (FD) return fdiv(n, a.bs_div);
  else return div_s64(n, a.block_size);
}

// Number of visible blocks of the row of query token t (same value in every
// lane). Sequence b of row t: b = f - 1 where f is the first index with
// q_indptr[f] > t; this equals the clamped, made-monotone q_indptr of the CPU
// handlers (ffi/common/sequences.h) for any device data.
template <bool FD>
__device__ __forceinline__ int64_t row_nvis(const RoundArgs& a, int64_t t, int lane) {
  int64_t f = -1;
  int pmax = INT_MIN;  // max of q_indptr[0..f)
  for (int64_t base = 0; base <= a.batch; base += 32) {
    const int64_t idx = base + lane;
    const bool in = idx <= a.batch;
    const int v = in ? a.q_indptr[idx] : INT_MIN;
    const unsigned gt = __ballot_sync(kFull, in && int64_t(v) > t);
    const int first = gt ? __ffs(gt) - 1 : 32;
    pmax = max(pmax, __reduce_max_sync(kFull, (in && lane < first) ? v : INT_MIN));
    if (gt) {
      f = base + first;
      break;
    }
  }
  if (f <= 0) return 0;  // row before the first sequence or after the last
  const int64_t b = f - 1;
  const int64_t lo = max(int64_t(pmax), int64_t(0));                // <= t
  const int64_t hi = min(int64_t(a.q_indptr[f]), a.tokens);         // > t
  const int64_t q_len = hi - lo, i = t - lo;
  const int64_t L = min(max(int64_t(a.kv_lens[b]), int64_t(0)), a.kv_cap);
  int64_t nvis = L == 0 ? 0 : div_bs<FD>(a, L - 1) + 1;  // ceil(L / bs), no overflow
  if (a.causal) {
    const int64_t pos = L - q_len + i;
    nvis = pos < 0 ? 0 : min(nvis, div_bs<FD>(a, pos) + 1);
  }
  return min(nvis, a.nb);
}

// row_nvis for batch < 32 from lane registers ind = q_indptr[lane] (lane <=
// batch, else INT_MIN) and len = kv_lens[lane] (lane < batch): same result.
template <bool FD>
__device__ __forceinline__ int64_t row_nvis_small(const RoundArgs& a, int64_t t, int lane, int ind,
                                                  int len) {
  const bool in = lane <= int(a.batch);
  const unsigned gt = __ballot_sync(kFull, in && int64_t(ind) > t);
  if (gt == 0u) return 0;
  const int f = __ffs(gt) - 1;
  const int pmax = __reduce_max_sync(kFull, (in && lane < f) ? ind : INT_MIN);
  const int hi_v = __shfl_sync(kFull, ind, f);
  const int len_b = __shfl_sync(kFull, len, max(f - 1, 0));
  if (f <= 0) return 0;  // row before the first sequence
  if constexpr (FD) {
    // 32-bit: lo <= t < hi <= INT_MAX (int32 q_indptr), 0 <= L <= INT_MAX and
    // L - q_len <= pos = L - q_len + i < L.
    const int lo = max(pmax, 0);
    const int hi = int(min(int64_t(hi_v), a.tokens));
    const int q_len = hi - lo, i = int(t) - lo;
    const int L = int(min(int64_t(max(len_b, 0)), a.kv_cap));
    int nvis = L == 0 ? 0 : int(fdiv32(uint32_t(L - 1), a.bs_div)) + 1;
    if (a.causal) {
      const int pos = L - q_len + i;
      nvis = pos < 0 ? 0 : min(nvis, int(fdiv32(uint32_t(pos), a.bs_div)) + 1);
    }
    return min(int64_t(nvis), a.nb);
  } else {
    const int64_t lo = max(int64_t(pmax), int64_t(0));
    const int64_t hi = min(int64_t(hi_v), a.tokens);
    const int64_t q_len = hi - lo, i = t - lo;
    const int64_t L = min(max(int64_t(len_b), int64_t(0)), a.kv_cap);
    int64_t nvis = L == 0 ? 0 : div_bs<FD>(a, L - 1) + 1;
    if (a.causal) {
      const int64_t pos = L - q_len + i;
      nvis = pos < 0 ? 0 : min(nvis, div_bs<FD>(a, pos) + 1);
    }
    return min(nvis, a.nb);
  }
}

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

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool ok) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(ok ? 16 : 0)
               : "memory");
}
// Unpredicated copy of 16 bytes at constant byte offsets from both bases.
template <int OFF>
__device__ __forceinline__ void cp_async16_at(uint32_t smem_base, const void* gmem_base) {
  asm volatile("cp.async.cg.shared.global [%0+%2], [%1+%2], 16;\n" ::"r"(smem_base), "l"(gmem_base), "n"(OFF)
               : "memory");
}
// Chunks J*32 + lane of a segment (512 bytes apart).
template <int... J>
__device__ __forceinline__ void cp_async_chunks(uint32_t smem_base, const void* gmem_base,
                                                std::integer_sequence<int, J...>) {
  (cp_async16_at<J * 512>(smem_base, gmem_base), ...);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Dynamic shared memory of the ASYNC kernels: 2 stages x kWarps x V*512 bytes.
template <int V>
constexpr int async_smem_bytes() { return 2 * kWarps * V * 512; }

// SCORES: round 0 (input = scores, ids = positions); else a merge round
// (input = candidate keys/ids). ASYNC: rows are 16-byte aligned (nb % 4 == 0,
// aligned scores; always for merge rounds): segments are prefetched with
// cp.async into shared memory one item ahead. Persistent: warp w of CTA b
// takes items w + kWarps*b, then + kWarps*gridDim.x, ...
template <int V, bool SCORES, bool ASYNC>
constexpr int min_ctas() { return V >= 16 ? 3 : (V >= 8 ? (SCORES ? 5 : 4) : 8); }

template <int V, bool SCORES, bool ASYNC>
__global__ void __launch_bounds__(kWarps * 32, min_ctas<V, SCORES, ASYNC>()) topk_round_kernel(const RoundArgs a) {
  // Score rounds with staged segments of 8 or 16 chunks per lane try
  // select_fast first; it reads other lanes' staged elements (hence the
  // __syncwarp()s). (V = 4 would not fit its 64-register budget.) These
  // instances also take the division constants and the item count from the
  // launcher and keep the row metadata in shared memory: fewer live registers
  // for the exact path in the same kernel (95 at V = 8, 5 CTAs per SM).
  constexpr bool kFast = SCORES && ASYNC && V >= 8;
  __shared__ WarpSmem s_sel[kWarps];
  __shared__ int s_meta[kFast ? kWarps : 1][64];  // kFast: q_indptr[lane], kv_lens[lane]
  extern __shared__ __align__(16) uint8_t s_dyn[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t total = kFast ? a.items : a.rows * a.splits;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  int64_t item = int64_t(blockIdx.x) * kWarps + warp;
  const int K = int(a.k);
  const int sink = int(a.sink), local = int(a.local);
  const int M = K - sink - local;
  constexpr int kStageElems = V * 128;  // 4-byte elements per stage
  uint32_t* stage_base = reinterpret_cast<uint32_t*>(s_dyn) + warp * 2 * kStageElems;

  // Item -> (row, segment index, first element, elements).
  auto split_item = [&](int64_t it, int64_t& row, int64_t& sidx) {
    if constexpr (kFast) row = a.splits == 1 ? it : fdiv(it, a.splits_div);
    else row = div_s64(it, a.splits);
    sidx = it - row * a.splits;
  };
  // Prefetch of item `it` into stage `st` (lane's own chunks j*32+lane).
  auto prefetch = [&](int64_t it, int st) {
    int64_t row, sidx;
    split_item(it, row, sidx);
    const int64_t p0 = sidx * a.seg;
    const int n_seg = int(min(a.seg, a.n - p0));
    const uint32_t* src;
    if constexpr (SCORES) src = reinterpret_cast<const uint32_t*>(a.scores) + row * a.nb + p0;
    else src = a.in_keys + row * a.in_stride + p0;
    uint32_t* dst = stage_base + st * kStageElems;
    if (n_seg == V * 128) {  // whole segment: no predicates, constant offsets
      const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst + lane * 4));
      const uint32_t* s = src + lane * 4;
      cp_async_chunks(d, s, std::make_integer_sequence<int, V>{});
      return;
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int q = j * 32 + lane;
      const bool ok = q * 4 < n_seg;
      cp_async16(dst + q * 4, ok ? src + q * 4 : src, ok);
    }
  };
  if constexpr (ASYNC) {
    if (item < total) prefetch(item, 0);
    cp_async_commit();
  }
  // Few sequences (the usual case): their metadata stays in lane registers
  // (kFast: in the warp's shared memory, read per item; fewer live registers).
  const bool small_batch = a.batch < 32;
  int ind = INT_MIN, len = 0;
  if (small_batch) {
    if (lane <= int(a.batch)) ind = a.q_indptr[lane];
    if (lane < int(a.batch)) len = a.kv_lens[lane];
  }
  if constexpr (kFast) {
    s_meta[warp][lane] = ind;
    s_meta[warp][32 + lane] = len;
    __syncwarp();
  }

#pragma unroll 1
  for (int iter = 0; item < total; ++iter, item += stride) {
    if constexpr (ASYNC) {
      // The stage refilled now was read (by any lane, kFast) in the previous item.
      if constexpr (kFast) __syncwarp();
      if (item + stride < total) prefetch(item + stride, (iter + 1) & 1);
      cp_async_commit();
      // This item's chunks (the lane's own copies) landed; waiting here, also
      // for items skipped below, keeps at most one copy per stage in flight.
      cp_async_wait<1>();
      if constexpr (kFast) __syncwarp();  // ... and every lane's copies are visible
    }
    int64_t row, sidx;
    split_item(item, row, sidx);
    const int64_t t_row = kFast ? fdiv(row, a.heads_div) : div_s64(row, a.heads);
    if constexpr (kFast) {
      ind = s_meta[warp][lane];
      len = s_meta[warp][32 + lane];
    }
    const int64_t nvis = small_batch ? row_nvis_small<kFast>(a, t_row, lane, ind, len)
                                     : row_nvis<kFast>(a, t_row, lane);
    int32_t* out_row = a.final_out ? a.ids + row * a.k : nullptr;

    if (nvis <= a.k) {  // every visible block is chosen
      if (a.final_out)
        for (int x = lane; x < K; x += 32) out_row[x] = x < nvis ? x : -1;
      continue;
    }
    // nvis > K >= local + sink: forced sinks [0, sink) and locals [nvis-local, nvis),
    // eligible [sink, nvis-local), M = K - sink - local slots.
    if (a.final_out) {
      for (int x = lane; x < sink; x += 32) out_row[x] = x;
      for (int x = lane; x < local; x += 32) out_row[K - local + x] = int(nvis - local + x);
    }
    if (M <= 0) continue;

    const int64_t p0 = sidx * a.seg;
    const int n_seg = int(min(a.seg, a.n - p0));
    uint32_t* const stage = stage_base + (iter & 1) * kStageElems;
    if constexpr (kFast) {
      const int elo = int(min(max(int64_t(sink) - p0, int64_t(0)), int64_t(n_seg)));
      const int ehi = int(min(max(nvis - local - p0, int64_t(0)), int64_t(n_seg)));
      const int E = max(ehi - elo, 0);
      const int m = min(M, E);
      if (M <= 32 && m > 0 && m < E) {
        // Ineligible elements -> NaN in the stage (the exact path masks them
        // again by position, so it can still run on this stage).
        nan_outside<V>(stage, elo, ehi, lane);
        __syncwarp();
        float x[V][4];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const uint4 v = *reinterpret_cast<const uint4*>(stage + (j * 32 + lane) * 4);
          x[j][0] = __uint_as_float(v.x); x[j][1] = __uint_as_float(v.y);
          x[j][2] = __uint_as_float(v.z); x[j][3] = __uint_as_float(v.w);
        }
        const int64_t obase = row * a.out_stride + sidx * a.k;
        auto emit_fast = [&](int idx, int pos, uint32_t k) {
          if (a.final_out) {
            out_row[sink + idx] = int32_t(p0 + pos);
          } else {
            a.out_keys[obase + idx] = k;
            a.out_ids[obase + idx] = int32_t(p0 + pos);
          }
        };
        if (select_fast<V>(x, m, lane, stage, s_sel[warp], emit_fast)) {
          // m = M (< E): every id slot is filled; candidate slots [M, K) are empty.
          if (!a.final_out)
            for (int i = m + lane; i < K; i += 32) {
              a.out_keys[obase + i] = 0u;
              a.out_ids[obase + i] = -1;
            }
          continue;
        }
      }
    }
    uint32_t key[V][4];
    int E;
    if constexpr (SCORES) {
      const int elo = int(min(max(int64_t(sink) - p0, int64_t(0)), int64_t(n_seg)));
      const int ehi = int(min(max(nvis - local - p0, int64_t(0)), int64_t(n_seg)));
      E = max(ehi - elo, 0);
      const unsigned span = unsigned(E);
      const float* src = a.scores + row * a.nb + p0;
      uint32_t rmin = 0xffffffffu, rmax = 0u;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int q = j * 32 + lane;
        float x[4];
        if constexpr (ASYNC) {
          const uint4 v = *reinterpret_cast<const uint4*>(stage + q * 4);
          x[0] = __uint_as_float(v.x); x[1] = __uint_as_float(v.y);
          x[2] = __uint_as_float(v.z); x[3] = __uint_as_float(v.w);
        } else {
#pragma unroll
          for (int c = 0; c < 4; ++c) x[c] = q * 4 + c < n_seg ? __ldg(src + q * 4 + c) : 0.f;
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          key[j][c] = number_key(x[c]);
          rmin = min(rmin, key[j][c]);
          rmax = max(rmax, key[j][c]);
        }
        // Mask only the 128-element chunks that straddle [elo, ehi) (warp-uniform).
        if (!(j * 128 >= elo && j * 128 + 128 <= ehi)) {
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (unsigned(q * 4 + c - elo) >= span) key[j][c] = 0u;
        }
      }
      // NaN anywhere in the segment (rare): exact keys (NaN -> 1) for it.
      if (__any_sync(kFull, rmax > 0xff800000u || rmin < 0x00800000u)) {
#pragma unroll
        for (int j = 0; j < V; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (key[j][c] != 0u && key_is_nan(key[j][c])) key[j][c] = 1u;
      }
    } else {
      const uint32_t* src = a.in_keys + row * a.in_stride + p0;
      int cnt = 0;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int q = j * 32 + lane;
        uint4 v;
        if constexpr (ASYNC) {
          v = *reinterpret_cast<const uint4*>(stage + q * 4);
        } else {
          v = make_uint4(0u, 0u, 0u, 0u);
          if (q * 4 < n_seg) v = __ldcs(reinterpret_cast<const uint4*>(src) + q);
        }
        key[j][0] = q * 4 + 0 < n_seg ? v.x : 0u;
        key[j][1] = q * 4 + 1 < n_seg ? v.y : 0u;
        key[j][2] = q * 4 + 2 < n_seg ? v.z : 0u;
        key[j][3] = q * 4 + 3 < n_seg ? v.w : 0u;
#pragma unroll
        for (int c = 0; c < 4; ++c) cnt += key[j][c] != 0u ? 1 : 0;
      }
      E = int(__reduce_add_sync(kFull, unsigned(cnt)));
    }
    const int m = min(M, E);

    // Output slots: ids (final: after the sinks) or the candidate ids, whose
    // keys sit at the same offset in out_keys.
    int32_t* const dst = a.final_out ? out_row + sink : a.out_ids + (row * a.out_stride + sidx * a.k);
    auto emit = [&](int idx, int pos, uint32_t k) {
      int32_t id;
      if constexpr (SCORES) id = int32_t(p0) + pos;  // < nb <= INT_MAX
      else id = a.in_ids[row * a.in_stride + p0 + pos];
      dst[idx] = id;
      if (!a.final_out) a.out_keys[(dst - a.out_ids) + idx] = k;
    };
    if (m > 0) select_top<V>(key, m, E, lane, s_sel[warp], emit);

    // Slots not filled: -1 ids (final: never happens, E >= M there) and empty
    // candidates (key 0) otherwise.
    for (int x = m + lane; x < (a.final_out ? M : K); x += 32) {
      dst[x] = -1;
      if (!a.final_out) a.out_keys[(dst - a.out_ids) + x] = 0u;
    }
  }
  if constexpr (ASYNC) cp_async_wait<0>();  // no copy in flight at exit
}

int device_sms() {
  static int cached = 0;
  if (cached == 0) {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && n > 0)
      cached = n;
    else
      return 132;
  }
  return cached;
}

// Launch of one instance: a persistent grid of at most (resident CTAs per SM)
// x SMs, from the occupancy calculator (shapes and device only).
template <int V, bool SCORES, bool ASYNC>
cudaError_t launch_instance(const RoundArgs& a, cudaStream_t stream) {
  auto kernel = topk_round_kernel<V, SCORES, ASYNC>;
  const int smem = ASYNC ? async_smem_bytes<V>() : 0;
  static int per_sm = 0;  // per instance
  if (per_sm == 0) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    int n = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kWarps * 32, smem);
    if (err != cudaSuccess) return err;
    per_sm = n > 0 ? n : 1;
  }
  const int64_t items = a.items;
  int64_t blocks = (items + kWarps - 1) / kWarps;
  blocks = std::min<int64_t>(blocks, int64_t(per_sm) * device_sms());
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  kernel<<<grid, block, smem, stream>>>(a);
  return cudaGetLastError();
}

template <bool SCORES, bool ASYNC>
cudaError_t launch_round(int v, const RoundArgs& a, cudaStream_t stream) {
  switch (v) {
    case 1: return launch_instance<1, SCORES, ASYNC>(a, stream);
    case 2: return launch_instance<2, SCORES, ASYNC>(a, stream);
    case 4: return launch_instance<4, SCORES, ASYNC>(a, stream);
    case 8: return launch_instance<8, SCORES, ASYNC>(a, stream);
    case 16: return launch_instance<16, SCORES, ASYNC>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_topk_select(const TopkSelectParams& p, cudaStream_t stream) {
  const int64_t rows = p.tokens * p.heads;
  if (rows == 0 || p.k == 0) return cudaSuccess;
  if (p.block_size < 1 || p.local_blocks < 0 || p.sink_blocks < 0 ||
      p.local_blocks + p.sink_blocks > p.k || p.nb > INT_MAX || p.k > INT_MAX)
    return cudaErrorInvalidValue;
  const TopkSchedule s = topk_schedule(rows, p.nb, p.k, p.num_splits);
  if (s.rounds == 0 || p.scratch_bytes < s.scratch_bytes) return cudaErrorInvalidValue;
  if (s.scratch_bytes > 0 && (reinterpret_cast<uintptr_t>(p.scratch) & 15u) != 0)
    return cudaErrorInvalidValue;

  char* scratch = static_cast<char*>(p.scratch);
  auto keys_of = [&](int r) {
    return reinterpret_cast<uint32_t*>(scratch + s.region_offset[r & 1]);
  };
  auto ids_of = [&](int r) {
    return reinterpret_cast<int32_t*>(scratch + s.region_offset[r & 1] + rows * s.stride[r] * 4);
  };

  for (int r = 0; r < s.rounds; ++r) {
    RoundArgs a{};
    a.scores = p.scores;
    if (r > 0) {
      a.in_keys = keys_of(r - 1);
      a.in_ids = ids_of(r - 1);
      a.in_stride = s.stride[r - 1];
    }
    a.n = s.n[r];
    a.seg = s.seg[r];
    a.splits = s.splits[r];
    a.items = rows * s.splits[r];
    a.final_out = r == s.rounds - 1;
    a.ids = p.ids;
    if (!a.final_out) {
      a.out_keys = keys_of(r);
      a.out_ids = ids_of(r);
      a.out_stride = s.stride[r];
    }
    a.q_indptr = p.q_indptr;
    a.kv_lens = p.kv_lens;
    a.rows = rows;
    a.tokens = p.tokens;
    a.heads = p.heads;
    a.batch = p.batch;
    a.nb = p.nb;
    a.k = p.k;
    a.local = p.local_blocks;
    a.sink = p.sink_blocks;
    a.block_size = p.block_size;
    // Capacity of the scores (as the CPU handler: a paged layout of nb pages of
    // block_size tokens); no clip when nb * block_size would overflow.
    a.kv_cap = (p.nb > 0 && p.block_size > INT64_MAX / p.nb) ? INT64_MAX : p.nb * p.block_size;
    a.causal = p.causal;
    a.heads_div = make_fastdiv(p.heads);
    a.bs_div = make_fastdiv(p.block_size);
    a.splits_div = make_fastdiv(a.splits);
    int v = 1;
    while (v * 128 < a.seg) v *= 2;  // seg <= 2048 -> v <= 16
    cudaError_t err;
    if (r > 0) {
      err = launch_round<false, true>(v, a, stream);
    } else {
      const bool vec = p.nb % 4 == 0 && (reinterpret_cast<uintptr_t>(p.scores) & 15u) == 0;
      err = vec ? launch_round<true, true>(v, a, stream) : launch_round<true, false>(v, a, stream);
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace msa::cuda

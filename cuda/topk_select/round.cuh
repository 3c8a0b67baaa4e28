// topk_select: the arguments of one selection round, the order-preserving keys of the
// scores and the per-row metadata (visible blocks of a row from q_indptr / kv_lens).
#pragma once

#include <cstdint>

#include "cuda/common/fast_div.cuh"

namespace msa::cuda::topk {

constexpr int kWarps = 4;   // warps per CTA, each on its own (row, segment)
constexpr int kCap = 64;    // candidates ranked in shared memory
constexpr unsigned kFull = 0xffffffffu;

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

}  // namespace msa::cuda::topk

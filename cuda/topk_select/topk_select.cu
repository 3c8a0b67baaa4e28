// Block top-k selection (docs/ffi-contract.md, msa_topk_select).
//
// One warp per (row, segment); a segment (<= 2048 blocks) lives in registers:
// lane l holds float4 chunks j*32+l (j < V), so every load instruction of the
// warp reads 512 contiguous bytes. Scores become order-preserving uint32 keys
// (integer ops only: NaN -> 1, below every number; -0 -> +0; 0 marks "not
// eligible"); ties are broken by position, and positions are in id order.
//
// Selection of the m best keys of a segment:
//  1. a lower bound t of the m-th largest key: the m-th largest lane maximum
//     (m <= 32, bitonic sort across lanes) or of the lane top-2 (m <= 64,
//     bisection); at least m keys are >= t, so the top m are among them;
//  2. if at most 64 keys are >= t: compact them (in position order) to shared
//     memory and rank each exactly against the others;
//  3. otherwise (ties, adversarial rows): exact bisection of the m-th largest
//     key over the registers, then the lowest positions among equal keys.
// The chosen positions are emitted in ascending order with ballot prefixes.
//
// A row of one segment writes ids directly (forced blocks + chosen, ascending,
// -1 padding). Otherwise each segment writes its local best min(M, E) as
// (key, id) slots to scratch and merge rounds run the same kernel on them.
#include "cuda/topk_select/topk_select.h"

#include <climits>

namespace msa::cuda {
namespace {

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
};

// Order-preserving key of a score: larger score -> larger key; NaN -> 1 (below
// -inf, whose key is 0x007fffff); -0 and +0 equal. Keys of numbers are >= 2.
__device__ __forceinline__ uint32_t score_key(float x) {
  uint32_t u = __float_as_uint(x);
  if (u == 0x80000000u) u = 0u;
  uint32_t key = u ^ (uint32_t(int32_t(u) >> 31) | 0x80000000u);
  return (u & 0x7fffffffu) > 0x7f800000u ? 1u : key;
}

// Number of visible blocks of the row of query token t (same value in every
// lane). Sequence b of row t: b = f - 1 where f is the first index with
// q_indptr[f] > t; this equals the clamped, made-monotone q_indptr of the CPU
// handlers (ffi/common/sequences.h) for any device data.
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
  const int64_t bs = a.block_size;
  int64_t nvis = L == 0 ? 0 : (L - 1) / bs + 1;  // ceil(L / bs), no overflow
  if (a.causal) {
    const int64_t pos = L - q_len + i;
    nvis = pos < 0 ? 0 : min(nvis, pos / bs + 1);
  }
  return min(nvis, a.nb);
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

// Emits the m best elements (largest key, then lowest position) among the
// keys != 0 in ascending position order. Requires 1 <= m <= E = #(keys != 0).
template <int V, class Emit>
__device__ __forceinline__ void select_top(const uint32_t (&key)[V][4], int m, int E, int lane,
                                           uint32_t* s_key, int* s_pos, Emit emit) {
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
  const int C = warp_count_ge<V>(key, t);
  if (C <= kCap) {
    // 2. Compact the candidates in position order and rank them exactly.
    emit_ordered<V>(key, lane, [t](uint32_t k) { return k >= t; },
                    [&](int idx, int pos, uint32_t k) {
                      s_key[idx] = k;
                      s_pos[idx] = pos;
                    });
    __syncwarp();
    const int i0 = lane, i1 = lane + 32;
    const uint32_t k0 = i0 < C ? s_key[i0] : 0u, k1 = i1 < C ? s_key[i1] : 0u;
    int r0 = 0, r1 = 0;
#pragma unroll 4
    for (int j = 0; j < C; ++j) {
      const uint32_t kj = s_key[j];
      r0 += (kj > k0 || (kj == k0 && j < i0)) ? 1 : 0;
      r1 += (kj > k1 || (kj == k1 && j < i1)) ? 1 : 0;
    }
    const bool sel0 = i0 < C && r0 < m, sel1 = i1 < C && r1 < m;
    const unsigned lt = (1u << lane) - 1u;
    const unsigned b0 = __ballot_sync(kFull, sel0), b1 = __ballot_sync(kFull, sel1);
    const int p0 = i0 < C ? s_pos[i0] : 0, p1 = i1 < C ? s_pos[i1] : 0;
    if (sel0) emit(__popc(b0 & lt), p0, k0);
    if (sel1) emit(__popc(b0) + __popc(b1 & lt), p1, k1);
    __syncwarp();
    return;
  }
  // 3. Exact m-th largest key by bisection, then the lowest positions among
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

// SCORES: round 0 (input = scores, ids = positions); else a merge round
// (input = candidate keys/ids). VEC: 16-byte loads of the scores.
template <int V, bool SCORES, bool VEC>
__global__ void __launch_bounds__(kWarps * 32) topk_round_kernel(const RoundArgs a) {
  __shared__ uint32_t s_key[kWarps][kCap];
  __shared__ int s_pos[kWarps][kCap];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t item = int64_t(blockIdx.x) * kWarps + warp;
  if (item >= a.rows * a.splits) return;  // warp-uniform
  const int64_t row = item / a.splits, sidx = item % a.splits;
  const int64_t nvis = row_nvis(a, row / a.heads, lane);
  const int K = int(a.k);
  int32_t* out_row = a.final_out ? a.ids + row * a.k : nullptr;

  if (nvis <= a.k) {  // every visible block is chosen
    if (a.final_out)
      for (int x = lane; x < K; x += 32) out_row[x] = x < nvis ? x : -1;
    return;
  }
  // nvis > K >= local + sink: forced sinks [0, sink) and locals [nvis-local, nvis),
  // eligible [sink, nvis-local), M = K - sink - local slots.
  const int sink = int(a.sink), local = int(a.local);
  const int M = K - sink - local;
  if (a.final_out) {
    for (int x = lane; x < sink; x += 32) out_row[x] = x;
    for (int x = lane; x < local; x += 32) out_row[K - local + x] = int(nvis - local + x);
  }
  if (M <= 0) return;

  const int64_t p0 = sidx * a.seg;
  const int n_seg = int(min(a.seg, a.n - p0));
  uint32_t key[V][4];
  int E;
  if constexpr (SCORES) {
    const int elo = int(min(max(int64_t(sink) - p0, int64_t(0)), int64_t(n_seg)));
    const int ehi = int(min(max(nvis - local - p0, int64_t(0)), int64_t(n_seg)));
    E = max(ehi - elo, 0);
    const unsigned span = unsigned(E);
    const float* src = a.scores + row * a.nb + p0;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int q = j * 32 + lane;
      float x[4];
      if constexpr (VEC) {
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (q * 4 < n_seg) v = __ldcs(reinterpret_cast<const float4*>(src) + q);
        x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w;
      } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) x[c] = q * 4 + c < n_seg ? __ldg(src + q * 4 + c) : 0.f;
      }
#pragma unroll
      for (int c = 0; c < 4; ++c)
        key[j][c] = unsigned(q * 4 + c - elo) < span ? score_key(x[c]) : 0u;
    }
  } else {
    const uint32_t* src = a.in_keys + row * a.in_stride + p0;
    int cnt = 0;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int q = j * 32 + lane;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (q * 4 < n_seg) v = __ldcs(reinterpret_cast<const uint4*>(src) + q);
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

  const int64_t out_base = row * a.out_stride + sidx * a.k;
  auto emit = [&](int idx, int pos, uint32_t k) {
    int32_t id;
    if constexpr (SCORES) id = int32_t(p0 + pos);
    else id = a.in_ids[row * a.in_stride + p0 + pos];
    if (a.final_out) {
      out_row[sink + idx] = id;
    } else {
      a.out_keys[out_base + idx] = k;
      a.out_ids[out_base + idx] = id;
    }
  };
  if (m > 0) select_top<V>(key, m, E, lane, s_key[warp], s_pos[warp], emit);

  // Slots not filled: -1 ids (final: never happens, E >= M there) and empty
  // candidates (key 0) otherwise.
  if (a.final_out) {
    for (int x = m + lane; x < M; x += 32) out_row[sink + x] = -1;
  } else {
    for (int x = m + lane; x < K; x += 32) {
      a.out_keys[out_base + x] = 0u;
      a.out_ids[out_base + x] = -1;
    }
  }
}

template <bool SCORES, bool VEC>
cudaError_t launch_round(int v, const RoundArgs& a, cudaStream_t stream) {
  const int64_t items = a.rows * a.splits;
  const int64_t blocks = (items + kWarps - 1) / kWarps;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  switch (v) {
    case 1: topk_round_kernel<1, SCORES, VEC><<<grid, block, 0, stream>>>(a); break;
    case 2: topk_round_kernel<2, SCORES, VEC><<<grid, block, 0, stream>>>(a); break;
    case 4: topk_round_kernel<4, SCORES, VEC><<<grid, block, 0, stream>>>(a); break;
    case 8: topk_round_kernel<8, SCORES, VEC><<<grid, block, 0, stream>>>(a); break;
    case 16: topk_round_kernel<16, SCORES, VEC><<<grid, block, 0, stream>>>(a); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
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

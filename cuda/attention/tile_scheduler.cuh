// Tile scheduler of the prefill attention kernels: CTA -> (q tile of one
// sequence, KV head) and the sequence's KV range.
//
// A tile is up to kBlockM consecutive flattened (token, group head) rows of one
// sequence for one KV head g: row r <-> token r / G, query head g * G + r % G
// (G = Hq / Hkv). The slot -> rows mapping reads q_indptr on the device
// (block_scores::find_tile, with the contract's clamping), so the grid is a
// shape-only bound: (ceil(T * G / kBlockM) + B + 2) slots per KV head.
//
// Order: CTA id -> (slot from the last, KV head fastest): heavy (late,
// causally long) tiles start first, and the Hkv CTAs of one q range run
// side by side; consecutive slots of one head read the same K/V prefix
// close together in time (L2 reuse).
#pragma once

#include <cstdint>

#include "cuda/block_scores/tile_scheduler.cuh"
#include "cuda/common/int_math.cuh"

namespace msa::cuda::attention {

using block_scores::TileInfo;


// Slots per KV head (the grid is slots * kv_heads CTAs).
__host__ __device__ inline int64_t num_tile_slots(int64_t total_q, int64_t group, int64_t batch, int block_m) {
  return (total_q * group + block_m - 1) / block_m + batch + 2;
}

struct CtaWork {
  int64_t slot;
  int kv_head;
};

__device__ __forceinline__ CtaWork cta_work(int64_t num_slots, int kv_heads) {
  const int64_t id = int64_t(blockIdx.x);
  return CtaWork{num_slots - 1 - id / kv_heads, int(id % kv_heads)};
}

// KV range of sequence b (-1: pseudo rows, nothing visible), clipped as the
// contract says: dense rows [kv_begin, kv_begin + L), paged capacity
// max_pages * page_size.
struct SeqKv {
  int64_t kv_begin;  // dense row of token 0
  int64_t len;       // L
};

__device__ __forceinline__ SeqKv seq_kv(int b, bool paged, const int32_t* __restrict__ kv_indptr,
                                        const int32_t* __restrict__ kv_lens, int64_t dense_rows,
                                        int64_t max_pages, int64_t page_size) {
  SeqKv s{0, 0};
  if (b < 0) return s;
  int64_t cap;
  if (paged) {
    cap = max_pages * page_size;
  } else {
    const int64_t kb = clamp64(kv_indptr[b], 0, dense_rows);
    const int64_t ke = clamp64(kv_indptr[b + 1], kb, dense_rows);
    s.kv_begin = kb;
    cap = ke - kb;
  }
  s.len = clamp64(kv_lens[b], 0, cap);
  return s;
}

// One past the last visible token of flattened row `row` of the tile
// (monotone in row): bottom-right causal position + 1, clipped to [0, L].
struct VisibleEnd {
  int64_t L, q_len, token_begin;
  int group;
  bool causal;
  __device__ __forceinline__ int64_t operator()(int64_t row) const {
    if (!causal) return L;
    const int64_t i = row / group - token_begin;
    return clamp64(L - q_len + i + 1, 0, L);
  }
};

}  // namespace msa::cuda::attention

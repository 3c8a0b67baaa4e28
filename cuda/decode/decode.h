// Launcher of the paged decode attention kernels (docs/ffi-contract.md,
// msa_decode). Independent of the XLA headers.
//
// Split-K ("flash decoding"): one CTA per (request b, kv head, head chunk,
// split s). The split owns a list of at most kDecodeMaxPagesPerSplit pages:
//   dense:  the request's pages [0, ceil(L / page_size)) cut into num_splits
//           equal contiguous runs (by the runtime length L: a short request
//           in a long-capacity plan still spreads over every split);
//   sparse: the block_ids slots [s*cs, min(K, (s+1)*cs)), cs = ceil(K / S),
//           keeping the ids that are in [0, ceil(L / page_size)) and not
//           repeated in an earlier slot of the row.
// A split with no token writes an empty partial (lse = -inf, o = 0). When
// num_splits > 1 the partials (o normalised, f32, and lse) go to the scratch
// output and a second kernel merges them in split order (deterministic);
// with num_splits == 1 the first kernel writes o and lse itself. Grids depend
// on shapes and attributes only: no host sync, no allocation (CUDA-graph
// safe).
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/common/elem_type.h"

namespace msa::cuda {

// Pages (dense) or block_ids slots (sparse) one split may own: its page list
// lives in shared memory.
constexpr int64_t kDecodeMaxPagesPerSplit = 1024;
// Query heads one CTA computes (the M rows of the mma; groups larger than 16
// use several head chunks, each re-reading the kv head from L2).
constexpr int64_t kDecodeHeadsPerCta = 16;

struct DecodeParams {
  const void* q;              // [batch, q_heads, head_dim], kBF16 or kF16
  ElemType q_type;
  const void* k_cache;        // [num_pages, kv_heads, page_size, head_dim]
  const void* v_cache;        // same shape and dtype as k_cache
  ElemType kv_type;           // q_type or kFP8E4M3 (K and V the same)
  const int32_t* page_table;  // [batch, max_pages]
  const int32_t* kv_lens;     // [batch]
  const int32_t* block_ids;   // [batch, kv_heads, topk] (sparse only)
  void* o;                    // [batch, q_heads, head_dim], q_type
  float* lse;                 // [batch, q_heads]
  void* scratch;              // >= decode_scratch_bytes(...) bytes, 16-byte aligned
  int64_t scratch_bytes;
  int64_t batch, q_heads, kv_heads, head_dim;
  int64_t num_pages, page_size, max_pages;
  int64_t topk;               // K (sparse)
  bool sparse;
  float scale, k_scale, v_scale;
  int64_t num_splits;         // attribute, >= 1
};

namespace decode_detail {
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
}  // namespace decode_detail

// The split count the Python wrapper passes as `num_splits`, from static
// shapes only (the SM count is not known there). n = max_pages (dense,
// k_or_0 == 0) or K (sparse). Dense: aim at ~1024 CTAs but give every split
// >= 16 pages of capacity (per-CTA fixed costs: page list, pipeline fill,
// partial write; benchmarks/tune_decode_splits.py on an H200 preferred this
// to 2048 / 4, most for short contexts and fp8 caches). Sparse: ~2048 CTAs,
// >= 4 of the K pages per split (K is small: enough CTAs matter more). Never
// more than 1024 pages per split (the shared-memory page list), at most 1024
// splits.
//
// Python mirror (msa_jax/decode.py):
//   def decode_num_splits(B, Hkv, P, K):
//       n = K if K > 0 else P
//       if n <= 0: return 1
//       target, min_pages = (2048, 4) if K > 0 else (1024, 16)
//       s = -(-target // max(B * Hkv, 1))
//       s = min(s, -(-n // min_pages), 1024)
//       return max(s, -(-n // 1024), 1)
inline int64_t decode_num_splits(int64_t batch, int64_t kv_heads, int64_t max_pages, int64_t k_or_0) {
  using namespace decode_detail;
  const bool sparse = k_or_0 > 0;
  const int64_t n = sparse ? k_or_0 : max_pages;
  if (n <= 0) return 1;
  const int64_t target = sparse ? 2048 : 1024, min_pages = sparse ? 4 : 16;
  int64_t s = ceil_div(target, std::max<int64_t>(batch * kv_heads, 1));
  s = std::min<int64_t>({s, ceil_div(n, min_pages), 1024});
  return std::max<int64_t>({s, ceil_div(n, kDecodeMaxPagesPerSplit), 1});
}

// Bytes of the scratch output: 0 when num_splits == 1; else the partial lse
// [B, Hq, S] f32 (padded to 256 bytes) followed by the partial o
// [B, Hq, S, D] f32.
//
// Python mirror:
//   def decode_scratch_bytes(B, Hq, D, S):
//       if S <= 1: return 0
//       return -(-(B * Hq * S * 4) // 256) * 256 + B * Hq * S * D * 4
inline int64_t decode_scratch_bytes(int64_t batch, int64_t q_heads, int64_t head_dim, int64_t num_splits) {
  using namespace decode_detail;
  if (num_splits <= 1) return 0;
  return round_up(batch * q_heads * num_splits * 4, 256) + batch * q_heads * num_splits * head_dim * 4;
}

// True when num_splits gives every split at most kDecodeMaxPagesPerSplit
// pages / slots (n = max_pages dense, K sparse).
inline bool decode_splits_ok(int64_t n, int64_t num_splits) {
  return num_splits >= 1 && decode_detail::ceil_div(n, num_splits) <= kDecodeMaxPagesPerSplit;
}

// Dtypes / head_dim / sizes the kernels support (launch_decode returns
// cudaErrorInvalidValue otherwise).
bool decode_supported(const DecodeParams& p);

cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream);

}  // namespace msa::cuda

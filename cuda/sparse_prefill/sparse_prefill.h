// Launcher of msa_sparse_prefill on the GPU (docs/ffi-contract.md): MSA's
// main branch, KV-outer. Independent of the XLA headers.
//
// The query rows are processed in passes of `q_chunk` rows; each pass runs a
// fixed sequence of launches over one scratch buffer (no host sync, no
// allocation, grids from shapes only: CUDA-graph safe):
//
//   setup (once per call): 1 CTA computes per sequence the clamped query
//       range qe[b], qe[b+1] (running max of q_indptr, clipped to [0, T]), the
//       dense KV row base, the clipped kv length L and the global block offset
//       boff[b] (exclusive scan of ceil(L/bs), clipped to total_blocks); a
//       memset clears the bitmaps (each pass's scan_fill clears them again
//       after reading them, so no pass needs a memset).
//   per pass (rows [t0, t0 + Tc)):
//   1 mark       a thread per slot (row, kv head, slot), coalesced: a valid id
//                (not -1 / out of range / past the causal position, and the
//                first slot holding it: repeats skipped) sets the bit of row
//                t_local in bitmap[list], list = (g * R + r) * total_blocks +
//                boff[b] + c with r = t_local / (32 Wr) the query range of the
//                row (R ranges of Wr bitmap words each, q_ranges attribute;
//                bit t_local % (32 Wr) of the list's Wr words); skipped slots
//                get partial lse = -inf. Also resets the look-back state of
//                step 2.
//   2 scan_fill  a CTA per tile of consecutive lists (about 1024 bitmap words):
//                entries per list (popcounts), a single-pass scan across tiles
//                (decoupled look-back, tiles in ticket order; integer sums:
//                deterministic), then the tile's work items (each list cut into
//                chunks of at most P = 128 / G query rows: (g, b, c, entry
//                range)) and entries (t_local * K + slot), sorted by list then
//                query row. Clears the bitmap words it read.
//                Lists are ordered (kv head g, query range r, block), so that
//                the work items that run at once (grid-stride, in list order)
//                share their KV block and touch only the ~Tc / R query rows of
//                one range: the Q rows they gather (G heads x D each) stay in
//                L2 (R = 1: one range, lists (g, block)).
//   3 main       a CTA per work item (grid-stride): K/V block (block_size
//                tokens) -> shared memory once; the P query rows x G heads of
//                the chunk gathered into the 128 MMA rows; S = Q K^T, causal
//                mask, softmax within the block, O = P V (mma.sync); writes
//                the locally normalised partial O [Tc, Hq, K, D] (q dtype) and
//                its LSE [Tc, Hq, K] (f32, natural log).
//   4 combine    a warp per (row, head): LSE-weighted sum of the K partials
//                (fixed order) -> o, lse.
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/common/elem_type.h"

namespace msa::cuda {

constexpr int kSparsePrefillRows = 128;  // MMA M rows per CTA: P query rows x G heads
// Partial-O bytes per pass (the partial LSE, 1/(2D) of it, comes on top).
// Fewer, larger passes: each pass has a fixed cost (launches, CSR build, the
// main kernel's tail wave), so 2 GiB halves it against 1 GiB.
constexpr int64_t kSparsePrefillOBudget = int64_t(1) << 31;

struct SparsePrefillParams {
  const void* q;  // [T, Hq, D], kBF16 or kF16
  ElemType q_type;
  const void* k;  // dense [Tk, Hkv, D] or paged [num_pages, Hkv, page_size, D]
  const void* v;  // same shape as k
  ElemType kv_type;  // q_type or kFP8E4M3 (k and v share it)
  const int32_t* block_ids;   // [T, Hkv, K]
  const int32_t* q_indptr;    // [B + 1]
  const int32_t* kv_indptr;   // [B + 1] (dense)
  const int32_t* kv_lens;     // [B]
  const int32_t* page_table;  // [B, max_pages] (paged)
  void* o;                    // [T, Hq, D], q_type
  float* lse;                 // [T, Hq]
  void* scratch;              // >= sparse_prefill_scratch_bytes(...) bytes, 16-byte aligned
  int64_t scratch_bytes;
  int64_t tokens, q_heads, kv_heads, head_dim, topk, batch;
  int64_t dense_rows;                      // Tk (dense)
  int64_t num_pages, page_size, max_pages;  // paged
  int64_t block_size;                      // 64 or 128 (== page_size when paged)
  int64_t total_blocks;                    // sparse_prefill_total_blocks(...)
  int64_t q_chunk;                         // query rows per pass (attribute)
  int64_t q_ranges;                        // query ranges per pass (attribute, >= 1; see the layout)
  float scale, k_scale, v_scale;
  bool causal, paged;
};

namespace sp_detail {
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t align256(int64_t a) { return cdiv(a, 256) * 256; }
}  // namespace sp_detail

// Global block slots of the reverse CSR (per KV head): an upper bound of
// sum_b ceil(L_b / block_size) from shapes. Dense: ceil(Tk / bs) + B (the
// sequences' KV ranges are disjoint slices of the Tk rows); paged: B * max_pages.
// Python mirror:
//   def total_blocks(paged, B, bs, Tk=0, max_pages=0):
//     return B * max_pages if paged else -(-Tk // bs) + B
inline int64_t sparse_prefill_total_blocks(bool paged, int64_t batch, int64_t block_size,
                                           int64_t dense_rows, int64_t max_pages) {
  return paged ? batch * max_pages : sp_detail::cdiv(dense_rows, block_size) + batch;
}

// Query rows per pass: the partial O of one pass ([Tc, Hq, K, D], 2 bytes)
// stays within 2 GiB; a multiple of 32, at least 32, at most T (at least 1).
// (At Hq = 64, K = 16, D = 128: 8192 rows, so 32K tokens take 4 passes.)
// Python mirror:
//   def q_chunk(T, Hq, D, K):
//     per_q = Hq * K * D * 2
//     c = max(32, (2**31 // per_q) // 32 * 32)
//     return max(1, min(T, c))
inline int64_t sparse_prefill_q_chunk(int64_t T, int64_t Hq, int64_t D, int64_t K) {
  const int64_t per_q = std::max<int64_t>(1, Hq * K * D * 2);
  const int64_t c = std::max<int64_t>(32, kSparsePrefillOBudget / per_q / 32 * 32);
  return std::max<int64_t>(1, std::min(T, c));
}

// Query ranges per pass (the q_ranges attribute the wrapper passes). The work
// items of one (g, r) gather ~Tc / R query rows (G heads x D x 2 bytes each,
// each row up to K times), which then stay in L2; but every range sweeps the
// KV blocks again, so each extra range re-reads up to Hkv x total_blocks K/V
// blocks from DRAM. Rule: the smallest R whose range holds at most 8 MiB of
// one KV head's query rows (ceil(Tc / R) x G x D x 2 bytes), at most 16 and
// at most W = ceil(Tc / 32); then at most 1 + Qg / (2 KVs), with Qg = Tc x Hq
// x D x 2 x K the bytes of Q the pass gathers (mostly DRAM misses at R = 1)
// and KVs = Hkv x total_blocks x block_size x D x 2 x kv_bytes the K/V bytes
// of one sweep: the re-reads stay below half of the Q gathers. (64q/4kv,
// d128, k16, bf16, Tc = 8192: R = 4 at 32K and 128K, 2 at 256K, 1 at 512K.)
// Python mirror (MSA_JAX_SPARSE_PREFILL_Q_RANGES overrides it there):
//   def q_ranges(T, Hq, Hkv, D, K, q_chunk, total_blocks, block_size, kv_bytes):
//     tc = min(q_chunk, max(T, 1)); W = -(-tc // 32)
//     rows = max(1, (8 << 20) // ((Hq // Hkv) * D * 2))
//     r = min(-(-tc // rows), W, 16)
//     kvs = Hkv * total_blocks * block_size * D * 2 * kv_bytes
//     if kvs > 0: r = min(r, 1 + (tc * Hq * D * 2 * K) // (2 * kvs))
//     return max(1, r)
constexpr int64_t kSparsePrefillQRangeBytes = int64_t(8) << 20;
constexpr int64_t kSparsePrefillMaxQRanges = 16;
inline int64_t sparse_prefill_q_ranges(int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t K, int64_t q_chunk,
                                       int64_t total_blocks, int64_t block_size, int64_t kv_bytes) {
  using sp_detail::cdiv;
  if (Hkv < 1 || Hq < Hkv || D < 1 || K < 1 || q_chunk < 1 || total_blocks < 0 || block_size < 1 || kv_bytes < 1)
    return 1;
  const int64_t tc = std::min(q_chunk, std::max<int64_t>(T, 1));
  const int64_t rows = std::max<int64_t>(1, kSparsePrefillQRangeBytes / ((Hq / Hkv) * D * 2));
  int64_t r = std::min({cdiv(tc, rows), cdiv(tc, 32), kSparsePrefillMaxQRanges});
  const int64_t kvs = Hkv * total_blocks * block_size * D * 2 * kv_bytes;
  if (kvs > 0) r = std::min(r, 1 + (tc * Hq * D * 2 * K) / (2 * kvs));
  return std::max<int64_t>(1, r);
}

// Scratch layout of one call (byte offsets, each region 256-byte aligned).
// Tc = min(q_chunk, T), W = ceil(Tc / 32) bitmap words per pass row range,
// split into R query ranges of Wr = ceil(W / min(q_ranges, W)) words (R =
// ceil(W / Wr): no empty trailing range; q_ranges = 1: R = 1, Wr = W),
// N = Hkv * R * total_blocks lists of Wr words, E = Tc * Hkv * K entries,
// P = 128 / G rows per work item, WI = ceil(E / P) + min(N, E) work items
// (32 bytes each; a list of n entries has at most n / P + 1 chunks, and only
// non-empty lists have chunks).
struct SparsePrefillScratch {
  int64_t seq = 0;         // int32 qe[B+1], kvb[B], len[B], boff[B+1]
  int64_t tile_state = 0;  // uint64 look-back state [n_tiles], n_tiles <= N; the region keeps
                           // the size of the former counts [N] + offsets [N+1]: >= 8 N + 8 bytes
  int64_t bitmap = 0;      // uint32 [N, Wr]: [g][r][block][Wr]
  int64_t entries = 0;     // int32 [E]
  int64_t work = 0;        // int32 num_work (+0), ticket (+128), then 32-byte items [WI] at +256
  int64_t part_lse = 0;    // f32 [Tc, Hq, K]
  int64_t part_o = 0;      // q dtype [Tc, Hq, K, D]
  int64_t total = 0;
  int64_t tc = 0, n_lists = 0, words = 0, n_entries = 0, rows_per_item = 0, work_items = 0;
  int64_t ranges = 0;  // R (words = Wr: bitmap words per list)
};

inline SparsePrefillScratch sparse_prefill_scratch_layout(int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                                                         int64_t K, int64_t total_blocks, int64_t q_chunk,
                                                         int64_t B, int64_t q_ranges) {
  using namespace sp_detail;
  SparsePrefillScratch s;
  if (T < 0 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || D < 1 || K < 1 || total_blocks < 0 || q_chunk < 1 ||
      B < 0 || q_ranges < 1) {
    s.total = -1;
    return s;
  }
  const int64_t G = Hq / Hkv;
  s.tc = std::min(q_chunk, std::max<int64_t>(T, 1));
  const int64_t w_all = cdiv(s.tc, 32);
  s.words = cdiv(w_all, std::min(q_ranges, w_all));
  s.ranges = cdiv(w_all, s.words);
  s.n_lists = Hkv * s.ranges * total_blocks;
  s.n_entries = s.tc * Hkv * K;
  s.rows_per_item = std::max<int64_t>(1, kSparsePrefillRows / G);
  s.work_items = cdiv(s.n_entries, s.rows_per_item) + std::min(s.n_lists, s.n_entries);
  int64_t off = 0;
  s.seq = off;         off += align256(4 * (4 * B + 2));
  s.tile_state = off;  off += align256(4 * s.n_lists) + align256(4 * (s.n_lists + 1));
  s.bitmap = off;      off += align256(4 * s.n_lists * s.words);  // N * Wr words
  s.entries = off;   off += align256(4 * s.n_entries);
  s.work = off;      off += 256 + align256(32 * s.work_items);
  s.part_lse = off;  off += align256(4 * s.tc * Hq * K);
  s.part_o = off;    off += align256(2 * s.tc * Hq * K * D);
  s.total = off;
  return s;
}

// Bytes of the `scratch` output (-1: invalid arguments).
// Python mirror (a256 = lambda x: -(-x // 256) * 256):
//   def scratch_bytes(T, Hq, Hkv, D, K, total_blocks, q_chunk, B, q_ranges=1):
//     tc = min(q_chunk, max(T, 1)); W = -(-tc // 32)
//     Wr = -(-W // min(q_ranges, W)); R = -(-W // Wr); N = Hkv * R * total_blocks
//     E = tc * Hkv * K; P = max(1, 128 // (Hq // Hkv)); WI = -(-E // P) + min(N, E)
//     return (a256(4 * (4 * B + 2)) + a256(4 * N) + a256(4 * (N + 1)) + a256(4 * N * Wr)
//             + a256(4 * E) + 256 + a256(32 * WI) + a256(4 * tc * Hq * K)
//             + a256(2 * tc * Hq * K * D))
inline int64_t sparse_prefill_scratch_bytes(int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t K,
                                            int64_t total_blocks, int64_t q_chunk, int64_t B, int64_t q_ranges) {
  return sparse_prefill_scratch_layout(T, Hq, Hkv, D, K, total_blocks, q_chunk, B, q_ranges).total;
}

// Whether the kernels support this configuration (q bf16/fp16, K/V q's
// dtype or fp8 e4m3, head_dim 64 / 128, block_size 64 / 128, G = Hq/Hkv <= 128).
bool sparse_prefill_supported(const SparsePrefillParams& p);

cudaError_t launch_sparse_prefill(const SparsePrefillParams& p, cudaStream_t stream);

}  // namespace msa::cuda

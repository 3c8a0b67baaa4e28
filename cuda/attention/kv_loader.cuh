// Global -> shared K/V tile loader of the attention mainloop (cp.async,
// zero-fill outside the data), for dense and paged caches, same-dtype or fp8
// (raw e4m3 stages converted to Elem tiles in shared memory).
//
// Tile n = keys [n*kBlockN, (n+1)*kBlockN) of one sequence and one KV head.
// Paged: a page holds page_size / kBlockN tiles; its id comes from page_table
// (prefetched one page ahead); an out-of-range id makes the page's tiles
// unresolvable: zero-filled, and the tile's bit in `valid_bits` is cleared so
// the softmax masks it. Rows at or past the sequence length are zero-filled.
// Tiles must be issued in order 0, 1, 2, ...
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "cuda/block_scores/fp8_convert.cuh"

namespace msa::cuda::attention {

template <class Tr>
struct KvLoader {
  static constexpr int kN = Tr::kBlockN, kD = Tr::kHeadDim;
  static constexpr int kCpr = Tr::kKVChunksPerRow;
  static constexpr int kRowStep = Tr::kKVRowStep;
  // Destination step between a thread's consecutive chunks, in bytes.
  static constexpr int kDstStep = Tr::kFp8KV ? kRowStep * kD : kRowStep * 64 * int(sizeof(typename Tr::Elem));

  const uint8_t* k;         // K cache base (bytes)
  int64_t v_minus_k;        // V base - K base (bytes)
  int64_t thr_off;          // bytes: this thread's first chunk of tile 0 (dense) / of a page's first tile (paged)
  int row_step_bytes;       // bytes between this thread's consecutive chunks (kRowStep tokens)
  int tile_bytes;           // bytes between consecutive tiles (dense) / tiles of a page (paged)
  int64_t page_bytes;       // paged: bytes between pages
  const int32_t* page_row;  // paged: page_table row of the sequence
  int num_pages;
  int tiles_per_page;
  int n_pages;              // pages the computed tiles span (page-table reads stay below)
  int rows_left0;           // L - r0: rows of tile 0 this thread may load
  bool paged;
  int pend_page;            // paged: page id of the next tile to issue (read one issue ahead)
  int next_sub;             // paged: tile index within its page of the next tile to issue
  int next_page_idx;        // paged: page-table index of the page after the next tile's
  uint32_t valid_bits;      // bit (n & 31): tile n resolvable

  // The launcher guarantees num_pages, L, Hkv * page_size * D bytes and
  // 64 * Hkv * D bytes below 2^31.
  __device__ __forceinline__ void init(const void* k_, const void* v_, bool paged_, int64_t kv_begin, int g,
                                       int64_t kv_heads, int64_t page_size, int64_t num_pages_,
                                       const int32_t* page_row_, int len, int num_tiles, int r0, int cc) {
    constexpr int64_t kRow = int64_t(kD) * Tr::kKVElemBytes;
    k = static_cast<const uint8_t*>(k_);
    v_minus_k = static_cast<const uint8_t*>(v_) - k;
    paged = paged_;
    num_pages = int(num_pages_);
    page_row = page_row_;
    valid_bits = 0;
    pend_page = 0;
    next_sub = 0;
    next_page_idx = 1;
    rows_left0 = len - r0;
    const int64_t row_bytes = paged ? kRow : kv_heads * kRow;
    row_step_bytes = int(kRowStep * row_bytes);
    tile_bytes = int(kN * row_bytes);
    if (paged) {
      thr_off = int64_t(g) * page_size * kRow;
      page_bytes = kv_heads * page_size * kRow;
      tiles_per_page = int(page_size / kN);
      n_pages = (num_tiles + tiles_per_page - 1) / tiles_per_page;
      if (n_pages > 0) pend_page = __ldg(page_row);
    } else {
      thr_off = kv_begin * row_bytes + int64_t(g) * kRow;
      page_bytes = 0;
      tiles_per_page = 1;
      n_pages = 0;
    }
    thr_off += int64_t(r0) * row_bytes + cc * 16;
  }

  // Issues tile n (the next one in order) into a stage: k_dst / v_dst point at
  // this thread's first chunk in stage 0, stage_off is the stage's offset.
  __device__ __forceinline__ void issue(int n, uint8_t* k_dst, uint8_t* v_dst, int stage_off) {
    using GmemCopy = cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>;
    const int j0 = n * kN;
    bool tile_ok = true;
    int64_t off;
    if (paged) {
      // Tiles are issued in order, so the tile's place in the page is a
      // running count (no division by the runtime tiles_per_page per tile).
      const int page = pend_page;
      const int sub = next_sub;
      tile_ok = page >= 0 && page < num_pages;
      off = (tile_ok ? int64_t(page) : 0) * page_bytes + thr_off + int64_t(sub) * tile_bytes;
      // Page id of tile n + 1 (the next issue), read now to hide its latency.
      if (++next_sub == tiles_per_page) {
        next_sub = 0;
        if (next_page_idx < n_pages) pend_page = __ldg(page_row + next_page_idx);
        ++next_page_idx;
      }
    } else {
      off = thr_off + int64_t(n) * tile_bytes;
    }
    valid_bits = (valid_bits & ~(1u << (n & 31))) | (uint32_t(tile_ok) << (n & 31));
    const int rows_left = tile_ok ? rows_left0 - j0 : 0;
    const uint8_t* ksrc = k + off;
    uint8_t* kd = k_dst + stage_off;
    uint8_t* vd = v_dst + stage_off;
#pragma unroll
    for (int i = 0; i < Tr::kKVChunksPerThread; ++i) {
      const bool ok = i * kRowStep < rows_left;
      const uint8_t* src = ok ? ksrc + i * row_step_bytes : k;
      GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(src),
                     *reinterpret_cast<cute::uint128_t*>(kd + i * kDstStep), ok);
      GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(src + v_minus_k),
                     *reinterpret_cast<cute::uint128_t*>(vd + i * kDstStep), ok);
    }
  }

  __device__ __forceinline__ bool tile_valid(int n) const { return (valid_bits >> (n & 31)) & 1u; }
};

// Raw e4m3 tile (row-major, kHeadDim bytes per row) -> the Elem tile `dst`
// ((kBlockN, kHeadDim) swizzled smem tensor), 16 values per 16-byte chunk.
template <class Tr, class Tensor>
__device__ __forceinline__ void convert_fp8_tile(const uint8_t* raw, Tensor&& dst) {
  using Elem = typename Tr::Elem;
  constexpr int kD = Tr::kHeadDim;
  constexpr int kCpr = kD / 16;
  constexpr int kRowStep = Tr::kThreads / kCpr;
  constexpr int kChunks = Tr::kBlockN * kCpr / Tr::kThreads;
  static_assert(Tr::kBlockN * kCpr % Tr::kThreads == 0 && Tr::kThreads % kCpr == 0, "fp8 conversion mapping");
  static_assert(kRowStep % 8 == 0, "row step must keep the swizzle phase");
  // This thread: rows r0 + i * kRowStep, 16 values at column c * 16. In the
  // swizzled layout a step of kRowStep rows is a fixed kRowStep * 64 elements.
  const int r0 = threadIdx.x / kCpr, c = threadIdx.x % kCpr;
  Elem* d0 = &dst(r0, c * 16);
  Elem* d1 = &dst(r0, c * 16 + 8);
  const uint8_t* src = raw + r0 * kD + c * 16;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const uint4 in = *reinterpret_cast<const uint4*>(src + i * kRowStep * kD);
    uint4 o0, o1;
    block_scores::convert_fp8x16<Elem>(in, o0, o1);
    *reinterpret_cast<uint4*>(d0 + i * kRowStep * 64) = o0;
    *reinterpret_cast<uint4*>(d1 + i * kRowStep * 64) = o1;
  }
}

}  // namespace msa::cuda::attention

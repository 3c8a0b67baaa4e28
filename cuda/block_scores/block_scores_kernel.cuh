// msa_block_scores kernel (FlashAttention-2 style, sm_80+ mma.sync):
//
//   CTA = (tile slot, KV chunk). A tile is up to 128 consecutive flattened
//   (token, head) rows of ONE sequence (all H index heads share the single
//   index key head, so heads of consecutive tokens stack along M). The chunk
//   is a static range of `chunk_blocks` blocks of the output; the CTA
//   computes the blocks of its chunk that some row of the tile can see and
//   writes -inf to the rest without loading anything.
//
//   Mainloop: Q tile -> registers once (ldmatrix); 64-key K tiles (half a
//   128-token block) stream through a kStages-deep cp.async pipeline into
//   swizzled shared memory (fp8 keys: raw bytes, converted to bf16/fp16 in
//   shared memory per tile), ldmatrix -> mma.sync 16x8x16, fp32 accumulators.
//   4 warps along M, each 32 rows x 64 keys.
//
//   Epilogue per tile: each thread folds its accumulator columns into a
//   running max for its 4 rows (causal / length mask only on tiles not fully
//   visible); at the end of a block, a quad shuffle reduces the row max and
//   one lane per row writes scores[row, block]. [T, T_k] is never formed.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "cuda/block_scores/block_scores.h"
#include "cuda/block_scores/fp8_convert.cuh"
#include "cuda/block_scores/kernel_traits.cuh"
#include "cuda/block_scores/tile_scheduler.cuh"
#include "cuda/common/int_math.cuh"

namespace msa::cuda::block_scores {

struct KernelArgs {
  BlockScoresParams p;
  int64_t num_slots;     // gridDim.x: tile-slot bound ceil(T*H/kBlockM) + B + 2
  int64_t chunk_blocks;  // output blocks per gridDim.y chunk
  float out_scale;       // |scale * k_scale|
  bool negate_q;         // scale * k_scale < 0: max of -q.k, then * |scale|
};


// -inf for rows [row_begin, row_end) x blocks [c_begin, c_end): a warp per
// row, lanes along the (contiguous) blocks.
template <int kThreads>
__device__ __forceinline__ void write_neg_inf(float* __restrict__ scores, int64_t num_blocks, int64_t row_begin,
                                              int64_t row_end, int64_t c_begin, int64_t c_end) {
  if (c_begin >= c_end) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t r = row_begin + warp; r < row_end; r += kThreads / 32) {
    float* out = scores + r * num_blocks;
    for (int64_t c = c_begin + lane; c < c_end; c += 32) out[c] = -INFINITY;
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 2) block_scores_kernel(const __grid_constant__ KernelArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim, kS = Tr::kStages;
  constexpr int kThreads = Tr::kThreads;
  static_assert(kS <= 32, "valid-tile ring is 32 bits");

  extern __shared__ __align__(128) uint8_t smem_[];
  __shared__ TileInfo s_info;
  Elem* q_smem = reinterpret_cast<Elem*>(smem_);
  Elem* k_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes);
  uint8_t* kraw_smem = smem_ + Tr::kSmemQBytes + Tr::kSmemKBytes;  // fp8 keys only
  int32_t* scan_buf = reinterpret_cast<int32_t*>(Tr::kFp8K ? kraw_smem : smem_ + Tr::kSmemQBytes);

  const BlockScoresParams& p = a.p;
  const int tid = threadIdx.x;
  const int lane = tid % 32;

  // ---- Tile schedule: heavy (late, causally longest) slots launch first.
  const int64_t slot = a.num_slots - 1 - int64_t(blockIdx.x);
  const TileInfo ti = find_tile<kM>(p.q_indptr, int(p.batch), p.total_q, int(p.heads), slot, scan_buf,
                                    Tr::kScanCapacity, &s_info);
  if (!ti.found) return;
  const int64_t H = p.heads;
  const int64_t NB = p.num_blocks;
  const int64_t bs = p.block_size;
  const int tiles_per_block = int(bs / kN);

  // ---- Sequence KV range (clipped as the contract says).
  const int b = ti.seq;
  int64_t L = 0, kv_begin = 0;
  if (b >= 0) {
    int64_t cap;
    if (p.paged) {
      cap = p.max_pages * p.page_size;
    } else {
      const int64_t kb = clamp64(p.kv_indptr[b], 0, p.dense_rows);
      const int64_t ke = clamp64(p.kv_indptr[b + 1], kb, p.dense_rows);
      kv_begin = kb;
      cap = ke - kb;
    }
    L = clamp64(p.kv_lens[b], 0, cap);
  }
  // One past the last visible token of flattened row `row` (monotone in row).
  auto vis_end = [&](int64_t row) -> int64_t {
    if (!p.causal) return L;
    const int64_t i = row / H - ti.seq_token_begin;
    return clamp64(L - ti.q_len + i + 1, 0, L);
  };
  const int64_t max_vis = vis_end(ti.row_end - 1);
  const int64_t min_vis64 = vis_end(ti.row_begin);

  // ---- This CTA's blocks: computed [c_lo, comp_hi), -inf [comp_hi, c_hi).
  const int64_t c_lo = int64_t(blockIdx.y) * a.chunk_blocks;
  const int64_t c_hi = min64(NB, c_lo + a.chunk_blocks);
  const int64_t comp_hi = max64(c_lo, min64(c_hi, (max_vis + bs - 1) / bs));
  if (comp_hi == c_lo) {
    write_neg_inf<kThreads>(p.scores, NB, ti.row_begin, ti.row_end, c_lo, c_hi);
    return;
  }
  // Tile indices (64 keys each) fit in int32: the handler caps KV capacity
  // below 2^31 tokens. Keys and rows of the loop below are relative to the
  // first computed tile, so the hot loop does 32-bit arithmetic only.
  const int tile_begin = int(c_lo * tiles_per_block);
  const int tile_end = int((min64(max_vis, comp_hi * bs) + kN - 1) / kN);  // > tile_begin
  const int64_t key0 = int64_t(tile_begin) * kN;

  // ---- Global -> shared copies (cp.async, zero-fill outside the data).
  using GmemCopy = SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>;
  Tensor sQ = make_tensor(make_smem_ptr(q_smem), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(k_smem), typename Tr::SmemLayoutK{});
  // Swizzled layouts: the 8-row swizzle period makes a step of kRowStep
  // rows (a multiple of 8) a fixed kRowStep * 64-element offset, and a stage
  // kBlockN * kHeadDim elements (atoms are tiled column-block-major).

  {  // Q tile: rows past the tile's end are zero (never written out).
    constexpr int kCpr = Tr::kQChunksPerRow;
    constexpr int kRowStep = kThreads / kCpr;
    static_assert(kRowStep % 8 == 0, "row step must keep the swizzle phase");
    const Elem* q = static_cast<const Elem*>(p.q);
    const int cc = tid % kCpr, r0 = tid / kCpr;
    Elem* dst0 = &sQ(r0, cc * 8);
    const int64_t rows_left = ti.row_end - ti.row_begin - r0;
    const Elem* src0 = q + (ti.row_begin + r0) * kD + cc * 8;
#pragma unroll
    for (int i = 0; i < Tr::kQChunksPerThread; ++i) {
      const bool ok = i * kRowStep < rows_left;
      const Elem* src = ok ? src0 + int64_t(i) * kRowStep * kD : q;
      GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(src),
                     *reinterpret_cast<cute::uint128_t*>(dst0 + i * kRowStep * 64), ok);
    }
    cute::cp_async_fence();
  }

  // K tile n: keys [n*64, n*64+64) of sequence b. Paged: one page (block ==
  // page, a multiple of 64 tokens), whose id comes from page_table; an
  // out-of-range id makes the whole tile unresolvable (zero-filled, masked).
  constexpr int kKCpr = Tr::kKChunksPerRow;
  constexpr int kKRowStep = kThreads / kKCpr;
  static_assert(kKRowStep % 8 == 0, "row step must keep the swizzle phase");
  constexpr int64_t kRowBytes = int64_t(kD) * Tr::kKElemBytes;
  const uint8_t* kbytes = static_cast<const uint8_t*>(p.k);
  const int k_cc = tid % kKCpr, k_r0 = tid / kKCpr;
  uint8_t* k_dst0;
  if constexpr (Tr::kFp8K) {
    k_dst0 = kraw_smem + k_r0 * kD + k_cc * 16;
  } else {
    k_dst0 = reinterpret_cast<uint8_t*>(&sK(k_r0, k_cc * 8, 0));
  }
  constexpr int kDstRowStepBytes = Tr::kFp8K ? kKRowStep * kD : kKRowStep * 64 * int(sizeof(Elem));
  // Issue cursor: tile iss_it (relative), its block/page index and position.
  const int32_t* page_row = p.paged ? p.page_table + int64_t(b) * p.max_pages : nullptr;
  int64_t iss_block = c_lo;  // tile_begin is the first tile of block c_lo
  int iss_sub = 0;
  const int64_t n_blocks_computed = comp_hi;  // blocks [c_lo, comp_hi) hold the tiles
  int page_cur = 0, page_next = 0;
  if (p.paged) {
    page_cur = __ldg(page_row + iss_block);
    if (iss_block + 1 < n_blocks_computed) page_next = __ldg(page_row + iss_block + 1);
  }
  const int64_t kv_row0 = kv_begin + key0;  // dense row of relative key 0
  const int64_t keys_avail = L - key0;      // relative keys < keys_avail exist
  uint32_t valid_bits = 0;                   // bit (it & 31): tile it resolvable
  auto issue_k = [&](int it, int stage) {
    const int jrel = it * kN;
    bool tile_ok = true;
    const uint8_t* base;
    if (p.paged) {
      tile_ok = page_cur >= 0 && page_cur < p.num_pages;
      base = kbytes + ((tile_ok ? int64_t(page_cur) : 0) * p.page_size + iss_sub * kN) * kRowBytes;
      if (++iss_sub == tiles_per_block) {  // next page: its id was prefetched
        iss_sub = 0;
        ++iss_block;
        page_cur = page_next;
        if (iss_block + 1 < n_blocks_computed) page_next = __ldg(page_row + iss_block + 1);
      }
    } else {
      base = kbytes + (kv_row0 + jrel) * kRowBytes;
    }
    valid_bits = (valid_bits & ~(1u << (it & 31))) | (uint32_t(tile_ok) << (it & 31));
    const int64_t rows_left = tile_ok ? keys_avail - jrel - k_r0 : 0;
    const uint8_t* src0 = base + k_r0 * kRowBytes + k_cc * 16;
    uint8_t* dst0 = k_dst0 + stage * Tr::kKStageBytes;
#pragma unroll
    for (int i = 0; i < Tr::kKChunksPerThread; ++i) {
      const bool ok = i * kKRowStep < rows_left;
      const uint8_t* src = ok ? src0 + i * kKRowStep * kRowBytes : kbytes;
      GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(src),
                     *reinterpret_cast<cute::uint128_t*>(dst0 + i * kDstRowStepBytes), ok);
    }
  };
  const int num_tiles = tile_end - tile_begin;

  // The schedule scan used the pipeline region: everyone is past it (the
  // last barrier of find_tile), so the prologue may overwrite it.
#pragma unroll
  for (int s = 0; s < kS - 1; ++s) {
    if (s < num_tiles) issue_k(s, s);
    cute::cp_async_fence();
  }

  // Blocks of the chunk that no row of the tile sees: -inf, nothing loaded.
  write_neg_inf<kThreads>(p.scores, NB, ti.row_begin, ti.row_end, comp_hi, c_hi);

  // ---- MMA partitions.
  typename Tr::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);           // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0));  // (MMA, MMA_N, MMA_K)
  Tensor acc = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});  // (MMA, MMA_M, MMA_N)
  auto smem_copy_q = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_q = smem_copy_q.get_thread_slice(tid);
  auto smem_copy_k = make_tiled_copy_B(typename Tr::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_k = smem_copy_k.get_thread_slice(tid);
  Tensor tSsK = smem_thr_copy_k.partition_S(sK);  // (CPY, CPY_N, CPY_K, kKTiles)
  Tensor tSrK_view = smem_thr_copy_k.retile_D(tSrK);
  constexpr int kMmaM = decltype(size<1>(acc))::value;
  constexpr int kMmaN = decltype(size<2>(acc))::value;
  constexpr int kMmaK = decltype(size<2>(tSrK))::value;
  constexpr int kSlots = 2 * kMmaM;  // rows per thread: (atom m, half h) -> slot 2m+h

  // Accumulator coordinates: value v = (col parity, row half) of the SM80
  // 16x8 C fragment.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kN>>{}));
  float* out_row[kSlots];  // &scores[row, 0], null for padding rows
  int row_vis[kSlots];     // visible keys of the row, relative to key0, clamped
  bool row_any[kMmaM];
#pragma unroll
  for (int m = 0; m < kMmaM; ++m) {
    row_any[m] = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int s = 2 * m + h;
      const int64_t row = ti.row_begin + get<0>(tScS(2 * h, m, 0));
      const bool ok = row < ti.row_end;
      out_row[s] = ok ? p.scores + row * NB : nullptr;
      row_vis[s] = ok ? int(clamp64(vis_end(row) - key0, 0, int64_t(num_tiles) * kN)) : 0;
      row_any[m] |= ok;
    }
  }
  bool atom_active[kMmaM];  // warp-uniform: skip MMAs of all-padding row atoms
#pragma unroll
  for (int m = 0; m < kMmaM; ++m) atom_active[m] = __any_sync(0xffffffffu, row_any[m]);
  const int min_vis = int(clamp64(min_vis64 - key0, 0, int64_t(num_tiles) * kN));
  int col_of[kMmaN * 2];
#pragma unroll
  for (int n = 0; n < kMmaN; ++n) {
#pragma unroll
    for (int v = 0; v < 2; ++v) col_of[2 * n + v] = get<1>(tScS(v, 0, n));
  }

  // ---- Q -> registers (once).
  cute::cp_async_wait<kS - 1>();
  __syncthreads();
  {
    Tensor tSsQ = smem_thr_copy_q.partition_S(sQ);
    Tensor tSrQ_view = smem_thr_copy_q.retile_D(tSrQ);
    cute::copy(smem_copy_q, tSsQ, tSrQ_view);
    if (a.negate_q) {
      Tensor q32 = recast<uint32_t>(tSrQ);
#pragma unroll
      for (int i = 0; i < size(q32); ++i) q32(i) ^= 0x80008000u;
    }
  }

  float row_max[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) row_max[s] = -INFINITY;
  int64_t out_block = c_lo;  // block of the tile being computed
  int blk_sub = 0;           // its position inside the block

  // ---- Mainloop over the K tiles of the computed blocks.
  for (int it = 0; it < num_tiles; ++it) {
    cute::cp_async_wait<kS - 2>();
    __syncthreads();  // tile it landed for all threads; stage (it-1)%kS free
    if (it + kS - 1 < num_tiles) issue_k(it + kS - 1, (it + kS - 1) % kS);
    cute::cp_async_fence();
    int kstage = it % kS;
    if constexpr (Tr::kFp8K) {
      // Raw e4m3 stage -> the Elem tile (16 values per 16-byte chunk).
      constexpr int kCpr = kD / 16;
      const uint8_t* raw = kraw_smem + kstage * Tr::kKStageBytes;
#pragma unroll
      for (int i = 0; i < Tr::kKChunksPerThread; ++i) {
        const int q = tid + i * kThreads;
        const int r = q / kCpr, cc = q % kCpr;
        const uint4 in = *reinterpret_cast<const uint4*>(raw + r * kD + cc * 16);
        uint4 o0, o1;
        convert_fp8x16<Elem>(in, o0, o1);
        *reinterpret_cast<uint4*>(&sK(r, cc * 16, 0)) = o0;
        *reinterpret_cast<uint4*>(&sK(r, cc * 16 + 8, 0)) = o1;
      }
      __syncthreads();
      kstage = 0;
    }

    // S = Q K^T for this tile (ldmatrix of k-slice k+1 overlaps the MMAs of k).
    clear(acc);
    Tensor tSsK_s = tSsK(_, _, _, kstage);
    cute::copy(smem_copy_k, tSsK_s(_, _, 0), tSrK_view(_, _, 0));
#pragma unroll
    for (int k = 0; k < kMmaK; ++k) {
      if (k + 1 < kMmaK) cute::copy(smem_copy_k, tSsK_s(_, _, k + 1), tSrK_view(_, _, k + 1));
#pragma unroll
      for (int m = 0; m < kMmaM; ++m) {
        if (!atom_active[m]) continue;
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) cute::gemm(tiled_mma, acc(_, m, j), tSrQ(_, m, k), tSrK(_, j, k), acc(_, m, j));
      }
    }

    // Running row max over the visible columns of this tile.
    const int jrel = it * kN;
    const bool tile_ok = (valid_bits >> (it & 31)) & 1u;
    if (tile_ok && min_vis >= jrel + kN) {
#pragma unroll
      for (int m = 0; m < kMmaM; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int j = 0; j < kMmaN; ++j)
            row_max[2 * m + h] = fmaxf(row_max[2 * m + h], fmaxf(acc(2 * h, m, j), acc(2 * h + 1, m, j)));
    } else if (tile_ok) {
#pragma unroll
      for (int m = 0; m < kMmaM; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int s = 2 * m + h;
          const int lim = row_vis[s] - jrel;  // visible columns of this tile: [0, lim)
#pragma unroll
          for (int j = 0; j < kMmaN; ++j)
#pragma unroll
            for (int v = 0; v < 2; ++v)
              if (col_of[2 * j + v] < lim) row_max[s] = fmaxf(row_max[s], acc(2 * h + v, m, j));
        }
    }

    // End of a block (or of the computed range): reduce over the quad that
    // shares each row and write one score per row.
    if (++blk_sub == tiles_per_block || it + 1 == num_tiles) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        float v = row_max[s];
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
        if ((lane & 3) == 0 && out_row[s] != nullptr)
          out_row[s][out_block] = v == -INFINITY ? -INFINITY : v * a.out_scale;
        row_max[s] = -INFINITY;
      }
      blk_sub = 0;
      ++out_block;
    }
  }
  cute::cp_async_wait<0>();  // no copy in flight at exit
}

}  // namespace msa::cuda::block_scores

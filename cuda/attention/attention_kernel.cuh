// msa_attention prefill kernel (FlashAttention-2 style, sm_80+ mma.sync):
//
//   CTA = (tile slot, KV head g). A tile is up to 128 flattened (token, group
//   head) rows of ONE sequence; the G = Hq / Hkv query heads of the group
//   share K/V, so they stack along M and each K/V tile is loaded once per
//   group (tile_scheduler.cuh).
//
//   Mainloop over kBlockN-key tiles (64 for d64, 32 for d128) up to the
//   last visible key of the tile's last row (causal: early
//   exit past the diagonal of the tile's last row): K and V tiles stream
//   through a kStages-deep cp.async pipeline into swizzled shared memory
//   (fp8: raw bytes, converted to bf16/fp16 tiles in shared memory), S = Q K^T
//   (ldmatrix + mma.sync 16x8x16, fp32), masking only on tiles not fully
//   visible to every row (causal boundary, length, unresolvable page), online
//   softmax in fp32 with exp2, P converted in registers, O += P V (V^T by
//   transposed ldmatrix). 4 warps along M, 32 rows each.
//
//   Block maxima (num_blocks > 0): the per-tile row max of the softmax is
//   folded into a running max per row, flushed at each block boundary.
//
//   Epilogue: O / l (times v_scale) -> shared -> 16-byte stores; lse.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "cuda/attention/attention.h"
#include "cuda/attention/epilogue.cuh"
#include "cuda/attention/kernel_traits.cuh"
#include "cuda/attention/kv_loader.cuh"
#include "cuda/attention/mainloop.cuh"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/tile_scheduler.cuh"

namespace msa::cuda::attention {

struct KernelArgs {
  AttentionParams p;
  int64_t num_slots;  // tile slots per KV head; gridDim.x = num_slots * kv_heads
  float c2;           // |scale * k_scale| * log2(e), clamped to >= 1e-30
  float c_nat;        // |scale * k_scale|
  bool negate_q;      // scale * k_scale < 0: softmax of (-q).k * |c|
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocksPerSm)
    attention_kernel(const __grid_constant__ KernelArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim, kS = Tr::kStages;
  constexpr int kThreads = Tr::kThreads;
  static_assert(kS >= 2 && kS <= 32, "pipeline depth");

  extern __shared__ __align__(128) uint8_t smem_[];
  __shared__ TileInfo s_info;
  // Running block maxima of this thread's rows (block_max requested):
  // shared memory, not registers (the d128 mainloop needs all 255).
  __shared__ float s_blk_max[2 * 2][Tr::kThreads];
  Elem* q_smem = reinterpret_cast<Elem*>(smem_);
  Elem* k_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes);
  Elem* v_smem = k_smem + Tr::kKVTiles * Tr::kTileElems;
  uint8_t* kraw_smem = smem_ + Tr::kSmemQBytes + Tr::kSmemKVBytes;  // fp8 only
  uint8_t* vraw_smem = kraw_smem + kS * Tr::kKVStageBytes;
  int32_t* scan_buf = reinterpret_cast<int32_t*>(smem_ + Tr::kSmemQBytes);

  const AttentionParams& p = a.p;
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int G = int(p.q_heads / p.kv_heads);
  const int Hq = int(p.q_heads);

  // ---- Schedule.
  const CtaWork w = cta_work(a.num_slots, int(p.kv_heads));
  const TileInfo ti =
      block_scores::find_tile<kM>(p.q_indptr, int(p.batch), p.total_q, G, w.slot, scan_buf, Tr::kScanCapacity, &s_info);
  if (!ti.found) return;
  const int g = w.kv_head;
  const SeqKv sk = seq_kv(ti.seq, p.paged, p.kv_indptr, p.kv_lens, p.dense_rows, p.max_pages, p.page_size);
  const VisibleEnd vis_end{sk.len, ti.q_len, ti.seq_token_begin, G, p.causal};
  const int max_vis = int(vis_end(ti.row_end - 1));  // keys < 2^31: the launcher checks capacities
  const int min_vis = int(vis_end(ti.row_begin));
  const int num_tiles = (max_vis + kN - 1) / kN;

  Tensor sQ = make_tensor(make_smem_ptr(q_smem), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(k_smem), typename Tr::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(v_smem), typename Tr::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(v_smem), typename Tr::SmemLayoutVt{});
  Tensor sVtNoSwizzle = make_tensor(make_smem_ptr(v_smem), typename Tr::SmemLayoutVtNoSwizzle{});

  // ---- Prologue: Q (group 0), then K/V tiles 0 .. kS-2 (one group each).
  // find_tile's last barrier: the scan buffer (K/V region) is free again.
  load_q_tile<Tr>(static_cast<const Elem*>(p.q), sQ, ti.row_begin, ti.row_end, G, g, p.q_heads);
  cute::cp_async_fence();

  KvLoader<Tr> ld;
  const int kv_r0 = tid / Tr::kKVChunksPerRow, kv_cc = tid % Tr::kKVChunksPerRow;
  ld.init(p.k, p.v, p.paged, sk.kv_begin, g, p.kv_heads, p.page_size, p.num_pages,
          (p.paged && ti.seq >= 0) ? p.page_table + int64_t(ti.seq) * p.max_pages : p.page_table, int(sk.len),
          num_tiles, kv_r0, kv_cc);
  uint8_t* k_dst;
  uint8_t* v_dst;
  int stage_bytes;
  if constexpr (Tr::kFp8KV) {
    k_dst = kraw_smem + kv_r0 * kD + kv_cc * 16;
    v_dst = vraw_smem + kv_r0 * kD + kv_cc * 16;
    stage_bytes = Tr::kKVStageBytes;
  } else {
    k_dst = reinterpret_cast<uint8_t*>(&sK(kv_r0, kv_cc * 8, 0));
    v_dst = reinterpret_cast<uint8_t*>(&sV(kv_r0, kv_cc * 8, 0));
    stage_bytes = Tr::kTileElems * int(sizeof(Elem));
  }
#pragma unroll
  for (int s = 0; s < kS - 1; ++s) {
    if (s < num_tiles) ld.issue(s, k_dst, v_dst, s * stage_bytes);
    cute::cp_async_fence();
  }

  // ---- Block maxima of blocks no tile of this CTA reaches: -inf.
  const bool want_bm = p.num_blocks > 0;
  const int tiles_per_block = want_bm ? int(p.block_size / kN) : 1;
  if (want_bm) {
    const int64_t blocks_done = (int64_t(num_tiles) * kN + p.block_size - 1) / p.block_size;
    fill_block_max<kThreads>(p.block_max, p.num_blocks, ti.row_begin, ti.row_end, blocks_done, G, g, Hq);
  }

  // ---- MMA partitions.
  typename Tr::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);                    // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0));           // (MMA, MMA_N, MMA_K)
  Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle(_, _, 0));  // (MMA, MMA_D, MMA_KN)
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kM>, Int<kD>>{});  // (MMA, MMA_M, MMA_D)
  clear(acc_o);

  auto copy_q = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, mma);
  auto thr_copy_q = copy_q.get_thread_slice(tid);
  Tensor tSsQ = thr_copy_q.partition_S(sQ);
  auto copy_k = make_tiled_copy_B(typename Tr::SmemCopyAtom{}, mma);
  auto thr_copy_k = copy_k.get_thread_slice(tid);
  Tensor tSsK = thr_copy_k.partition_S(sK);  // (CPY, CPY_N, CPY_K, tiles)
  auto copy_v = make_tiled_copy_B(typename Tr::SmemCopyAtomT{}, mma);
  auto thr_copy_v = copy_v.get_thread_slice(tid);
  Tensor tOsVt = thr_copy_v.partition_S(sVt);  // (CPY, CPY_D, CPY_KN, tiles)

  constexpr int kMmaM = decltype(size<1>(acc_o))::value;
  constexpr int kRows = 2 * kMmaM;  // rows per thread: slot 2m+h
  // SM80 C fragment rows of this thread: slot 2m+h holds tile row
  // warp*16 + m*64 + h*8 + lane/4 (kWarps = 4 warps along M, 16 rows each per
  // 64-row atom tile); columns 2*(lane%4) + 8j + v.
  static_assert(kM == 128 && Tr::kWarps == 4, "row formula");
  const int tile_row0 = (tid / 32) * 16 + lane / 4;
  const int col0 = 2 * (lane % 4);
  // Visible keys of tile row tr (its vis_end; rows past the tile's end see
  // nothing): computed where needed (masked tiles only) from three ints
  // instead of holding a register per row through the mainloop.
  const int tile_rows = int(ti.row_end - ti.row_begin);
  const int row_off0 = int(ti.row_begin % G);                     // group-head index of tile row 0
  // Unclamped bottom-right position + 1 of tile row 0's token (it grows by
  // one per token); floored at -256 (a tile spans < 256 tokens, so rows
  // below stay at 0 after clamping).
  const int vis_base =
      int(max64(sk.len - ti.q_len + (ti.row_begin - row_off0) / G - ti.seq_token_begin + 1, -256));
  const int seq_len = int(sk.len);
  auto row_vis = [&](int tr) -> int {
    if (tr >= tile_rows) return 0;
    if (!p.causal) return seq_len;
    const int t = int(uint32_t(row_off0 + tr) / uint32_t(G));
    const int v = vis_base + t;
    return v < 0 ? 0 : (v < seq_len ? v : seq_len);
  };
  // (token, query head) index in [T, Hq] of slot r, -1 for padding rows;
  // recomputed where needed (rare) instead of holding registers.
  auto row_idx = [&](int r) -> int {
    const int64_t row = s_info.row_begin + tile_row0 + (r / 2) * 64 + (r % 2) * 8;
    return row < s_info.row_end ? row_index(row, G, g, Hq) : -1;
  };

  if (a.negate_q) {
    cute::cp_async_wait<kS - 1>();  // the Q group landed (this thread's chunks)
    negate_own_q_chunks<Tr>(sQ);    // visible to all after the mainloop's first barrier
  }

  OnlineSoftmax<kMmaM> softmax;
  softmax.init();
  static_assert(kRows == 4, "s_blk_max rows");
#pragma unroll
  for (int r = 0; r < kRows; ++r) s_blk_max[r][tid] = -INFINITY;
  int blk_sub = 0;
  int64_t out_block = 0;

  // ---- Mainloop.
  for (int it = 0; it < num_tiles; ++it) {
    cute::cp_async_wait<kS - 2>();
    __syncthreads();  // tile it landed for all threads; stage (it-1) % kS free
    if (it + kS - 1 < num_tiles) ld.issue(it + kS - 1, k_dst, v_dst, ((it + kS - 1) % kS) * stage_bytes);
    cute::cp_async_fence();
    int stage = it % kS;
    if constexpr (Tr::kFp8KV) {
      convert_fp8_tile<Tr>(kraw_smem + stage * Tr::kKVStageBytes, sK(_, _, 0));
      convert_fp8_tile<Tr>(vraw_smem + stage * Tr::kKVStageBytes, sV(_, _, 0));
      __syncthreads();
      stage = 0;
    }

    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kM>, Int<kN>>{});  // (MMA, MMA_M, MMA_N)
    clear(acc_s);
    gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, stage), mma, copy_q, copy_k, thr_copy_q, thr_copy_k);

    const int j0 = it * kN;
    const bool tile_ok = ld.tile_valid(it);
    if (!tile_ok || min_vis < j0 + kN) {
      int lim[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) lim[r] = row_vis(tile_row0 + (r / 2) * 64 + (r % 2) * 8) - j0;
      mask_scores(acc_s, lim, col0, tile_ok);
    }
    float tile_max[kRows];
    softmax.step(acc_s, acc_o, a.c2, tile_max);

    Tensor rP = make_tensor<Elem>(acc_s.layout());
    convert_acc(acc_s, rP);
    Tensor tOrP = make_tensor(rP.data(), acc_to_a_layout(rP.layout()));
    gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), mma, copy_v, thr_copy_v);

    if (want_bm) {
      const bool flush = ++blk_sub == tiles_per_block || it + 1 == num_tiles;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float bm = fmaxf(s_blk_max[r][tid], tile_max[r]);
        s_blk_max[r][tid] = flush ? -INFINITY : bm;
        if (flush && out_block < p.num_blocks && (lane & 3) == 0) {
          const int idx = row_idx(r);
          if (idx >= 0)
            p.block_max[int64_t(idx) * p.num_blocks + out_block] = bm == -INFINITY ? -INFINITY : bm * a.c_nat;
        }
      }
      if (flush) {
        blk_sub = 0;
        ++out_block;
      }
    }
  }

  // ---- Epilogue.
  float lse[kRows];
  softmax.finalize(acc_o, a.c_nat, p.v_scale, lse);
  if ((lane & 3) == 0) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int idx = row_idx(r);
      if (idx >= 0) p.lse[idx] = lse[r];
    }
  }
  cute::cp_async_wait<0>();  // nothing in flight (Q of a CTA without tiles)
  __syncthreads();           // every warp done with sQ
  o_to_smem<Tr>(acc_o, sQ, mma);
  __syncthreads();
  smem_to_o<Tr>(sQ, static_cast<Elem*>(p.o), s_info.row_begin, s_info.row_end, G, g, Hq);
}

}  // namespace msa::cuda::attention

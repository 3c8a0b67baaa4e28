// msa_block_scores kernel (FlashAttention-2 style, sm_80+ mma.sync; sm_90a
// wgmma for fp8 keys):
//
//   CTA = (tile slot, KV chunk). A tile is up to 128 consecutive flattened
//   (token, head) rows of ONE sequence (all H index heads share the single
//   index key head, so heads of consecutive tokens stack along M). The chunk
//   is a static range of `chunk_blocks` blocks of the output; the CTA
//   computes the blocks of its chunk that some row of the tile can see and
//   writes -inf to the rest without loading anything.
//
//   Mainloop: 64-key K tiles (half a 128-token block) stream through a
//   kStages-deep cp.async pipeline into swizzled shared memory.
//   Same-dtype keys: Q tile -> registers once (ldmatrix), ldmatrix of K ->
//   mma.sync 16x8x16, fp32 accumulators; 4 warps along M, each 32 rows x 64
//   keys.
//   fp8 keys: the raw e4m3 bytes stay in shared memory and are converted to
//   bf16/fp16 in registers (exactly), 16 bytes = 4 k-steps per load, in a
//   permuted head-dim order (the "fp8 keys" sections below). On sm_90a:
//   S^T = K Q^T by wgmma with the converted keys as the register operand and
//   Q (permuted once) from shared memory; each key is converted once per CTA.
//   Elsewhere (the compute_80 PTX): mma.sync with per-warp conversion.
//
//   Epilogue per tile: each thread folds its accumulator columns into a
//   running max for its 4 rows (causal / length mask only on tiles not fully
//   visible); at the end of a block, a quad shuffle reduces the row max and
//   one lane per row writes scores[row, block]. [T, T_k] is never formed.
//   (fp8 wgmma: the accumulator is transposed, keys along rows; the block max
//   reduces over lanes and warps instead, see reduce_cols_over_g.)
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include <cute/arch/mma_sm90_gmma.hpp>
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

// ---- fp8 keys, mma.sync (all architectures; used where wgmma is not).
//
// Q K^T does not change when the head dim d is permuted the same way in Q and
// K. The fp8 instances pick, per k-step, the d-order that lets each thread
// read its B fragment straight from the raw key bytes: mma.m16n8k16's B
// fragment of lane (g = lane / 4, t4 = lane % 4) holds key g, logical k
// {2t4, 2t4+1} (b0) and {8+2t4, 9+2t4} (b1). Within 64-wide group j of d,
// thread t4 owns d in [64j + 16t4, 64j + 16t4 + 16): one 16-byte load of key
// g's row. k-step 4j + s uses its bytes [4s, 4s+4) = d0 + {0,1,2,3},
// d0 = 64j + 16t4 + 4s, split by parity (no byte permute, see
// convert_fp8x4_by_parity): b0 = d0 + {0, 2}, b1 = d0 + {1, 3}. Q's A
// fragment of that k-step uses the same order: a0/a2 = Q[row g][d0 + {0,2}]
// / [d0 + {1,3}], a1/a3 the same for row g + 8.

// mma.sync m16n8k16, fp32 accumulate (not volatile: the compiler may
// interleave the conversions with it).
template <class Elem>
__device__ __forceinline__ void mma_16816(float& c0, float& c1, float& c2, float& c3, const uint32_t (&a)[4],
                                          uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<Elem, cute::bfloat16_t>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// A fragment of one k-step from Q rows g / g+8, each given as its 4 values
// d0 + {0,1,2,3} (two 32-bit words, low half first): pair them by parity.
__device__ __forceinline__ void q_frag_by_parity(uint32_t (&a)[4], uint32_t x, uint32_t y, uint32_t x8, uint32_t y8) {
  a[0] = __byte_perm(x, y, 0x5410);    // row g,   d0 + {0, 2}
  a[1] = __byte_perm(x8, y8, 0x5410);  // row g+8, d0 + {0, 2}
  a[2] = __byte_perm(x, y, 0x7632);    // row g,   d0 + {1, 3}
  a[3] = __byte_perm(x8, y8, 0x7632);  // row g+8, d0 + {1, 3}
}

// Q A-fragments of all k-steps in the fp8 d-order, for the rows row_g /
// row_g + 8 of each m atom (once per CTA: plain 16-byte loads of the
// swizzled Q tile; a 16-byte chunk holds d0..d0+7 = two k-steps).
template <class Tr, int kMmaM, int kMmaK, class SQ>
__device__ __forceinline__ void load_q_fp8_order(const SQ& sQ, const int (&row_g)[kMmaM], int t4,
                                                 uint32_t (&qa)[kMmaM][kMmaK][4]) {
#pragma unroll
  for (int m = 0; m < kMmaM; ++m)
#pragma unroll
    for (int ks = 0; ks < kMmaK; ks += 2) {
      const int d = (ks / 4) * 64 + 16 * t4 + (ks % 4) * 4;  // d0 of k-step ks (a chunk start)
      const uint4 lo = *reinterpret_cast<const uint4*>(&sQ(row_g[m], d));
      const uint4 hi = *reinterpret_cast<const uint4*>(&sQ(row_g[m] + 8, d));
      q_frag_by_parity(qa[m][ks], lo.x, lo.y, hi.x, hi.y);
      q_frag_by_parity(qa[m][ks + 1], lo.z, lo.w, hi.z, hi.w);
    }
}

// S = Q K^T of one raw fp8 key stage. Per 64-wide group of d: one 16-byte
// load per n8 key tile (4 k-steps of B fragments), then k-step by k-step all
// key tiles x m atoms, so each accumulator's MMAs are kMmaM * kMmaN apart and
// only one k-step of converted B fragments is live.
template <class Tr, int kMmaM, int kMmaK, class Acc>
__device__ __forceinline__ void mma_tile_fp8(Acc& acc, const uint32_t (&qa)[kMmaM][kMmaK][4], const uint8_t* stage,
                                             const int (&frag_off)[Tr::kHeadDim / 64],
                                             const bool (&atom_active)[kMmaM]) {
  using Elem = typename Tr::Elem;
  constexpr int kMmaN = decltype(size<2>(acc))::value;
  constexpr int kGroups = Tr::kHeadDim / 64;
  constexpr int kTileBytes = 8 * Tr::kHeadDim;  // 8 key rows
#pragma unroll
  for (int j = 0; j < kGroups; ++j) {
    uint4 raw[kMmaN];
#pragma unroll
    for (int n = 0; n < kMmaN; ++n) raw[n] = *reinterpret_cast<const uint4*>(stage + n * kTileBytes + frag_off[j]);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const int ks = 4 * j + s;
#pragma unroll
      for (int n = 0; n < kMmaN; ++n) {
        const uint32_t w = s == 0 ? raw[n].x : s == 1 ? raw[n].y : s == 2 ? raw[n].z : raw[n].w;
        uint32_t b0, b1;
        convert_fp8x4_by_parity<Elem>(w, b0, b1);
#pragma unroll
        for (int m = 0; m < kMmaM; ++m)
          if (atom_active[m]) mma_16816<Elem>(acc(0, m, n), acc(1, m, n), acc(2, m, n), acc(3, m, n), qa[m][ks], b0, b1);
      }
    }
  }
}

// ---- fp8 keys on sm_90a: wgmma with the keys as the register operand.
//
// S^T = K Q^T per 64-key tile with one warpgroup (the CTA's 4 warps):
// wgmma.m64n128k16, A = the 64 keys (registers: warp w holds keys 16w..16w+15
// in the mma.m16n8k16 A layout, converted from the raw e4m3 bytes in
// registers; every key is converted once per CTA), B = the 128 Q rows from
// shared memory (128-byte swizzle, K-major: the existing Q tile layout), fp32
// accumulators (64 per thread). The same head-dim permutation as above lets a
// thread's 16-byte raw load hold 4 k-steps of one key row: logical k of
// k-step 4j + s -> physical d = 64j + 16t4 + 4s + {0, 2} (k = 2t4 + {0,1}) and
// + {1, 3} (k = 8 + 2t4 + {0,1}). Q is permuted to that order once, in shared
// memory. Accumulator value i of a thread: key 16w + g + 8 * ((i / 2) & 1),
// Q row 8 * (i / 4) + 2t4 + (i & 1).
#if defined(__CUDA_ARCH__) && defined(CUTE_ARCH_MMA_SM90A_ENABLED)
#define MSA_BS_FP8_WGMMA 1
#else
#define MSA_BS_FP8_WGMMA 0
#endif

#if MSA_BS_FP8_WGMMA
// Generic-proxy shared-memory writes (st.shared, cp.async) -> visible to wgmma.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

template <class Elem>
using WgmmaRS = std::conditional_t<std::is_same_v<Elem, cute::bfloat16_t>,
                                   cute::SM90::GMMA::MMA_64x128x16_F32BF16BF16_RS<cute::SM90::GMMA::Major::K,
                                                                                  cute::SM90::GMMA::Major::K>,
                                   cute::SM90::GMMA::MMA_64x128x16_F32F16F16_RS<cute::SM90::GMMA::Major::K,
                                                                                cute::SM90::GMMA::Major::K>>;

template <class Elem, size_t... I>
__device__ __forceinline__ void wgmma_64x128x16(const uint32_t (&a)[4], uint64_t desc_b, float (&d)[64], bool accumulate,
                                                std::index_sequence<I...>) {
  WgmmaRS<Elem>::fma(a[0], a[1], a[2], a[3], desc_b, d[I]...,
                     accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero);
}

// Descriptor of the K-major, 128-byte-swizzled Q tile at shared address
// `addr` (1024-aligned pattern): 8-row core-matrix groups 1024 bytes apart
// (SBO), leading offset unused (1), swizzle mode 1 = 128 B.
__device__ __forceinline__ uint64_t q_desc(uint32_t addr) {
  return (uint64_t(1) << 62) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 16) | uint64_t((addr >> 4) & 0x3fff);
}

// Q tile (kBlockM rows, 64-wide column blocks of 128-byte swizzled rows) ->
// the fp8 wgmma d-order, in place, sign-flipped when negate. Logical word
// 8s + m of a 64-wide group (positions 16s + 2m, +1) takes the low (m < 4)
// or high (m >= 4) halves of natural words 8t + 2s, 8t + 2s + 1, t = m % 4.
template <class Tr>
__device__ __forceinline__ void permute_q_for_wgmma(uint8_t* q, bool negate) {
  constexpr int kM = Tr::kBlockM, kGroups = Tr::kHeadDim / 64;
  const uint32_t flip = negate ? 0x80008000u : 0u;
  for (int idx = threadIdx.x; idx < kM * kGroups; idx += Tr::kThreads) {
    const int r = idx % kM, j = idx / kM;
    uint8_t* row = q + j * (kM * 128) + r * 128;
    uint32_t in[32];
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const uint4 v = *reinterpret_cast<const uint4*>(row + ((c ^ (r & 7)) * 16));
      in[4 * c] = v.x, in[4 * c + 1] = v.y, in[4 * c + 2] = v.z, in[4 * c + 3] = v.w;
    }
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      uint32_t o[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int w = 4 * c + i, s = w / 8, m = w % 8, t = m % 4;
        o[i] = __byte_perm(in[8 * t + 2 * s], in[8 * t + 2 * s + 1], m < 4 ? 0x5410 : 0x7632) ^ flip;
      }
      *reinterpret_cast<uint4*>(row + ((c ^ (r & 7)) * 16)) = make_uint4(o[0], o[1], o[2], o[3]);
    }
  }
}

// Block end: max over the 8 lanes of a quad column (lanes sharing t4 hold
// the same 32 Q rows for different keys) by halving exchanges: after the
// xor-16/8/4 steps lane (g, t4) holds the column maxima c = 4g + i, i < 4,
// of Q rows 16g + 2t4 + 8 * (i / 2) + (i & 1).
template <int kHalf>  // exchange step: keep kHalf of 2 * kHalf columns, partner lane ^ kHalf
__device__ __forceinline__ void halve_cols(float (&v)[32], int lane) {
  const bool up = lane & kHalf;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float keep = up ? v[i + kHalf] : v[i];
    const float send = up ? v[i] : v[i + kHalf];
    v[i] = fmaxf(keep, __shfl_xor_sync(0xffffffffu, send, kHalf));
  }
}
__device__ __forceinline__ void reduce_cols_over_g(float (&v)[32], int lane) {
  halve_cols<16>(v, lane);
  halve_cols<8>(v, lane);
  halve_cols<4>(v, lane);
}
#endif  // MSA_BS_FP8_WGMMA

// CTAs per SM the registers must allow: 3 for the fp8 wgmma path (no Q in
// registers), 2 otherwise.
template <class Tr>
constexpr int min_blocks_per_sm() {
  return Tr::kFp8K && MSA_BS_FP8_WGMMA ? 3 : 2;
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, min_blocks_per_sm<Tr>())
    block_scores_kernel(const __grid_constant__ KernelArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kM = Tr::kBlockM, kN = Tr::kBlockN, kD = Tr::kHeadDim, kS = Tr::kStages;
  constexpr int kThreads = Tr::kThreads;
  static_assert(kS <= 32, "valid-tile ring is 32 bits");

  extern __shared__ __align__(128) uint8_t smem_raw_[];
  __shared__ TileInfo s_info;
  // fp8 instances: start on a 1024-byte boundary (see kSmemAlignPad).
  uint8_t* smem_ = smem_raw_;
  if constexpr (Tr::kSmemAlignPad > 0)
    smem_ += (Tr::kSmemAlignPad - (uint32_t(__cvta_generic_to_shared(smem_raw_)) & (Tr::kSmemAlignPad - 1))) &
             (Tr::kSmemAlignPad - 1);
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
    // Rows k_r0 + i * kKRowStep (kKRowStep even) share k_r0's chunk swizzle.
    static_assert(kKRowStep % 2 == 0, "fp8 chunk swizzle depends on row parity");
    k_dst0 = kraw_smem + k_r0 * kD + (k_cc ^ Tr::fp8_chunk_swizzle(k_r0)) * 16;
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

#if MSA_BS_FP8_WGMMA
  if constexpr (Tr::kFp8K) {
    constexpr int kSteps = kD / 16;
    int32_t* s_vis = reinterpret_cast<int32_t*>(kraw_smem + Tr::kSmemKRawBytes);  // [kM]
    float* s_red = reinterpret_cast<float*>(s_vis + kM);                          // [kWarps][kM]
    const int warp = tid / 32, g = lane / 4, t4 = lane % 4;

    // Q landed: permute it to the wgmma d-order; per-row visible keys and
    // output row (thread tid writes the scores of tile row tid).
    cute::cp_async_wait<kS - 1>();
    __syncthreads();
    permute_q_for_wgmma<Tr>(reinterpret_cast<uint8_t*>(q_smem), a.negate_q);
    const int64_t my_row = ti.row_begin + tid;
    float* const out_row = my_row < ti.row_end ? p.scores + my_row * NB : nullptr;
    s_vis[tid] = out_row ? int(clamp64(vis_end(my_row) - key0, 0, int64_t(num_tiles) * kN)) : 0;
    const int min_vis = int(clamp64(min_vis64 - key0, 0, int64_t(num_tiles) * kN));
    fence_proxy_async_smem();
    __syncthreads();

    const uint32_t q_addr = uint32_t(__cvta_generic_to_shared(q_smem));
    const int key_lo = 16 * warp + g;  // this thread's keys in a tile: key_lo, key_lo + 8
    int frag_off[kD / 64];
#pragma unroll
    for (int j = 0; j < kD / 64; ++j) frag_off[j] = key_lo * kD + ((4 * j + t4) ^ Tr::fp8_chunk_swizzle(key_lo)) * 16;
    float colmax[32];  // running block max of Q rows 8 * (c / 2) + 2t4 + (c & 1) over this thread's keys
#pragma unroll
    for (int c = 0; c < 32; ++c) colmax[c] = -INFINITY;
    float acc[64] = {};  // (each tile's first wgmma overwrites it: scale-d = 0)
    int64_t out_block = c_lo;
    int blk_sub = 0;

    for (int it = 0; it < num_tiles; ++it) {
      cute::cp_async_wait<kS - 2>();
      __syncthreads();  // tile it landed for all threads; stage (it-1)%kS free
      if (it + kS - 1 < num_tiles) issue_k(it + kS - 1, (it + kS - 1) % kS);
      cute::cp_async_fence();

      // A fragments of the tile: rows key_lo / key_lo + 8, 4 k-steps per 16-byte load.
      const uint8_t* stage = kraw_smem + (it % kS) * Tr::kKStageBytes;
      uint32_t af[kSteps][4];
#pragma unroll
      for (int j = 0; j < kD / 64; ++j) {
        const uint4 lo = *reinterpret_cast<const uint4*>(stage + frag_off[j]);
        const uint4 hi = *reinterpret_cast<const uint4*>(stage + frag_off[j] + 8 * kD);
        const uint32_t wl[4] = {lo.x, lo.y, lo.z, lo.w}, wh[4] = {hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          convert_fp8x4_by_parity<Elem>(wl[s], af[4 * j + s][0], af[4 * j + s][2]);
          convert_fp8x4_by_parity<Elem>(wh[s], af[4 * j + s][1], af[4 * j + s][3]);
        }
      }
#pragma unroll
      for (int i = 0; i < 64; ++i) cute::warpgroup_fence_operand(acc[i]);
      cute::warpgroup_arrive();
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks)
        wgmma_64x128x16<Elem>(af[ks], q_desc(q_addr + (ks / 4) * (kM * 128) + (ks % 4) * 32), acc, ks > 0,
                              std::make_index_sequence<64>{});
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
#pragma unroll
      for (int i = 0; i < 64; ++i) cute::warpgroup_fence_operand(acc[i]);

      // Running max over the visible keys of this tile.
      const int jrel = it * kN;
      const bool tile_ok = (valid_bits >> (it & 31)) & 1u;
      if (tile_ok && min_vis >= jrel + kN) {
#pragma unroll
        for (int c = 0; c < 32; ++c)
          colmax[c] = fmaxf(colmax[c], fmaxf(acc[4 * (c / 2) + (c & 1)], acc[4 * (c / 2) + 2 + (c & 1)]));
      } else if (tile_ok) {
#pragma unroll
        for (int n8 = 0; n8 < 16; ++n8) {
          const int2 lim = *reinterpret_cast<const int2*>(s_vis + 8 * n8 + 2 * t4);  // rows' visible keys
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int l = (e ? lim.y : lim.x) - jrel;
            float& m = colmax[2 * n8 + e];
            if (key_lo < l) m = fmaxf(m, acc[4 * n8 + e]);
            if (key_lo + 8 < l) m = fmaxf(m, acc[4 * n8 + 2 + e]);
          }
        }
      }

      // End of a block: max over the 64 keys of the CTA (8 lanes x 4 warps)
      // per Q row; thread tid writes row tid.
      if (++blk_sub == tiles_per_block || it + 1 == num_tiles) {
        reduce_cols_over_g(colmax, lane);
#pragma unroll
        for (int i = 0; i < 4; ++i) s_red[warp * kM + 16 * g + 2 * t4 + 8 * (i / 2) + (i & 1)] = colmax[i];
        __syncthreads();
        if (out_row != nullptr) {
          const float v = fmaxf(fmaxf(s_red[tid], s_red[kM + tid]), fmaxf(s_red[2 * kM + tid], s_red[3 * kM + tid]));
          out_row[out_block] = v == -INFINITY ? -INFINITY : v * a.out_scale;
        }
#pragma unroll
        for (int c = 0; c < 32; ++c) colmax[c] = -INFINITY;
        blk_sub = 0;
        ++out_block;
      }
    }
    cute::cp_async_wait<0>();  // no copy in flight at exit
    return;
  }
#endif  // MSA_BS_FP8_WGMMA

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
  uint32_t qa[kMmaM][kMmaK][4];          // fp8 keys: A fragments in the fp8 d-order
  int frag_off[kD / 64];                  // fp8 keys: this thread's B bytes in a stage, per d group
  if constexpr (Tr::kFp8K) {
    int row_g[kMmaM];
#pragma unroll
    for (int m = 0; m < kMmaM; ++m) row_g[m] = get<0>(tScS(0, m, 0));  // row g; tScS(2, m, 0) is g + 8
    const int g = lane / 4, t4 = lane % 4;
    load_q_fp8_order<Tr>(sQ, row_g, t4, qa);
    if (a.negate_q) {
#pragma unroll
      for (int m = 0; m < kMmaM; ++m)
#pragma unroll
        for (int k = 0; k < kMmaK; ++k)
#pragma unroll
          for (int i = 0; i < 4; ++i) qa[m][k][i] ^= 0x80008000u;
    }
#pragma unroll
    for (int j = 0; j < kD / 64; ++j) frag_off[j] = g * kD + ((4 * j + t4) ^ Tr::fp8_chunk_swizzle(g)) * 16;
  } else {
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
    const int kstage = it % kS;
    clear(acc);
    if constexpr (Tr::kFp8K) {
      // S = Q K^T straight from the raw e4m3 stage (converted in registers).
      mma_tile_fp8<Tr>(acc, qa, kraw_smem + kstage * Tr::kKStageBytes, frag_off, atom_active);
    } else {
      // S = Q K^T for this tile (ldmatrix of k-slice k+1 overlaps the MMAs of k).
      Tensor tSsK_s = tSsK(_, _, _, kstage);
      cute::copy(smem_copy_k, tSsK_s(_, _, 0), tSrK_view(_, _, 0));
#pragma unroll
      for (int k = 0; k < kMmaK; ++k) {
        if (k + 1 < kMmaK) cute::copy(smem_copy_k, tSsK_s(_, _, k + 1), tSrK_view(_, _, k + 1));
#pragma unroll
        for (int m = 0; m < kMmaM; ++m) {
          if (!atom_active[m]) continue;
#pragma unroll
          for (int j = 0; j < kMmaN; ++j)
            cute::gemm(tiled_mma, acc(_, m, j), tSrQ(_, m, k), tSrK(_, j, k), acc(_, m, j));
        }
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

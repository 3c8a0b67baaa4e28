// msa_block_scores, decode-shaped kernel (sm_80+ mma.sync, portable PTX).
//
// For batches with few query rows per request (decode: one token x H <= 16
// index heads). The prefill kernel stacks a request's rows into 128-row
// tiles, so there nearly every MMA row is padding and the CTA converts fp8
// tiles in shared memory for nothing. Here a request's rows form 16-row M
// tiles (one MMA row block) and the kernel streams the keys once, at memory
// speed:
//
//   CTA = (request b, chunk of `chunk_blocks` output blocks), 4 warps. Warp w
//   owns the whole blocks c_lo + w, c_lo + w + 4, ... of the chunk and runs a
//   private kStages-deep cp.async pipeline of 4 KB stages over them (no
//   __syncthreads in the main loop). Per stage: S[16 rows x keys] = Q K^T
//   with mma.m16n8k16, Q A-fragments in registers, and the B-fragments of
//   2 (16-bit keys) or 4 (fp8) k-steps from ONE 16-byte shared-memory load:
//   the head dim is permuted identically on both operands (QK^T does not
//   change), so fp8 keys are converted in registers, never through a
//   converted tile.
//   A warp owns whole blocks, so the block max is an in-thread max over the
//   accumulators plus a quad shuffle; one lane per row writes the score.
//
// Rows: the flattened (token, head) rows of a request, in 16-row tiles (any
// number of tokens is correct; <= 16 rows is the fast case). Rows outside
// every request (q_indptr not covering [0, T)) and blocks no row can see get
// -inf without loading anything. Every load is clamped: lengths clipped,
// page ids range-checked (an unresolvable page is zero-filled and its block
// is -inf). Deterministic: fixed max order, no atomics.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cute/numeric/numeric_types.hpp>

#include "cuda/block_scores/block_scores.h"
#include "cuda/block_scores/fp8_convert.cuh"
#include "cuda/common/int_math.cuh"
#include "cuda/common/mma_sm80.cuh"

namespace msa::cuda::block_scores::decode_shaped {

template <class Elem_, bool kFp8K_, int kD_>
struct Traits {
  using Elem = Elem_;                  // q_idx dtype (cute::bfloat16_t / cute::half_t)
  // The same 16-bit type as CUDA's, for the shared mma / fp8 pieces (cuda/common/mma_sm80.cuh).
  using MmaElem = NativeElem<Elem>;
  static constexpr bool kFp8K = kFp8K_;
  static constexpr int kD = kD_;       // 64 or 128
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kKeyBytes = kFp8K ? 1 : 2;
  static constexpr int kRowBytes = kD * kKeyBytes;               // 64, 128 or 256
  static constexpr int kStageBytes = 4096;
  static constexpr int kKeys = kStageBytes / kRowBytes;          // keys per stage: 64, 32, 16
  // Pipeline depth and CTAs per SM (measured on an H200, B=8 x 1M keys):
  // fp8 stages carry the conversion work, so more warps (4 CTAs x 3 stages,
  // <= 128 registers) beat deeper pipelines; 16-bit keys: 3 CTAs x 4 stages.
  // Either way 96-128 KB of loads are in flight per SM.
  static constexpr int kStages = kFp8K ? 3 : 4;
  static constexpr int kMinBlocks = kFp8K ? 4 : 3;
  static constexpr int kNTiles = kKeys / 8;                      // n8 MMA tiles per stage
  static constexpr int kChunksPerRow = kRowBytes / 16;
  static constexpr int kRowsPerPass = 32 / kChunksPerRow;        // rows a warp copies per pass
  static constexpr int kLoadsPerLane = kKeys / kRowsPerPass;     // 16-byte copies per lane per stage
  // Head-dim permutation: lane t = lane % 4 owns, in each group of 4 * kE
  // consecutive d, the kE elements [t * kE, t * kE + kE): one 16-byte chunk,
  // holding kE / 4 k-steps (4 elements each: b0 = first 2, b1 = last 2).
  static constexpr int kE = 16 / kKeyBytes;                      // elements per 16-byte chunk
  static constexpr int kStepsPerChunk = kE / 4;                  // 4 (fp8) or 2
  static constexpr int kGroups = kD / (4 * kE);                  // chunks per lane per key row
  static constexpr int kKSteps = kD / 16;
  // 16-byte chunk swizzle (chunk ^ kSwz on odd rows): an 8-lane phase of the
  // fragment loads reads rows 2i, 2i+1 at the same chunk columns, which
  // collide in banks when rows are >= 128 B apart.
  static constexpr int kSwz = kRowBytes >= 128 ? 4 : 0;
  static constexpr int kWarpBytes = kStages * kStageBytes;
  static constexpr int kSmemBytes = kWarps * kWarpBytes;         // 48 or 64 KB
  static_assert(kMinBlocks * kSmemBytes <= 227 * 1024, "CTAs per SM");
  // Short stages have few independent MMA chains: split the k-steps over two
  // accumulators (even / odd) so the tensor-core latency overlaps.
  static constexpr int kAccSplit = kNTiles >= 4 ? 1 : 2;
  static_assert(kGroups * kStepsPerChunk == kKSteps, "head-dim mapping");
  static_assert(32 % kChunksPerRow == 0 && kKeys % kRowsPerPass == 0, "copy mapping");
  static_assert(64 % kKeys == 0, "a stage must not straddle a page (block_size % 64 == 0)");
  static_assert(kStages >= 2 && kStages <= 32, "page-ok ring is 32 bits");
};

struct DecodeArgs {
  BlockScoresParams p;
  int64_t chunk_blocks;  // output blocks per gridDim.y chunk (a multiple of kWarps)
  float out_scale;       // |scale * k_scale|
  bool negate_q;         // scale * k_scale < 0: max of -q.k, then * |scale|
};

// ----------------------------------------------------------------- PTX helpers
// (cp.async groups, smem_u32, Mma, fp8x4: cuda/common/mma_sm80.cuh)

// 16-byte global->shared copy; src_bytes 0 zero-fills (src must still be a valid address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}


// First of the 4 physical d of the k-step kk fragments of lane t (which of
// them go to a0 / b0 and a2 / b1: chunk_to_b). The same map on Q and K leaves
// Q K^T unchanged.
template <class Tr>
__device__ __forceinline__ int perm_d(int kk, int t) {
  return 4 * Tr::kE * (kk / Tr::kStepsPerChunk) + Tr::kE * t + 4 * (kk % Tr::kStepsPerChunk);
}

// -inf for rows [r0, r1) x blocks [c0, c1): a warp per row, lanes along blocks.
template <int kWarps>
__device__ __forceinline__ void neg_inf_rows(float* __restrict__ scores, int64_t nb, int64_t r0, int64_t r1,
                                             int64_t c0, int64_t c1) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t r = r0 + warp; r < r1; r += kWarps)
    for (int64_t c = c0 + lane; c < c1; c += 32) scores[r * nb + c] = -INFINITY;
}

// B fragments of the k-steps of one 16-byte chunk of a key row. 16-bit keys:
// k-step s = elements [4s, 4s + 4), b0 = {4s, 4s+1}, b1 = {4s+2, 4s+3} as
// stored. fp8 keys: k-step s = bytes [4s, 4s + 4), b0 = {4s, 4s+2}, b1 =
// {4s+1, 4s+3} (parity pairs; load_q_frags pairs Q the same way).
template <class Tr>
__device__ __forceinline__ void chunk_to_b(const uint4& u, uint32_t (&bf)[Tr::kStepsPerChunk][2]) {
  if constexpr (Tr::kFp8K) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int s = 0; s < 4; ++s) fp8x4_cxx_shift<typename Tr::MmaElem>(w[s], bf[s][0], bf[s][1]);
  } else {
    bf[0][0] = u.x;
    bf[0][1] = u.y;
    bf[1][0] = u.z;
    bf[1][1] = u.w;
  }
}

// A-fragment halves {a0, a2} (or {a1, a3}) of k-step kk for one Q row: the
// 4 elements at perm_d, paired like chunk_to_b pairs the keys.
template <class Tr>
__device__ __forceinline__ void q_pair(const typename Tr::Elem* q_row, int kk, int t, uint32_t neg,
                                       uint32_t& lo, uint32_t& hi) {
  const uint2 v = *reinterpret_cast<const uint2*>(q_row + perm_d<Tr>(kk, t));  // elements d .. d+3
  if constexpr (Tr::kFp8K) {
    lo = __byte_perm(v.x, v.y, 0x5410) ^ neg;  // {d, d+2}
    hi = __byte_perm(v.x, v.y, 0x7632) ^ neg;  // {d+1, d+3}
  } else {
    lo = v.x ^ neg;  // {d, d+1}
    hi = v.y ^ neg;  // {d+2, d+3}
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks)
    decode_scores_kernel(const __grid_constant__ DecodeArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kD = Tr::kD, kWarps = Tr::kWarps, kS = Tr::kStages, kKeys = Tr::kKeys;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ int s_max[kWarps];
  const BlockScoresParams& p = a.p;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int b = blockIdx.x;
  const int64_t NB = p.num_blocks, H = p.heads, T = p.total_q;
  const int bs = int(p.block_size);  // == page_size when paged (< 2^31)
  const int64_t c_lo = int64_t(blockIdx.y) * a.chunk_blocks;
  const int64_t c_hi = min64(NB, c_lo + a.chunk_blocks);

  // ---- Request rows: effective indptr e[k] = min(T, max(0, q_indptr[0..k])).
  int run = 0;
  for (int k = tid; k <= b; k += Tr::kThreads) run = max(run, p.q_indptr[k]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) run = max(run, __shfl_xor_sync(0xffffffffu, run, o));
  if (lane == 0) s_max[warp] = run;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kWarps; ++w) run = max(run, s_max[w]);
  const int64_t e0 = min64(T, run);
  const int64_t e1 = min64(T, max(run, p.q_indptr[b + 1]));
  // Rows outside every request see no key.
  if (b == 0) neg_inf_rows<kWarps>(p.scores, NB, 0, e0 * H, c_lo, c_hi);
  if (b == p.batch - 1) neg_inf_rows<kWarps>(p.scores, NB, e1 * H, T * H, c_lo, c_hi);
  const int64_t q_len = e1 - e0;
  if (q_len == 0) return;

  // ---- KV range of the request (clipped as the contract says).
  int64_t cap, kv_begin = 0;
  if (p.paged) {
    cap = p.max_pages * p.page_size;
  } else {
    kv_begin = clamp64(p.kv_indptr[b], 0, p.dense_rows);
    cap = clamp64(p.kv_indptr[b + 1], kv_begin, p.dense_rows) - kv_begin;
  }
  const int L = int(clamp64(p.kv_lens[b], 0, cap));  // < 2^31 (checked by the handler)
  // One past the last visible key of flattened row `row` (monotone in row).
  auto vis_end = [&](int64_t row) -> int {
    if (!p.causal) return L;
    return int(clamp64(int64_t(L) - q_len + (row / H - e0) + 1, 0, L));
  };

  const uint8_t* kbytes = static_cast<const uint8_t*>(p.k);
  const int32_t* page_row = p.paged ? p.page_table + int64_t(b) * p.max_pages : nullptr;
  const uint32_t wbase = smem_u32(smem + warp * Tr::kWarpBytes);
  const int spb = bs / kKeys;  // stages of a whole block
  // Stage copies: lane -> (row cpy_r0 + i * kRowsPerPass, 16-byte chunk cpy_cc);
  // kRowsPerPass is even where rows are swizzled, so the swizzle is per lane.
  const int cpy_cc = lane % Tr::kChunksPerRow, cpy_r0 = lane / Tr::kChunksPerRow;
  const int cpy_src = cpy_r0 * Tr::kRowBytes + cpy_cc * 16;
  const uint32_t cpy_dst = wbase + cpy_r0 * Tr::kRowBytes + ((cpy_cc ^ ((cpy_r0 & 1) * Tr::kSwz)) * 16);
  static_assert(Tr::kSwz == 0 || Tr::kRowsPerPass % 2 == 0, "per-lane swizzle");

  for (int64_t r0 = e0 * H; r0 < e1 * H; r0 += 16) {
    const int64_t r1 = min64(r0 + 16, e1 * H);
    const int vis_lo = vis_end(r0), vis_hi = vis_end(r1 - 1);
    // Blocks some row of the tile sees: [c_lo, comp_end); the rest are -inf.
    const int64_t vis_blocks = (int64_t(vis_hi) + bs - 1) / bs;
    const int64_t comp_end = c_lo > vis_blocks ? c_lo : min64(c_hi, vis_blocks);
    for (int64_t c = c_lo + warp; c < c_hi; c += kWarps)
      if (c >= comp_end && lane < r1 - r0) p.scores[(r0 + lane) * NB + c] = -INFINITY;

    // This warp's computed blocks c_lo + warp + kWarps * i, i < nbw; all but
    // the last are whole (only the last can reach past vis_hi).
    const int first_c = int(c_lo) + warp;  // < 2^31 when nbw > 0 (c * bs < L)
    const int nbw = comp_end > first_c ? int((comp_end - first_c + kWarps - 1) / kWarps) : 0;
    // Stages of computed block c (the cursors also ask one block past the
    // last: 64-bit, so that never overflows).
    auto block_stages = [&](int c) {
      return int(min64(spb, (int64_t(vis_hi) - int64_t(c) * bs + kKeys - 1) / kKeys));
    };
    const int total = nbw == 0 ? 0 : (nbw - 1) * spb + block_stages(first_c + kWarps * (nbw - 1));

    // ---- Issue cursor: block is_c, its stage is_sub; per block, this lane's
    // source address of stage 0 and the number of its keys that exist.
    int is_c = first_c, is_sub = 0, is_nst = 0, is_rows = 0;
    const uint8_t* is_src = kbytes;
    bool is_ok = true;  // the block's page is in range
    int page_next = 0;  // page id of block is_c + kWarps (prefetched)
    auto start_block = [&](int page) {
      is_nst = block_stages(is_c);
      if (p.paged) {
        is_ok = page >= 0 && int64_t(page) < p.num_pages;
        is_src = kbytes + (is_ok ? int64_t(page) : 0) * p.page_size * Tr::kRowBytes + cpy_src;
        if (is_c + kWarps < comp_end) page_next = __ldg(page_row + is_c + kWarps);
      } else {
        is_src = kbytes + (kv_begin + int64_t(is_c) * bs) * Tr::kRowBytes + cpy_src;
      }
      is_rows = is_ok ? L - is_c * bs : 0;
    };
    if (nbw > 0) start_block(p.paged ? __ldg(page_row + is_c) : 0);
    uint32_t ok_ring = 0;  // bit slot: the stage's page is in range
    auto issue = [&](int slot) {
      const int rows_ok = is_rows - is_sub * kKeys;  // stage rows r < rows_ok exist
      const uint8_t* src = is_src + is_sub * Tr::kStageBytes;
      const uint32_t dst = cpy_dst + slot * Tr::kStageBytes;
      constexpr int kStep = Tr::kRowsPerPass * Tr::kRowBytes;  // bytes between a lane's rows
      if (rows_ok >= kKeys) {  // the common case: no per-row checks
#pragma unroll
        for (int i = 0; i < Tr::kLoadsPerLane; ++i) cp_async_16(dst + i * kStep, src + i * kStep, 16);
      } else {  // block end past kv_len, or an unresolvable page: zero-fill
#pragma unroll
        for (int i = 0; i < Tr::kLoadsPerLane; ++i) {
          const bool ok = cpy_r0 + i * Tr::kRowsPerPass < rows_ok;
          cp_async_16(dst + i * kStep, ok ? src + i * kStep : kbytes, ok ? 16 : 0);
        }
      }
      ok_ring = (ok_ring & ~(1u << slot)) | (uint32_t(is_ok) << slot);
      if (++is_sub == is_nst) {  // next block of this warp
        is_sub = 0;
        is_c += kWarps;
        if (is_c < comp_end) start_block(page_next);
      }
    };

#pragma unroll
    for (int s = 0; s < kS - 1; ++s) {
      if (s < total) issue(s);
      cp_async_commit();
    }
    int st_read = 0, st_write = kS - 1;  // ring slots of stage it / it + kS - 1

    // ---- Q rows g, g + 8 of the tile -> A fragments (zero for padding rows);
    // loaded while the first stages are in flight.
    const int64_t row_a = r0 + g, row_b = r0 + g + 8;
    const bool ok_a = row_a < r1, ok_b = row_b < r1;
    uint32_t qf[Tr::kKSteps][4];
    {
      const Elem* q = static_cast<const Elem*>(p.q);
      const uint32_t neg = a.negate_q ? 0x80008000u : 0u;
#pragma unroll
      for (int kk = 0; kk < Tr::kKSteps; ++kk) {
        qf[kk][0] = qf[kk][1] = qf[kk][2] = qf[kk][3] = 0u;
        if (ok_a) q_pair<Tr>(q + row_a * kD, kk, t, neg, qf[kk][0], qf[kk][2]);
        if (ok_b) q_pair<Tr>(q + row_b * kD, kk, t, neg, qf[kk][1], qf[kk][3]);
      }
    }
    const int vis_a = ok_a ? vis_end(row_a) : 0, vis_b = ok_b ? vis_end(row_b) : 0;
    float* out_a = ok_a ? p.scores + row_a * NB : nullptr;
    float* out_b = ok_b ? p.scores + row_b * NB : nullptr;

    // ---- Main loop over the warp's stages.
    int cm_c = first_c, cm_sub = 0, cm_nst = nbw > 0 ? block_stages(first_c) : 0;
    float max_a = -INFINITY, max_b = -INFINITY;  // running max of rows g, g + 8 over the block
    for (int it = 0; it < total; ++it) {
      if (it + kS - 1 < total) issue(st_write);
      cp_async_commit();
      st_write = st_write + 1 == kS ? 0 : st_write + 1;
      cp_async_wait<kS - 1>();
      __syncwarp();  // stage it landed for every lane
      const int slot = st_read;
      st_read = st_read + 1 == kS ? 0 : st_read + 1;
      const int k0 = cm_c * bs + cm_sub * kKeys;
      if ((ok_ring >> slot) & 1u) {
        const uint32_t st = wbase + slot * Tr::kStageBytes;
        float acc[Tr::kNTiles][Tr::kAccSplit][4];
#pragma unroll
        for (int n = 0; n < Tr::kNTiles; ++n)
#pragma unroll
          for (int x = 0; x < Tr::kAccSplit; ++x)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][x][e] = 0.0f;
#pragma unroll
        for (int n = 0; n < Tr::kNTiles; ++n) {
          const int row = 8 * n + g;
#pragma unroll
          for (int j = 0; j < Tr::kGroups; ++j) {
            const uint4 u = lds128(st + row * Tr::kRowBytes + (((4 * j + t) ^ ((row & 1) * Tr::kSwz)) * 16));
            uint32_t bf[Tr::kStepsPerChunk][2];
            chunk_to_b<Tr>(u, bf);
#pragma unroll
            for (int s = 0; s < Tr::kStepsPerChunk; ++s) {
              const int kk = j * Tr::kStepsPerChunk + s;
              Mma<typename Tr::MmaElem>::run(acc[n][kk % Tr::kAccSplit], qf[kk], bf[s][0], bf[s][1]);
            }
          }
        }
        // Fold into the row maxima; C fragment: (row g | g + 8, key 8n + 2t + {0, 1}).
        const bool full = k0 + kKeys <= vis_lo;  // every row of the tile sees the whole stage
#pragma unroll
        for (int n = 0; n < Tr::kNTiles; ++n) {
          float c[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            c[e] = acc[n][0][e];
            if constexpr (Tr::kAccSplit == 2) c[e] += acc[n][1][e];
          }
          if (full) {
            max_a = fmaxf(max_a, fmaxf(c[0], c[1]));
            max_b = fmaxf(max_b, fmaxf(c[2], c[3]));
          } else {
            const int key = k0 + 8 * n + 2 * t;
            if (key < vis_a) max_a = fmaxf(max_a, c[0]);
            if (key + 1 < vis_a) max_a = fmaxf(max_a, c[1]);
            if (key < vis_b) max_b = fmaxf(max_b, c[2]);
            if (key + 1 < vis_b) max_b = fmaxf(max_b, c[3]);
          }
        }
      }
      // End of the block: reduce over the quad sharing each row, one lane writes.
      if (++cm_sub == cm_nst) {
        max_a = fmaxf(max_a, __shfl_xor_sync(0xffffffffu, max_a, 1));
        max_a = fmaxf(max_a, __shfl_xor_sync(0xffffffffu, max_a, 2));
        max_b = fmaxf(max_b, __shfl_xor_sync(0xffffffffu, max_b, 1));
        max_b = fmaxf(max_b, __shfl_xor_sync(0xffffffffu, max_b, 2));
        if (t == 0) {
          if (out_a != nullptr) out_a[cm_c] = max_a == -INFINITY ? -INFINITY : max_a * a.out_scale;
          if (out_b != nullptr) out_b[cm_c] = max_b == -INFINITY ? -INFINITY : max_b * a.out_scale;
        }
        max_a = max_b = -INFINITY;
        cm_sub = 0;
        cm_c += kWarps;
        cm_nst = block_stages(cm_c);
      }
      __syncwarp();  // every lane is done with the slot before it is refilled
    }
    cp_async_wait<0>();  // nothing in flight into the buffers the next tile reuses
    __syncwarp();
  }
}

}  // namespace msa::cuda::block_scores::decode_shaped

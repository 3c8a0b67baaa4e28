// The KV-outer main kernel of msa_sparse_prefill (sm_80+ mma.sync via CuTe):
//
//   CTA = one work item at a time (grid-stride over the device-built work
//   list; the next item's descriptor is prefetched): one KV block
//   (block_size = 64 or 128 tokens) of one KV head, and up to P = 128 / G
//   query rows that selected it. The M = 128 MMA rows are
//   (row p, group head hh) -> r = p * G + hh; padding rows are zero.
//
//   8 warps along M, warp w owns the 16-row atom [16 w, 16 w + 16): 2 CTAs
//   of 256 threads per SM, <= 128 registers per thread, no spills.
//
//   K (and V) of the block -> shared memory once (cp.async, swizzled; fp8:
//   register loads converted to bf16/fp16), Q rows gathered with cp.async
//   (groups: K, Q, V). Per warp, for each key tile (32 keys at D = 128, 64 at
//   D = 64) up to the last key visible to one of its rows: S = Q K^T
//   (ldmatrix + mma.sync 16x8x16, fp32), scaled, masked (causal / length /
//   unresolvable page), online softmax across the block's tiles, O += P V
//   (P from registers, V^T by ldmatrix.trans). The first tile's S runs while
//   V is still in flight. A warp whose rows are all padding computes nothing.
//   Epilogue (per warp, no CTA barrier): O / l (times v_scale) -> the warp's
//   own 16 rows of the Q tile -> 16-byte stores into the partial O
//   [Tc, Hq, K, D]; lse = m + log l (natural log) -> partial LSE.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>

#include "cuda/common/cute_sm80.cuh"

#include "cuda/block_scores/fp8_convert.cuh"
#include "cuda/sparse_prefill/internal.h"

namespace msa::cuda::sparse_prefill {

using namespace cute;

template <class Elem_, bool kFp8_, int kHeadDim_>
struct Traits {
  using Elem = Elem_;
  static constexpr bool kFp8 = kFp8_;
  static constexpr int kD = kHeadDim_;
  static_assert(kD % 64 == 0, "head_dim must be a multiple of 64");
  static constexpr int kM = kSparsePrefillRows;  // 128
  // Keys per tile: 32 at D = 128 keeps S / P and the K fragments of a tile
  // small enough for the 128-register budget next to the 64 O accumulators.
  static constexpr int kN = kD >= 128 ? 32 : 64;
  static constexpr int kMaxTiles = 128 / kN;  // block_size <= 128
  static constexpr int kWarps = 8;               // one 16-row MMA atom per warp
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpRows = kM / kWarps;
  static_assert(kWarpRows == 16, "each warp owns exactly one 16-row atom");
  static_assert(kThreads >= kM, "one thread per MMA row in the row setup");
#ifndef SP_MIN_BLOCKS
#define SP_MIN_BLOCKS 2
#endif
  static constexpr int kMinBlocks = SP_MIN_BLOCKS;  // CTAs per SM: <= 128 registers per thread

  using TiledMma = TiledMMA<MMA_Atom<typename MmaAtomFor<Elem>::type>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;
  using SmemLayoutAtom = SwizzledSmemAtom;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kM>, Int<kD>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kN>, Int<kD>, Int<kMaxTiles>>{}));
  using SmemLayoutTile = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kN>, Int<kD>>{}));
  using SmemLayoutVt = decltype(composition(SmemLayoutTile{}, make_layout(Shape<Int<kD>, Int<kN>>{}, GenRowMajor{})));
  using SmemLayoutVtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutVt{}));
  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Elem>;
  using SmemCopyAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Elem>;

  static constexpr int kSmemQBytes = kM * kD * int(sizeof(Elem));
  static constexpr int kSmemKVBytes = kMaxTiles * kN * kD * int(sizeof(Elem));
  static constexpr int kSmemBytes = kSmemQBytes + 2 * kSmemKVBytes;
  static constexpr int kCpr = kD * int(sizeof(Elem)) / 16;  // 16-byte chunks per Elem row
  static constexpr int kRowStep = kThreads / kCpr;
  static_assert(kRowStep % 8 == 0, "row step must keep the swizzle phase");
  static_assert(kM % kRowStep == 0, "the Q gather covers the rows exactly");
  static_assert((kWarpRows * kCpr) % 32 == 0, "the per-warp O store covers the warp's rows exactly");
};

template <class Elem>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (std::is_same_v<Elem, cute::bfloat16_t>) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// An int the compiler cannot see through (0): shared-memory addresses built
// from it are recomputed where they are used instead of being hoisted out of
// the work / tile loops and kept live in registers (that hoisting alone took
// the kernel past its register budget).
__device__ __forceinline__ int opaque_zero() {
  int z;
  asm volatile("mov.b32 %0, 0;" : "=r"(z));
  return z;
}

struct MainArgs {
  SparsePrefillParams p;
  PassView v;
  float scale_log2;  // scale * k_scale * log2(e)
  float out_scale;   // v_scale
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) main_kernel(const __grid_constant__ MainArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kM = Tr::kM, kN = Tr::kN, kD = Tr::kD, kThreads = Tr::kThreads;
  extern __shared__ __align__(128) uint8_t smem_[];
  __shared__ int64_t s_qoff[kM];  // element offset of the row's q, -1: padding
  __shared__ int64_t s_out[kM];   // (tl * Hq + h) * K + slot, -1: padding
  __shared__ int s_vis[kM];       // visible keys of the row from the block start

  const SparsePrefillParams& p = a.p;
  const PassView& v = a.v;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  Elem* q_smem = reinterpret_cast<Elem*>(smem_);
  Elem* k_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes);
  Elem* v_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes + Tr::kSmemKVBytes);
  Tensor sQ = make_tensor(make_smem_ptr(q_smem), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(k_smem), typename Tr::SmemLayoutKV{});

  using GmemCopy = SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>;
  const int64_t Hq = p.q_heads, Hkv = p.kv_heads, G = Hq / Hkv, K = p.topk;
  const int bs = int(p.block_size);
  const int n_tiles_max = bs / kN;
  // num_work <= work_items by construction (scan); clamped all the same.
  const int num_work = int(min(int64_t(*v.num_work), v.work_items));
  const int stride = int(gridDim.x);

  typename Tr::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  // Accumulator coordinates: S (kM x kN) and O (kM x kD). Warp w owns rows
  // [16 w, 16 w + 16) (one atom: MMA_M == 1); the thread's two rows are
  // slot h = 0 (value 0, 1) and h = 1 (values 2, 3).
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kN>>{}));
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));
  const int my_row0 = get<0>(tScS(0, 0, 0)), my_row1 = get<0>(tScS(2, 0, 0));

  auto smem_copy_q = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_q = smem_copy_q.get_thread_slice(tid);
  auto smem_copy_k = make_tiled_copy_B(typename Tr::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_k = smem_copy_k.get_thread_slice(tid);
  auto smem_copy_v = make_tiled_copy_B(typename Tr::SmemCopyAtomT{}, tiled_mma);
  auto smem_thr_copy_v = smem_copy_v.get_thread_slice(tid);

  // The next item's descriptor is loaded one item ahead (its latency hides
  // behind the current item).
  WorkItem it_next{};
  if (int(blockIdx.x) < num_work) it_next = v.work[blockIdx.x];
  for (int64_t w = blockIdx.x; w < num_work; w += stride) {
    const WorkItem it = it_next;
    if (w + stride < num_work) it_next = v.work[w + stride];
    const int b = it.b, g = it.g;
    const int64_t qb = v.qe[b], ql = int64_t(v.qe[b + 1]) - qb, L = v.len[b];
    const int64_t key0 = int64_t(it.c) * bs;
    const int nkeys = int(L - key0 < bs ? L - key0 : bs);  // >= 1 (c < ceil(L / bs))
    // K/V source of key j: base + j * row_stride elements.
    int64_t kv_base = 0, row_stride = 0;
    bool kv_ok = true;
    if (p.paged) {
      const int64_t page = p.page_table[int64_t(b) * p.max_pages + it.c];
      kv_ok = page >= 0 && page < p.num_pages;
      kv_base = ((kv_ok ? page : 0) * Hkv + g) * p.page_size * kD;
      row_stride = kD;
    } else {
      kv_base = ((int64_t(v.kvb[b]) + key0) * Hkv + g) * kD;
      row_stride = Hkv * kD;
    }
    const int nvalid = kv_ok ? (nkeys > 0 ? nkeys : 0) : 0;

    __syncthreads();  // the previous item is done with shared memory

    // ---- K (and V) -> shared memory (rows past nvalid zero-filled).
    auto load_kv = [&](const void* src_base, Elem* dst_smem) {
      Tensor sX = make_tensor(make_smem_ptr(dst_smem), typename Tr::SmemLayoutKV{});
      if constexpr (!Tr::kFp8) {
        const Elem* src = static_cast<const Elem*>(src_base) + kv_base;
        const int cc = tid % Tr::kCpr, r0 = tid / Tr::kCpr + opaque_zero();
        for (int r = r0; r < n_tiles_max * kN; r += Tr::kRowStep) {
          const bool ok = r < nvalid;
          const Elem* s = ok ? src + r * row_stride + cc * 8 : static_cast<const Elem*>(src_base);
          GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(s),
                         *reinterpret_cast<cute::uint128_t*>(&sX(r % kN, cc * 8, r / kN)), ok);
        }
      } else {
        const uint8_t* src = static_cast<const uint8_t*>(src_base) + kv_base;
        constexpr int kCpr8 = kD / 16;  // 16 fp8 values per chunk
        for (int q = tid + opaque_zero(); q < n_tiles_max * kN * kCpr8; q += kThreads) {
          const int r = q / kCpr8, cc = q % kCpr8;
          uint4 in = make_uint4(0, 0, 0, 0);
          if (r < nvalid) in = __ldg(reinterpret_cast<const uint4*>(src + r * row_stride + cc * 16));
          uint4 o0, o1;
          block_scores::convert_fp8x16<Elem>(in, o0, o1);
          *reinterpret_cast<uint4*>(&sX(r % kN, cc * 16, r / kN)) = o0;
          *reinterpret_cast<uint4*>(&sX(r % kN, cc * 16 + 8, r / kN)) = o1;
        }
      }
    };
    load_kv(p.k, k_smem);
    cute::cp_async_fence();

    // ---- Row setup: thread r < kM owns MMA row r.
    if (tid < kM) {
      const int r = tid;
      const int pidx = int(r / G), hh = int(r % G);
      int64_t qoff = -1, out = -1;
      int vis = 0;
      if (pidx < it.e_count) {
        const int32_t e = v.entries[it.e_begin + pidx];
        const int64_t tl = e / K, slot = e % K;
        const int64_t t = v.t0 + tl;
        const int64_t h = int64_t(g) * G + hh;
        qoff = (t * Hq + h) * kD;
        out = (tl * Hq + h) * K + slot;
        if (p.causal) {
          const int64_t pos = L - ql + (t - qb);
          const int64_t lim = pos - key0 + 1;
          vis = int(lim < 0 ? 0 : (lim > nvalid ? nvalid : lim));
        } else {
          vis = nvalid;
        }
      }
      s_qoff[r] = qoff;
      s_out[r] = out;
      s_vis[r] = vis;
    }
    __syncthreads();

    // ---- Q rows (gathered; padding rows zero-filled), then V.
    {
      const Elem* q = static_cast<const Elem*>(p.q);
      const int cc = tid % Tr::kCpr, r0 = tid / Tr::kCpr + opaque_zero();
#pragma unroll
      for (int i = 0; i < kM / Tr::kRowStep; ++i) {
        const int r = r0 + i * Tr::kRowStep;
        const int64_t off = s_qoff[r];
        const bool ok = off >= 0;
        const Elem* s = ok ? q + off + cc * 8 : q;
        GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(s),
                       *reinterpret_cast<cute::uint128_t*>(&sQ(r, cc * 8)), ok);
      }
      cute::cp_async_fence();
    }
    load_kv(p.v, v_smem);
    cute::cp_async_fence();

    // Per-warp key tiles: the tiles holding a visible key of one of the
    // warp's 16 rows (padding rows have vis = 0; a warp of padding rows
    // computes nothing). Tiles past a row's last visible key would only add
    // exact zeros, so skipping them per warp changes no result.
    const int row_vis0 = s_vis[my_row0], row_vis1 = s_vis[my_row1];
    const int warp_vis = __reduce_max_sync(0xffffffffu, max(row_vis0, row_vis1));
    const int warp_tiles = min((warp_vis + kN - 1) / kN, n_tiles_max);

    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kD>>{});  // (MMA, 1, D / 8)
    clear(acc_o);
    static_assert(decltype(size<1>(acc_o))::value == 1, "one atom per warp");
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
    Tensor tSrQ_view = smem_thr_copy_q.retile_D(tSrQ);
    Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0));
    Tensor tSrK_view = smem_thr_copy_k.retile_D(tSrK);
    Tensor sVtNS = make_tensor(make_smem_ptr(v_smem), typename Tr::SmemLayoutVtNoSwizzle{});
    Tensor tOrVt = thr_mma.partition_fragment_B(sVtNS);  // (MMA, MMA_N = D/8, MMA_K = kN/16)
    Tensor tOrVt_view = smem_thr_copy_v.retile_D(tOrVt);
    constexpr int kMmaK = decltype(size<2>(tSrK))::value;

    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});  // (MMA, 1, kN / 8)
    constexpr int kMmaN = decltype(size<2>(acc_s))::value;
    Tensor rP = make_tensor<Elem>(acc_s.layout());
    // P as A fragments ((4, 2), 1, kN / 16).
    auto lp = logical_divide(rP.layout(), Shape<Underscore, Underscore, _2>{});
    Tensor tOrP =
        make_tensor(rP.data(), make_layout(make_layout(get<0>(lp), get<0>(get<2>(lp))), get<1>(lp), get<1>(get<2>(lp))));

    // S = Q K_n^T, scale, mask, online softmax (log2 domain), P -> rP.
    auto qk_softmax = [&](int n) {
      clear(acc_s);
      const int z = opaque_zero();
      Tensor tSsQ = smem_thr_copy_q.partition_S(make_tensor(make_smem_ptr(q_smem + z), typename Tr::SmemLayoutQ{}));
      Tensor tSsK_n = smem_thr_copy_k.partition_S(
          make_tensor(make_smem_ptr(k_smem + n * kN * kD + z), typename Tr::SmemLayoutTile{}));
#pragma unroll
      for (int k = 0; k < kMmaK; ++k) {
        cute::copy(smem_copy_q, tSsQ(_, _, k), tSrQ_view(_, _, k));
        cute::copy(smem_copy_k, tSsK_n(_, _, k), tSrK_view(_, _, k));
#pragma unroll
        for (int j = 0; j < kMmaN; ++j)
          cute::gemm(tiled_mma, acc_s(_, 0, j), tSrQ(_, 0, k), tSrK(_, j, k), acc_s(_, 0, j));
      }
      const int jbase = n * kN;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int lim = (h == 0 ? row_vis0 : row_vis1) - jbase;
        float mx = row_max[h];
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
          for (int vv = 0; vv < 2; ++vv) {
            const int col = get<1>(tScS(vv, 0, j));
            float x = acc_s(2 * h + vv, 0, j) * a.scale_log2;
            x = col < lim ? x : -INFINITY;
            acc_s(2 * h + vv, 0, j) = x;
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_use = mx == -INFINITY ? 0.0f : mx;
        const float corr = exp2f(row_max[h] - m_use);  // row_max = -inf -> 0
        row_max[h] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
          for (int vv = 0; vv < 2; ++vv) {
            const float pe = exp2f(acc_s(2 * h + vv, 0, j) - m_use);
            rP(2 * h + vv, 0, j) = Elem(pe);
            sum += pe;
          }
        }
        row_sum[h] = row_sum[h] * corr + sum;
#pragma unroll
        for (int j = 0; j < size<2>(acc_o); ++j) {
#pragma unroll
          for (int vv = 0; vv < 2; ++vv) acc_o(2 * h + vv, 0, j) *= corr;
        }
      }
    };
    // O += P V_n.
    auto pv = [&](int n) {
      Tensor sVt_n = make_tensor(make_smem_ptr(v_smem + n * kN * kD + opaque_zero()), typename Tr::SmemLayoutVt{});
      Tensor tOsVt = smem_thr_copy_v.partition_S(sVt_n);
      constexpr int kPvK = decltype(size<2>(tOrP))::value;
      constexpr int kPvN = decltype(size<1>(tOrVt))::value;
#pragma unroll
      for (int k = 0; k < kPvK; ++k) {
        cute::copy(smem_copy_v, tOsVt(_, _, k), tOrVt_view(_, _, k));
#pragma unroll
        for (int j = 0; j < kPvN; ++j)
          cute::gemm(tiled_mma, acc_o(_, 0, j), tOrP(_, 0, k), tOrVt(_, j, k), acc_o(_, 0, j));
      }
    };

    cute::cp_async_wait<1>();  // K and Q landed (V may be in flight)
    __syncthreads();
    if (warp_tiles > 0) qk_softmax(0);  // overlaps the V copy
    cute::cp_async_wait<0>();  // V landed (every group drained, computed or not)
    __syncthreads();
    for (int n = 0; n < warp_tiles; ++n) {
      if (n > 0) qk_softmax(n);
      pv(n);
    }

    // ---- Epilogue (per warp, no CTA barrier): row sums over the quad, O / l
    // -> the warp's own 16 rows of the Q tile (only this warp read them) ->
    // 16-byte stores into the partial O; lse -> partial LSE.
    float row_lse[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = row_sum[h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const bool any = row_max[h] != -INFINITY && sum > 0.0f;
      row_sum[h] = any ? a.out_scale / sum : 0.0f;
      row_lse[h] = any ? (row_max[h] + __log2f(sum)) * 0.69314718055994530942f : -INFINITY;
    }
    __syncwarp();  // every lane of the warp is done reading its Q rows
    const int zr = opaque_zero();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < size<2>(acc_o); ++j) {
        const int r = get<0>(tOcO(2 * h, 0, j)) + zr, col = get<1>(tOcO(2 * h, 0, j)) + zr;
        *reinterpret_cast<uint32_t*>(&sQ(r, col)) =
            pack2<Elem>(acc_o(2 * h, 0, j) * row_sum[h], acc_o(2 * h + 1, 0, j) * row_sum[h]);
      }
      if ((lane & 3) == 0) {
        const int64_t out = s_out[h == 0 ? my_row0 : my_row1];
        if (out >= 0) v.part_lse[out] = row_lse[h];
      }
    }
    __syncwarp();
    {
      Elem* po = static_cast<Elem*>(v.part_o);
      constexpr int kChunks = Tr::kWarpRows * Tr::kCpr / 32;  // per lane
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const int q = lane + 32 * i;
        const int r = warp * Tr::kWarpRows + q / Tr::kCpr + zr, cc = q % Tr::kCpr;
        const int64_t out = s_out[r];
        if (out >= 0)
          *reinterpret_cast<uint4*>(po + out * kD + cc * 8) = *reinterpret_cast<const uint4*>(&sQ(r, cc * 8));
      }
    }
  }
}

}  // namespace msa::cuda::sparse_prefill

// The KV-outer main kernel of msa_sparse_prefill (sm_80+ mma.sync via CuTe):
//
//   CTA = one work item (grid-stride over the device-built work list): one
//   KV block (block_size = 64 or 128 tokens) of one KV head, and up to
//   P = 128 / G query rows that selected it. The M = 128 MMA rows are
//   (row p, group head hh) -> r = p * G + hh; padding rows are zero and their
//   16-row atoms are skipped when a whole atom is padding.
//
//   K (and V) of the block -> shared memory once (cp.async, swizzled; fp8:
//   register loads converted to bf16/fp16), Q rows gathered with cp.async.
//   For each 64-key tile: S = Q K^T (ldmatrix + mma.sync 16x8x16, fp32),
//   scaled, masked (causal / length / unresolvable page), online softmax
//   across the block's tiles, O += P V (P from registers, V^T by ldmatrix.trans).
//   Epilogue: O / l (times v_scale) -> shared memory -> 16-byte stores into
//   the partial O [Tc, Hq, K, D]; lse = m + log l (natural log) -> partial LSE.
//   4 warps along M, each 32 rows (two 16-row atoms).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>

#include "cuda/block_scores/fp8_convert.cuh"
#include "cuda/sparse_prefill/internal.h"

namespace msa::cuda::sparse_prefill {

using namespace cute;

template <class Elem>
struct MmaAtomFor;
template <>
struct MmaAtomFor<cute::bfloat16_t> {
  using type = SM80_16x8x16_F32BF16BF16F32_TN;
};
template <>
struct MmaAtomFor<cute::half_t> {
  using type = SM80_16x8x16_F32F16F16F32_TN;
};

template <class Elem_, bool kFp8_, int kHeadDim_>
struct Traits {
  using Elem = Elem_;
  static constexpr bool kFp8 = kFp8_;
  static constexpr int kD = kHeadDim_;
  static_assert(kD % 64 == 0, "head_dim must be a multiple of 64");
  static constexpr int kM = kSparsePrefillRows;  // 128
  static constexpr int kN = 64;                  // keys per tile
  static constexpr int kMaxTiles = 2;            // block_size <= 128
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kThreads == kM, "one thread per MMA row in the row setup");

  using TiledMma = TiledMMA<MMA_Atom<typename MmaAtomFor<Elem>::type>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;
  using SmemLayoutAtom = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
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

struct MainArgs {
  SparsePrefillParams p;
  PassView v;
  float scale_log2;  // scale * k_scale * log2(e)
  float out_scale;   // v_scale
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 2) main_kernel(const __grid_constant__ MainArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kM = Tr::kM, kN = Tr::kN, kD = Tr::kD, kThreads = Tr::kThreads;
  extern __shared__ __align__(128) uint8_t smem_[];
  __shared__ int64_t s_qoff[kM];  // element offset of the row's q, -1: padding
  __shared__ int64_t s_out[kM];   // (tl * Hq + h) * K + slot, -1: padding
  __shared__ int s_vis[kM];       // visible keys of the row from the block start
  __shared__ int s_maxvis;

  const SparsePrefillParams& p = a.p;
  const PassView& v = a.v;
  const int tid = threadIdx.x, lane = tid & 31;
  Elem* q_smem = reinterpret_cast<Elem*>(smem_);
  Elem* k_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes);
  Elem* v_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes + Tr::kSmemKVBytes);
  Tensor sQ = make_tensor(make_smem_ptr(q_smem), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(k_smem), typename Tr::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(v_smem), typename Tr::SmemLayoutKV{});

  using GmemCopy = SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>;
  const int64_t Hq = p.q_heads, Hkv = p.kv_heads, G = Hq / Hkv, K = p.topk;
  const int bs = int(p.block_size);
  const int n_tiles_max = bs / kN;
  const int num_work = *v.num_work;

  typename Tr::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  // Accumulator coordinates: S (kM x kN) and O (kM x kD).
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kN>>{}));
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));

  if (tid == 0) s_maxvis = 0;
  for (int w = blockIdx.x; w < num_work; w += gridDim.x) {
    const WorkItem it = v.work[w];
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
    const int nvalid = kv_ok ? nkeys : 0;

    __syncthreads();  // the previous item is done with shared memory (s_maxvis is 0 here)

    // ---- K (and V) -> shared memory.
    auto load_kv = [&](const void* src_base, Elem* dst_smem) {
      Tensor sX = make_tensor(make_smem_ptr(dst_smem), typename Tr::SmemLayoutKV{});
      if constexpr (!Tr::kFp8) {
        const Elem* src = static_cast<const Elem*>(src_base) + kv_base;
        const int cc = tid % Tr::kCpr, r0 = tid / Tr::kCpr;
        for (int r = r0; r < n_tiles_max * kN; r += Tr::kRowStep) {
          const bool ok = r < nvalid;
          const Elem* s = ok ? src + r * row_stride + cc * 8 : static_cast<const Elem*>(src_base);
          GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(s),
                         *reinterpret_cast<cute::uint128_t*>(&sX(r % kN, cc * 8, r / kN)), ok);
        }
      } else {
        const uint8_t* src = static_cast<const uint8_t*>(src_base) + kv_base;
        constexpr int kCpr8 = kD / 16;  // 16 fp8 values per chunk
        for (int q = tid; q < n_tiles_max * kN * kCpr8; q += kThreads) {
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

    // ---- Row setup: thread r owns MMA row r.
    {
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
      if (vis > 0) atomicMax(&s_maxvis, vis);
    }
    __syncthreads();

    // ---- Q rows (gathered), then V.
    {
      const Elem* q = static_cast<const Elem*>(p.q);
      const int cc = tid % Tr::kCpr, r0 = tid / Tr::kCpr;
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

    const int max_vis = s_maxvis;
    const int n_tiles = (max_vis + kN - 1) / kN;  // tiles with a visible key (0..2)

    // Per-thread rows: slot s = 2 * m + h (atom m, half h).
    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kD>>{});  // (MMA, MMA_M, MMA_N)
    clear(acc_o);
    constexpr int kMmaM = decltype(size<1>(acc_o))::value;
    constexpr int kSlots = 2 * kMmaM;
    int row_vis[kSlots];
    bool atom_active[kMmaM];
#pragma unroll
    for (int m = 0; m < kMmaM; ++m) {
      bool any = false;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = get<0>(tScS(2 * h, m, 0));
        row_vis[2 * m + h] = s_vis[r];
        any |= s_qoff[r] >= 0;
      }
      atom_active[m] = __any_sync(0xffffffffu, any);
    }
    float row_max[kSlots], row_sum[kSlots];
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      row_max[s] = -INFINITY;
      row_sum[s] = 0.0f;
    }

    cute::cp_async_wait<1>();  // K and Q landed (V may be in flight)
    __syncthreads();

    auto smem_copy_q = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_q = smem_copy_q.get_thread_slice(tid);
    auto smem_copy_k = make_tiled_copy_B(typename Tr::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_k = smem_copy_k.get_thread_slice(tid);
    auto smem_copy_v = make_tiled_copy_B(typename Tr::SmemCopyAtomT{}, tiled_mma);
    auto smem_thr_copy_v = smem_copy_v.get_thread_slice(tid);

    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
    Tensor tSsQ = smem_thr_copy_q.partition_S(sQ);
    Tensor tSrQ_view = smem_thr_copy_q.retile_D(tSrQ);
    Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0));
    Tensor tSsK = smem_thr_copy_k.partition_S(sK);  // (CPY, CPY_N, CPY_K, tiles)
    Tensor tSrK_view = smem_thr_copy_k.retile_D(tSrK);
    Tensor sVtNS = make_tensor(make_smem_ptr(v_smem), typename Tr::SmemLayoutVtNoSwizzle{});
    Tensor tOrVt = thr_mma.partition_fragment_B(sVtNS);  // (MMA, MMA_N = D/8, MMA_K = kN/16)
    Tensor tOrVt_view = smem_thr_copy_v.retile_D(tOrVt);
    constexpr int kMmaK = decltype(size<2>(tSrK))::value;

    for (int n = 0; n < n_tiles; ++n) {
      // S = Q K_n^T.
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});
      clear(acc_s);
      constexpr int kMmaN = decltype(size<2>(acc_s))::value;
      Tensor tSsK_n = tSsK(_, _, _, n);
#pragma unroll
      for (int k = 0; k < kMmaK; ++k) {
        cute::copy(smem_copy_q, tSsQ(_, _, k), tSrQ_view(_, _, k));
        cute::copy(smem_copy_k, tSsK_n(_, _, k), tSrK_view(_, _, k));
#pragma unroll
        for (int m = 0; m < kMmaM; ++m) {
          if (!atom_active[m]) continue;
#pragma unroll
          for (int j = 0; j < kMmaN; ++j)
            cute::gemm(tiled_mma, acc_s(_, m, j), tSrQ(_, m, k), tSrK(_, j, k), acc_s(_, m, j));
        }
      }

      // Scale, mask, online softmax (log2 domain).
      const int jbase = n * kN;
#pragma unroll
      for (int m = 0; m < kMmaM; ++m) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int s = 2 * m + h;
          const int lim = row_vis[s] - jbase;
          float mx = row_max[s];
#pragma unroll
          for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
            for (int vv = 0; vv < 2; ++vv) {
              const int col = get<1>(tScS(vv, 0, j));
              float x = acc_s(2 * h + vv, m, j) * a.scale_log2;
              x = col < lim ? x : -INFINITY;
              acc_s(2 * h + vv, m, j) = x;
              mx = fmaxf(mx, x);
            }
          }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_use = mx == -INFINITY ? 0.0f : mx;
          const float corr = exp2f(row_max[s] - m_use);  // row_max = -inf -> 0
          row_max[s] = mx;
          float sum = 0.0f;
#pragma unroll
          for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
            for (int vv = 0; vv < 2; ++vv) {
              const float pe = exp2f(acc_s(2 * h + vv, m, j) - m_use);
              acc_s(2 * h + vv, m, j) = pe;
              sum += pe;
            }
          }
          row_sum[s] = row_sum[s] * corr + sum;
#pragma unroll
          for (int j = 0; j < size<2>(acc_o); ++j) {
#pragma unroll
            for (int vv = 0; vv < 2; ++vv) acc_o(2 * h + vv, m, j) *= corr;
          }
        }
      }

      // O += P V_n: P (fp32 accumulators) -> Elem A fragments ((4, 2), MMA_M, kN / 16).
      Tensor rP = make_tensor<Elem>(acc_s.layout());
#pragma unroll
      for (int i = 0; i < size(acc_s); ++i) rP(i) = Elem(acc_s(i));
      auto l = logical_divide(rP.layout(), Shape<Underscore, Underscore, _2>{});
      Tensor tOrP = make_tensor(rP.data(), make_layout(make_layout(get<0>(l), get<0>(get<2>(l))), get<1>(l),
                                                       get<1>(get<2>(l))));
      if (n == 0) {
        cute::cp_async_wait<0>();  // V landed
        __syncthreads();
      }
      Tensor sVt_n = make_tensor(make_smem_ptr(v_smem + n * kN * kD), typename Tr::SmemLayoutVt{});
      Tensor tOsVt = smem_thr_copy_v.partition_S(sVt_n);
      constexpr int kPvK = decltype(size<2>(tOrP))::value;
      constexpr int kPvN = decltype(size<1>(tOrVt))::value;
#pragma unroll
      for (int k = 0; k < kPvK; ++k) {
        cute::copy(smem_copy_v, tOsVt(_, _, k), tOrVt_view(_, _, k));
#pragma unroll
        for (int m = 0; m < kMmaM; ++m) {
          if (!atom_active[m]) continue;
#pragma unroll
          for (int j = 0; j < kPvN; ++j)
            cute::gemm(tiled_mma, acc_o(_, m, j), tOrP(_, m, k), tOrVt(_, j, k), acc_o(_, m, j));
        }
      }
    }
    if (n_tiles == 0) cute::cp_async_wait<0>();  // nothing computed: drain the copies

    // ---- Epilogue: row sums over the quad, O / l -> shared (the Q tile) -> global.
    float row_lse[kSlots];
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      float sum = row_sum[s];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const bool any = row_max[s] != -INFINITY && sum > 0.0f;
      row_sum[s] = any ? a.out_scale / sum : 0.0f;
      row_lse[s] = any ? (row_max[s] + __log2f(sum)) * 0.69314718055994530942f : -INFINITY;
    }
    __syncthreads();  // every warp is done reading sQ (and s_maxvis)
    if (tid == 0) s_maxvis = 0;
#pragma unroll
    for (int m = 0; m < kMmaM; ++m) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int s = 2 * m + h;
#pragma unroll
        for (int j = 0; j < size<2>(acc_o); ++j) {
          const int r = get<0>(tOcO(2 * h, m, j)), col = get<1>(tOcO(2 * h, m, j));
          *reinterpret_cast<uint32_t*>(&sQ(r, col)) =
              pack2<Elem>(acc_o(2 * h, m, j) * row_sum[s], acc_o(2 * h + 1, m, j) * row_sum[s]);
        }
        if ((lane & 3) == 0) {
          const int r = get<0>(tScS(2 * h, m, 0));
          const int64_t out = s_out[r];
          if (out >= 0) v.part_lse[out] = row_lse[s];
        }
      }
    }
    __syncthreads();
    {
      Elem* po = static_cast<Elem*>(v.part_o);
      const int cc = tid % Tr::kCpr, r0 = tid / Tr::kCpr;
#pragma unroll
      for (int i = 0; i < kM / Tr::kRowStep; ++i) {
        const int r = r0 + i * Tr::kRowStep;
        const int64_t out = s_out[r];
        if (out >= 0)
          *reinterpret_cast<uint4*>(po + out * kD + cc * 8) = *reinterpret_cast<const uint4*>(&sQ(r, cc * 8));
      }
    }
  }
}

}  // namespace msa::cuda::sparse_prefill

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
//   (groups: K + the next item's descriptor, Q, V). Per warp, for each key
//   tile (32 keys at D = 128, 64 at D = 64) up to the last key visible to one
//   of its rows: S = Q K^T (ldmatrix + mma.sync 16x8x16, fp32), scaled,
//   masked (causal / length / unresolvable page; only in tiles that need it:
//   a second copy of the tile loop), online softmax across the block's tiles,
//   O += P V (P from registers, V^T by ldmatrix.trans). The first tile's S
//   runs while V is still in flight. A warp whose rows are all padding
//   computes no S.
//   Epilogue (per warp, no CTA barrier): O / l (times v_scale) -> the warp's
//   own 16 rows of the Q tile -> 16-byte stores into the partial O
//   [Tc, Hq, K, D]; lse = m + log l (natural log) -> partial LSE.
//
//   Integer work is kept small: every shared-memory address is one
//   per-thread base plus compile-time offsets (XOR for the swizzle phase,
//   adds for rows / panels / tiles), checked on the host against CuTe's
//   layouts and partitions; global offsets are 32-bit where they fit; the
//   row setup divides by host-built FastDivmods.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/fast_math.h>

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

// An int NVVM cannot see through (0): addresses built from it are recomputed
// where they are used instead of being hoisted out of the work loop by the
// front end and kept live. (ptxas does see through the mov; inside the tile
// loop `n & MainArgs::zero` plays this role.)
__device__ __forceinline__ int opaque_zero() {
  int z;
  asm volatile("mov.b32 %0, 0;" : "=r"(z));
  return z;
}

// Element offset of (r, c) in the swizzled smem layouts of Traits (8 x 64
// atoms, Swizzle<3, 3, 3>, atoms tiled column-major) for a tensor of kRows
// rows: 64-column panels of kRows x 64 row-major elements, the 16-byte chunk
// index XORed with r % 8. Equal to SmemLayoutQ (kRows = kM) and SmemLayoutTile
// (kRows = kN) for every (r, c) (checked on the host against CuTe). Spelled
// out so that a thread's fixed part (r % 8, chunk) is computed once and its
// row / column steps become immediate offsets.
template <int kRows>
__host__ __device__ constexpr uint32_t swz_off(uint32_t r, uint32_t c) {
  return (c / 64) * (kRows * 64) + r * 64 + ((c % 64) ^ ((r % 8) << 3));
}

// ldmatrix x4 (optionally transposed) from a 32-bit shared address into the
// four 32-bit registers of an MMA operand fragment, in the order CuTe's
// SM75_U32x4_LDSM_N / SM75_U16x8_LDSM_T copy atoms fill them.
template <bool kTrans, class Frag>
__device__ __forceinline__ void ldsm_x4(uint32_t addr, Frag&& frag) {
  Tensor r = recast<uint32_t>(frag);
  static_assert(decltype(size(r))::value == 4, "one x4 ldmatrix per fragment slice");
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.x4.trans.m8n8.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r(0)), "=r"(r(1)), "=r"(r(2)), "=r"(r(3))
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.x4.m8n8.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r(0)), "=r"(r(1)), "=r"(r(2)), "=r"(r(3))
                 : "r"(addr));
  }
}

// ldmatrix source addresses (32-bit shared, bytes) of the tile loop, for
// k-step 0 / slice 0 of tile 0. Lane l reads, at k-step k of tile n:
//   Q  (A of S = Q K^T):  row 16 w + l % 16, col 16 k + 8 (l / 16)
//   K  (B of S, slice m): key 16 m + l % 8 + 8 (l / 16), col 16 k + 8 ((l / 8) % 2)
//   V^T (B of O = P V, trans, slice m): key 16 k + l % 8 + 8 ((l / 8) % 2), col 16 m + 8 (l / 16)
// (the partitions CuTe's copy atoms use; checked on the host). The row's
// swizzle phase is l % 8 in all three, so a column step of 16 (k % 4 or
// m % 4) is an XOR of 32 (k % 4) into bits 5-6 of the byte address, and the
// 64-column panels, row slices and tiles are immediate adds. The XOR acts on
// the absolute address: the smem base is 128-byte aligned (smem_ is
// declared __align__(128); the Q / K / V regions are 128-byte multiples).
struct LdsmAddrs {
  uint32_t q, k, v;
};
template <class Tr>
__host__ __device__ constexpr LdsmAddrs ldsm_addrs(uint32_t smem, uint32_t tid) {
  const uint32_t w = tid / 32, l = tid % 32, phase = (l % 8) * 8;
  return {smem + 2 * ((16 * w + l % 16) * 64 + ((8 * (l / 16)) ^ phase)),
          smem + Tr::kSmemQBytes + 2 * ((l % 8 + 8 * (l / 16)) * 64 + ((8 * ((l / 8) % 2)) ^ phase)),
          smem + Tr::kSmemQBytes + Tr::kSmemKVBytes + 2 * ((l % 8 + 8 * ((l / 8) % 2)) * 64 + ((8 * (l / 16)) ^ phase))};
}
// Byte address of k-step k of the Q operand (qa: LdsmAddrs::q).
template <class Tr>
__host__ __device__ constexpr uint32_t ldsm_q(uint32_t qa, int k) {
  return (qa ^ uint32_t(32 * (k % 4))) + uint32_t((k / 4) * Tr::kM * 128);
}
// K tile n, slice m, k-step k (ka: LdsmAddrs::k + n * kN * kD * 2).
template <class Tr>
__host__ __device__ constexpr uint32_t ldsm_k(uint32_t ka, int m, int k) {
  return (ka ^ uint32_t(32 * (k % 4))) + uint32_t((k / 4) * Tr::kN * 128 + m * 2048);
}
// V^T tile n, slice m (16 columns of D), k-step k (16 keys) (va: LdsmAddrs::v + n * kN * kD * 2).
template <class Tr>
__host__ __device__ constexpr uint32_t ldsm_v(uint32_t va, int m, int k) {
  return (va ^ uint32_t(32 * (m % 4))) + uint32_t((m / 4) * Tr::kN * 128 + k * 2048);
}

// Row r of the K / V block (tile r / kN, row r % kN of that tile).
template <class Tr>
__host__ __device__ constexpr uint32_t kv_off(uint32_t r, uint32_t c) {
  return (r / Tr::kN) * (Tr::kN * Tr::kD) + swz_off<Tr::kN>(r % Tr::kN, c);
}

// kv_off(r0 + R, c) - kv_off(r0, c) for a row step R that is a multiple of 8,
// r0 < the thread's row step and (step | kN or kN | step): a compile-time
// constant, independent of r0 and c.
template <class Tr>
__host__ __device__ constexpr uint32_t kv_row_delta(uint32_t R) {
  return (R / Tr::kN) * (Tr::kN * Tr::kD) + (R % Tr::kN) * 64;
}

// Epilogue, part 1: acc_o values (2 h, 2 h + 1) of n-atom j of thread tid sit
// at (row, col) = (16 w + l / 4 + 8 h, 8 j + 2 (l % 4)) of the Q tile. row % 8
// is l / 4 for all of them, so the swizzled element offset is one base with
// the chunk j % 8 XORed in, plus h * 8 rows and the 64-column panel j / 8.
template <class Tr>
__host__ __device__ constexpr uint32_t o_frag_base(uint32_t tid) {
  const uint32_t w = tid / 32, l = tid % 32;
  return (16 * w + l / 4) * 64 + (l / 4) * 8 + (l % 4) * 2;
}
template <class Tr>
__host__ __device__ constexpr uint32_t o_frag_off(uint32_t base, int h, int j) {
  return (base ^ uint32_t(8 * (j % 8))) + uint32_t(h * 512 + (j / 8) * (Tr::kM * 64));
}

// Epilogue, part 2: lane l of warp w stores 16-byte chunk cc = l % kCpr of
// the warp's rows 16 w + a + kRs i (a = l / kCpr < kRs). row % 8 is
// a + kRs (i % (8 / kRs)), two parts in disjoint bits, so the swizzle is one
// base XOR a compile-time value.
template <class Tr>
struct ORowMap {
  static constexpr int kCpr = Tr::kCpr, kRs = 32 / kCpr;
  static constexpr int kChunks = Tr::kWarpRows * kCpr / 32;  // per lane
  static_assert(32 % kCpr == 0 && kRs <= 8, "lanes cover whole rows");
  static __host__ __device__ constexpr uint32_t row(uint32_t tid) { return (tid / 32) * 16 + (tid % 32) / kCpr; }
  static __host__ __device__ constexpr uint32_t chunk(uint32_t tid) { return (tid % 32) % kCpr; }
  static __host__ __device__ constexpr uint32_t base(uint32_t tid) {
    const uint32_t a = (tid % 32) / kCpr, cc = chunk(tid);
    return (cc / 8) * (Tr::kM * 64) + row(tid) * 64 + (((cc % 8) ^ a) << 3);
  }
  static __host__ __device__ constexpr uint32_t off(uint32_t base, int i) {
    return (base ^ uint32_t(8 * kRs * (i % (8 / kRs)))) + uint32_t(kRs * i * 64);
  }
};

struct MainArgs {
  SparsePrefillParams p;
  PassView v;
  float scale_log2;  // scale * k_scale * log2(e)
  float out_scale;   // v_scale
  int group;         // G = q_heads / kv_heads
  // Host-built divisors (multiply-high + shift): rows r / G and r % G, and
  // entries e / K and e % K, in the row setup.
  cutlass::FastDivmod div_group, div_topk;
  // Always 0. `n & zero` is a per-tile zero that ptxas cannot fold (unlike
  // opaque_zero(), whose mov it sees): the ldmatrix addresses built from it
  // are recomputed per tile instead of being hoisted out of the tile loop and
  // held in registers next to the 64 O accumulators.
  int zero;
};

// 16-byte cp.async (L2 only) of src, or a zero fill when flag < 0 (src must
// still be a valid address). The test and the src-size select are made
// inside the asm: written in C++, `ok ? 16 : 0` on a sign test is turned into
// shifts, and ptxas then encodes the fill size into the address (6 extra
// instructions per copy) instead of predicating the LDGSTS.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int flag) {
  const uint32_t dst = cast_smem_ptr_to_uint(smem_dst);
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  .reg .b32 n;\n"
      "  setp.ge.s32 p, %2, 0;\n"
      "  selp.b32 n, 16, 0, p;\n"
      "  cp.async.cg.shared.global.L2::128B [%0], [%1], 16, n;\n"
      "}\n" ::"r"(dst),
      "l"(gmem_src), "r"(flag));
}
// The same, reading src_ok when flag >= 0 and zero-filling from the valid
// address src_fallback otherwise (the address select inside the asm too).
__device__ __forceinline__ void cp_async_16_or_zero(void* smem_dst, const void* src_ok, const void* src_fallback,
                                                    int flag) {
  const uint32_t dst = cast_smem_ptr_to_uint(smem_dst);
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  .reg .b32 n;\n"
      "  .reg .b64 a;\n"
      "  setp.ge.s32 p, %3, 0;\n"
      "  selp.b32 n, 16, 0, p;\n"
      "  selp.b64 a, %1, %2, p;\n"
      "  cp.async.cg.shared.global.L2::128B [%0], [a], 16, n;\n"
      "}\n" ::"r"(dst),
      "l"(src_ok), "l"(src_fallback), "r"(flag));
}

// 16-byte global store when flag >= 0 (a predicated store: no branch and
// reconvergence per row in the epilogue).
__device__ __forceinline__ void st_global_16_if(void* gmem_dst, const uint4& val, int flag) {
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ge.s32 p, %5, 0;\n"
      "  @p st.global.v4.b32 [%0], {%1, %2, %3, %4};\n"
      "}\n" ::"l"(gmem_dst),
      "r"(val.x), "r"(val.y), "r"(val.z), "r"(val.w), "r"(flag)
      : "memory");
}

// K or V rows [0, 64) (and [64, 128) when the block has 128 keys) of the
// block -> shared memory (the K/V layout of Traits); rows >= nvalid are
// zero-filled. src points at key 0 of the block (this KV head), row_bytes is
// the byte distance between keys. Thread t copies chunk t % kCpr of rows
// r0 + i * kRowStep (r0 = t / kCpr): its smem offsets differ by compile-time
// constants and its global offsets by multiples of one 32-bit product, so each
// 16-byte copy costs a handful of instructions (no per-copy swizzle or 64-bit
// index math).
template <class Tr>
__device__ __forceinline__ void load_kv(const uint8_t* src, uint32_t row_bytes, int nvalid, bool full128,
                                        typename Tr::Elem* dst) {
  using Elem = typename Tr::Elem;
  const uint32_t t = threadIdx.x + opaque_zero();
  if constexpr (!Tr::kFp8) {
    constexpr int kCpr = Tr::kCpr, kStep = Tr::kRowStep, kIters = 128 / kStep;
    static_assert(kStep % 8 == 0 && (Tr::kN % kStep == 0 || kStep % Tr::kN == 0), "row step vs tile rows");
    static_assert(kIters % 2 == 0, "the 64-key halves split the copies evenly");
    const uint32_t cc = t % kCpr, r0 = t / kCpr;
    Elem* d = dst + kv_off<Tr>(r0, cc * 8);
    const uint8_t* s = src + cc * 16;
    const uint32_t off0 = r0 * row_bytes, step = kStep * row_bytes;  // < 2^31: 128 rows of one head's stride
    const int left = nvalid - int(r0);
    auto copy = [&](int i) {
      const int flag = left - 1 - i * kStep;  // >= 0 <=> row r0 + i * kStep < nvalid
      const uint32_t off = flag >= 0 ? off0 + uint32_t(i) * step : 0u;  // not read when zero-filled
      cp_async_16(d + kv_row_delta<Tr>(i * kStep), s + off, flag);
    };
#pragma unroll
    for (int i = 0; i < kIters / 2; ++i) copy(i);
    if (full128) {
#pragma unroll
      for (int i = kIters / 2; i < kIters; ++i) copy(i);
    }
  } else {
    constexpr int kCpr8 = Tr::kD / 16;  // 16 fp8 values per chunk
    constexpr int kStep = Tr::kThreads / kCpr8, kIters = 128 / kStep;
    static_assert(kStep % 8 == 0 && (Tr::kN % kStep == 0 || kStep % Tr::kN == 0), "row step vs tile rows");
    static_assert(kIters % 2 == 0, "the 64-key halves split the copies evenly");
    const uint32_t cc = t % kCpr8, r0 = t / kCpr8;
    Elem* d0 = dst + kv_off<Tr>(r0, cc * 16);
    Elem* d1 = dst + kv_off<Tr>(r0, cc * 16 + 8);
    const uint8_t* s = src + cc * 16;
    const uint32_t off0 = r0 * row_bytes, step = kStep * row_bytes;
    const int left = nvalid - int(r0);
    auto convert = [&](int lo, int hi) {
      uint4 in[kIters / 2];
#pragma unroll
      for (int i = lo; i < hi; ++i) {  // all loads in flight before the first conversion
        in[i - lo] = make_uint4(0, 0, 0, 0);
        if (i * kStep < left) in[i - lo] = __ldg(reinterpret_cast<const uint4*>(s + off0 + uint32_t(i) * step));
      }
#pragma unroll
      for (int i = lo; i < hi; ++i) {
        uint4 o0, o1;
        block_scores::convert_fp8x16<Elem>(in[i - lo], o0, o1);
        *reinterpret_cast<uint4*>(d0 + kv_row_delta<Tr>(i * kStep)) = o0;
        *reinterpret_cast<uint4*>(d1 + kv_row_delta<Tr>(i * kStep)) = o1;
      }
    };
    convert(0, kIters / 2);
    if (full128) convert(kIters / 2, kIters);
  }
}

// The 128 Q rows (gathered by the byte offsets in s_qoff; -1: padding row,
// zero-filled) -> shared memory (SmemLayoutQ). Thread t copies chunk
// t % kCpr of rows r0 + i * kRowStep: one offset load, a select and an add per
// 16-byte copy; the smem offsets are compile-time steps from one base.
template <class Tr>
__device__ __forceinline__ void gather_q(const void* q, const int64_t* s_qoff, typename Tr::Elem* q_smem) {
  constexpr int kCpr = Tr::kCpr, kStep = Tr::kRowStep;
  static_assert(kStep % 8 == 0, "row step must keep the swizzle phase");
  const uint32_t t = threadIdx.x + opaque_zero();
  const uint32_t cc = t % kCpr, r0 = t / kCpr;
  typename Tr::Elem* d = q_smem + swz_off<Tr::kM>(r0, cc * 8);
  const uint8_t* s = static_cast<const uint8_t*>(q) + cc * 16;
  constexpr int kRows = Tr::kM / kStep;
  int64_t off[kRows];  // all offsets first: the copies then issue back to back
#pragma unroll
  for (int i = 0; i < kRows; ++i) off[i] = s_qoff[r0 + i * kStep];
#pragma unroll
  for (int i = 0; i < kRows; ++i)  // the high word's sign: padding
    cp_async_16_or_zero(d + i * kStep * 64, s + off[i], s, int(off[i] >> 32));
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) main_kernel(const __grid_constant__ MainArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kM = Tr::kM, kN = Tr::kN, kD = Tr::kD;
  extern __shared__ __align__(128) uint8_t smem_[];
  __shared__ int64_t s_qoff[kM];  // byte offset of the row's q, -1: padding
  __shared__ int64_t s_out[kM];   // ((tl * Hq + h) * K + slot) * D: the row's partial O, -1: padding
  __shared__ int s_vis[kM];       // visible keys of the row from the block start, -1: padding
  __shared__ WorkItem s_item[2];  // this item's descriptor and the next one's

  const SparsePrefillParams& p = a.p;
  const PassView& v = a.v;
  const int tid = threadIdx.x, lane = tid & 31;
  Elem* q_smem = reinterpret_cast<Elem*>(smem_);
  Elem* k_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes);
  Elem* v_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes + Tr::kSmemKVBytes);
  Tensor sQ = make_tensor(make_smem_ptr(q_smem), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(k_smem), typename Tr::SmemLayoutKV{});

  const int64_t Hq = p.q_heads, Hkv = p.kv_heads, K = p.topk;
  const uint32_t G = uint32_t(a.group);
  const int bs = int(p.block_size);
  // num_work <= work_items by construction (scan); clamped all the same.
  const int num_work = int(min(int64_t(*v.num_work), v.work_items));
  const int stride = int(gridDim.x);

  typename Tr::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  // Warp w owns MMA rows [16 w, 16 w + 16) (one atom: MMA_M == 1). In the
  // m16n8 accumulator layout the thread's two rows are 16 w + lane / 4 (values
  // 0, 1) and + 8 (values 2, 3), at columns 8 j + 2 (lane % 4) + {0, 1} of
  // n-atom j (checked on the host against CuTe's partition_C).
  const int my_row0 = (tid >> 5) * 16 + (lane >> 2), my_row1 = my_row0 + 8;

  // Register views of the ldmatrix destinations (CuTe's retiling of the MMA
  // fragments); the source addresses are computed by hand (ldsm_addrs).
  auto smem_thr_copy_q = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, tiled_mma).get_thread_slice(tid);
  auto smem_thr_copy_k = make_tiled_copy_B(typename Tr::SmemCopyAtom{}, tiled_mma).get_thread_slice(tid);
  auto smem_thr_copy_v = make_tiled_copy_B(typename Tr::SmemCopyAtomT{}, tiled_mma).get_thread_slice(tid);

  // The next item's descriptor is copied one item ahead (cp.async, with the
  // K group) into the other half of s_item: its latency hides behind the
  // current item, and it holds no registers during the tile loop.
  if (tid == 0 && int(blockIdx.x) < num_work) s_item[0] = v.work[blockIdx.x];
  __syncthreads();
  int buf = 0;
  for (int64_t w = blockIdx.x; w < num_work; w += stride, buf ^= 1) {
    // Written (and waited for, and published by a barrier) during the
    // previous item; its other half was last read before the barrier below.
    const WorkItem it = s_item[buf];
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
    constexpr int kKvBytes = Tr::kFp8 ? 1 : int(sizeof(Elem));
    const uint32_t row_bytes = uint32_t(row_stride) * kKvBytes;
    const bool full128 = bs > 64;

    __syncthreads();  // the previous item is done with shared memory

    // ---- K (and V) -> shared memory (rows past nvalid zero-filled); the
    // next item's descriptor joins the K group.
    load_kv<Tr>(static_cast<const uint8_t*>(p.k) + kv_base * kKvBytes, row_bytes, nvalid, full128, k_smem);
    if (tid < 2 && w + stride < num_work) {
      SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(
          reinterpret_cast<const cute::uint128_t*>(v.work + (w + stride))[tid],
          reinterpret_cast<cute::uint128_t*>(&s_item[buf ^ 1])[tid]);
    }
    cute::cp_async_fence();

    // ---- Row setup: thread r < kM owns MMA row r = p * G + hh.
    if (tid < kM) {
      const int r = tid;
      int pidx, hh;  // (w & zero: recomputed per item, not hoisted and held in a register)
      a.div_group(pidx, hh, r + (int(w) & a.zero));
      int64_t qoff = -1, out = -1;
      int vis = -1;
      if (pidx < it.e_count) {
        const int32_t e = v.entries[it.e_begin + pidx];  // t_local * K + slot (>= 0 by construction)
        if (e >= 0) {
          int tl, slot;
          a.div_topk(tl, slot, e);
          const int64_t t = v.t0 + tl;
          const int64_t h = int64_t(g) * G + hh;
          qoff = (t * Hq + h) * (kD * int64_t(sizeof(Elem)));
          out = ((int64_t(tl) * Hq + h) * K + slot) * kD;
          if (p.causal) {
            const int64_t pos = L - ql + (t - qb);
            const int64_t lim = pos - key0 + 1;
            vis = int(lim < 0 ? 0 : (lim > nvalid ? nvalid : lim));
          } else {
            vis = nvalid;
          }
        }
      }
      s_qoff[r] = qoff;
      s_out[r] = out;
      s_vis[r] = vis;
    }
    __syncthreads();

    // ---- Q rows (gathered; padding rows zero-filled), then V.
    gather_q<Tr>(p.q, s_qoff, q_smem);
    cute::cp_async_fence();
    load_kv<Tr>(static_cast<const uint8_t*>(p.v) + kv_base * kKvBytes, row_bytes, nvalid, full128, v_smem);
    cute::cp_async_fence();

    // Per-warp key tiles: the tiles holding a visible key of one of the
    // warp's 16 rows (padding rows have vis = -1; a warp of padding rows
    // computes nothing). Tiles past a row's last visible key would only add
    // exact zeros, so skipping them per warp changes no result.
    // (vis <= nvalid <= block_size, so warp_tiles <= block_size / kN. The
    // clamps sit before the warp reductions: the tile counts are then uniform
    // shifts, and the loop bounds stay in uniform registers.)
    const int row_vis0 = s_vis[my_row0], row_vis1 = s_vis[my_row1];
    const uint32_t warp_vis = __reduce_max_sync(0xffffffffu, uint32_t(max(max(row_vis0, row_vis1), 0)));
    const int warp_tiles = int((warp_vis + kN - 1) / kN);
    // The leading tiles in which every real row of the warp sees every key
    // need no mask (the select would keep every value). Padding rows (-1 ->
    // UINT_MAX here) do not count: their results are never stored.
    const uint32_t warp_full =
        __reduce_min_sync(0xffffffffu, min(min(uint32_t(row_vis0), uint32_t(row_vis1)), 128u)) / kN;

    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kD>>{});  // (MMA, 1, D / 8)
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
    const LdsmAddrs lds = ldsm_addrs<Tr>(cast_smem_ptr_to_uint(smem_), tid);

    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});  // (MMA, 1, kN / 8)
    constexpr int kMmaN = decltype(size<2>(acc_s))::value;
    Tensor rP = make_tensor<Elem>(acc_s.layout());
    // P as A fragments ((4, 2), 1, kN / 16).
    auto lp = logical_divide(rP.layout(), Shape<Underscore, Underscore, _2>{});
    Tensor tOrP =
        make_tensor(rP.data(), make_layout(make_layout(get<0>(lp), get<0>(get<2>(lp))), get<1>(lp), get<1>(get<2>(lp))));

    // S = Q K_n^T, scale, mask (`masked`: only tiles past warp_full),
    // online softmax (log2 domain), P -> rP. kFirst: tile 0, where O is not
    // live yet (it is zero, and corr is 0: the rescale is skipped, not
    // computed).
    auto qk_softmax = [&](int n, auto first, bool masked) {
      constexpr bool kFirst = decltype(first)::value;
      clear(acc_s);
      // n & zero: Q's addresses vary per tile for ptxas (not hoisted).
      const uint32_t qa = lds.q + uint32_t(n & a.zero), ka = lds.k + uint32_t(n * (kN * kD * 2));
#pragma unroll
      for (int k = 0; k < kMmaK; ++k) {
        ldsm_x4<false>(ldsm_q<Tr>(qa, k), tSrQ_view(_, 0, k));
#pragma unroll
        for (int m = 0; m < kMmaN / 2; ++m) ldsm_x4<false>(ldsm_k<Tr>(ka, m, k), tSrK_view(_, m, k));
#pragma unroll
        for (int j = 0; j < kMmaN; ++j)
          cute::gemm(tiled_mma, acc_s(_, 0, j), tSrQ(_, 0, k), tSrK(_, j, k), acc_s(_, 0, j));
      }
#pragma unroll
      for (int i = 0; i < size(acc_s); ++i) acc_s(i) *= a.scale_log2;
      if (masked) {
        // Column 8 j + 2 (lane % 4) + vv of the tile is visible iff it is
        // below vis - n kN; compared as 8 j + vv < that - 2 (lane % 4). The
        // row's vis is read again here (at an index ptxas cannot hoist out of
        // the loop), so it holds no register across the loop.
        const int t = threadIdx.x + (n & a.zero), r0 = (t >> 5) * 16 + ((t & 31) >> 2);
        const int lim0 = s_vis[r0] - n * kN - 2 * (t & 3), lim1 = s_vis[r0 + 8] - n * kN - 2 * (t & 3);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int lim = h == 0 ? lim0 : lim1;
#pragma unroll
          for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
            for (int vv = 0; vv < 2; ++vv) {
              float& x = acc_s(2 * h + vv, 0, j);
              x = 8 * j + vv < lim ? x : -INFINITY;
            }
          }
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = row_max[h];
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) {
#pragma unroll
          for (int vv = 0; vv < 2; ++vv) mx = fmaxf(mx, acc_s(2 * h + vv, 0, j));
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
        if constexpr (!kFirst) {
#pragma unroll
          for (int j = 0; j < size<2>(acc_o); ++j) {
#pragma unroll
            for (int vv = 0; vv < 2; ++vv) acc_o(2 * h + vv, 0, j) *= corr;
          }
        }
      }
    };
    // O += P V_n.
    auto pv = [&](int n) {
      // (row_sum & zero): the V loads wait for the row sums, so ptxas cannot
      // keep the 16 fp32 probabilities live across the P V MMAs to sum them
      // late (that alone pushed the loop past 128 registers).
      const uint32_t after_sums = (__float_as_uint(row_sum[0]) | __float_as_uint(row_sum[1])) & uint32_t(a.zero);
      const uint32_t va = lds.v + uint32_t(n * (kN * kD * 2)) + after_sums;
      constexpr int kPvK = decltype(size<2>(tOrP))::value;
      constexpr int kPvN = decltype(size<1>(tOrVt))::value;
#pragma unroll
      for (int k = 0; k < kPvK; ++k) {
#pragma unroll
        for (int m = 0; m < kPvN / 2; ++m) ldsm_x4<true>(ldsm_v<Tr>(va, m, k), tOrVt_view(_, m, k));
#pragma unroll
        for (int j = 0; j < kPvN; ++j)
          cute::gemm(tiled_mma, acc_o(_, 0, j), tOrP(_, 0, k), tOrVt(_, j, k), acc_o(_, 0, j));
      }
    };

    cute::cp_async_wait<1>();  // K and Q landed (V may be in flight)
    __syncthreads();
    if (warp_tiles > 0) {
      qk_softmax(0, std::true_type{}, warp_full == 0);  // overlaps the V copy
    } else {
      // A warp with no tile holds padding rows and rows with nvalid = 0
      // (a valid row sees >= 1 key of a block it selected, csr mark): P = 0
      // and V = 0 there, so the unconditional first P V below gives O = +0,
      // as before. (Running it costs such warps 32 MMAs; branching around it
      // made the compiler materialise 64 zeros for O on every item.)
      clear(rP);
    }
    cute::cp_async_wait<0>();  // V landed (every group drained, computed or not)
    __syncthreads();
    clear(acc_o);
    pv(0);  // zero accumulators: the first MMAs take C = 0 (RZ)
    // Two copies of the tile loop: the tiles that need no mask (all of them
    // unless the block is cut by the causal diagonal or by nvalid), then the
    // rest, so the common loop carries no select or compare per element.
    int n = 1;
    for (; n < warp_tiles && n < int(warp_full); ++n) {
      qk_softmax(n, std::false_type{}, false);
      pv(n);
    }
    for (; n < warp_tiles; ++n) {
      qk_softmax(n, std::false_type{}, true);
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
    {
      const uint32_t base = o_frag_base<Tr>(threadIdx.x + opaque_zero());
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int j = 0; j < size<2>(acc_o); ++j) {
          *reinterpret_cast<uint32_t*>(q_smem + o_frag_off<Tr>(base, h, j)) =
              pack2<Elem>(acc_o(2 * h, 0, j) * row_sum[h], acc_o(2 * h + 1, 0, j) * row_sum[h]);
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if ((lane & 3) == 0) {
        const int64_t out = s_out[h == 0 ? my_row0 : my_row1];
        if (out >= 0) v.part_lse[out / kD] = row_lse[h];
      }
    }
    __syncwarp();
    {
      using Map = ORowMap<Tr>;
      const uint32_t t = threadIdx.x + opaque_zero(), row = Map::row(t), base = Map::base(t);
      Elem* po = static_cast<Elem*>(v.part_o) + Map::chunk(t) * 8;
#pragma unroll
      for (int i = 0; i < Map::kChunks; ++i) {
        const int64_t out = s_out[row + Map::kRs * i];  // < 0: padding row (not stored)
        const uint4 val = *reinterpret_cast<const uint4*>(q_smem + Map::off(base, i));
        st_global_16_if(po + out, val, int(out >> 32));
      }
    }
  }
}

}  // namespace msa::cuda::sparse_prefill

// The KV-outer main kernel of msa_sparse_prefill (sm_80+ mma.sync via CuTe;
// on sm_90a the two GEMMs of a key tile are wgmma, see kWg below):
//
//   CTA = one work item at a time (grid-stride over the device-built work
//   list): one KV block (block_size = 64 or 128 tokens) of one KV head, and up
//   to P = 128 / G query rows that selected it. The M = 128 MMA rows are
//   (row p, group head hh) -> r = p * G + hh; padding rows are zero.
//
//   8 warps along M, warp w owns the 16-row atom [16 w, 16 w + 16): 2 CTAs
//   of 256 threads per SM, <= 128 registers per thread, no spills.
//
//   K (and V) of the block -> shared memory once (cp.async, swizzled; fp8:
//   register loads converted to bf16/fp16), Q rows gathered with cp.async
//   (groups: K + the next item's descriptor, Q, V, the next item's metadata).
//   Per warp (mma.sync) or per warpgroup (wgmma), for each key tile (32 keys
//   at D = 128, 64 at D = 64) up to the last key visible to one of its rows:
//   S = Q K^T (fp32), scaled, masked (causal / length / unresolvable page;
//   only in tiles that need it: a second copy of the tile loop), online
//   softmax across the block's tiles, O += P V (P from registers). The first
//   tile's S runs while V is still in flight. A warp (warpgroup) whose rows
//   are all padding computes no S.
//   Epilogue (per warp, no CTA barrier): O / l (times v_scale) -> the warp's
//   own 16 rows of the Q tile -> 16-byte stores into the partial O
//   [Tc, Hq, K, D]; lse = m + log l (natural log) -> partial LSE.
//
//   The per-item chain of dependent global loads is cut short: the next
//   item's descriptor travels with this item's K copy, its metadata (entries,
//   qe, len, kv base / page) is copied (cp.async) while this item computes,
//   and each warp sets up its own 16 rows of it (Q offsets, output offsets,
//   visible keys) after its epilogue. An item then starts with one barrier
//   and its K, Q and V copies back to back.
//
//   wgmma (kWg, sm_90a only; every other target compiles the mma.sync path):
//   warpgroup g = warps 4g..4g+3 owns rows [64 g, 64 g + 64). S = Q K^T is
//   wgmma.m64nNk16 with both operands read from shared memory through
//   descriptors (the swizzled Q / K layouts are the canonical K-major
//   128-byte-swizzle layouts), P V is wgmma.m64nDk16 with P from registers
//   (the mma.sync A layout) and V read through an MN-major descriptor (V^T
//   without a transpose). No ldmatrix: the shared-memory reads per item drop
//   from ~640 KB (each warp re-reads all of K and V for its 16 rows) to
//   ~256 KB, and the MMA instructions from 2048 per item to 80 per
//   warpgroup. The accumulators have the mma.sync layout, so the softmax and
//   the epilogue are the same code (softmax.cuh, epilogue.cuh; also those of
//   the warp-specialized kernel). Tile counts are per warpgroup.
//
//   Integer work is kept small: every shared-memory address is one
//   per-thread base plus compile-time offsets (XOR for the swizzle phase,
//   adds for rows / panels / tiles), checked on the host against CuTe's
//   layouts and partitions; global offsets are 32-bit where they fit; the
//   row setup divides by host-built FastDivmods.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include <cute/arch/mma_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/fast_math.h>

#include "cuda/common/cute_sm80.cuh"

#include "cuda/block_scores/fp8_convert.cuh"
#include "cuda/sparse_prefill/epilogue.cuh"
#include "cuda/sparse_prefill/internal.h"
#include "cuda/sparse_prefill/softmax.cuh"

// wgmma is compiled for sm_90a device code only; every other target (and the
// compute_80 PTX) builds the mma.sync path for both kernel instances.
#if defined(__CUDA_ARCH__) && defined(CUTE_ARCH_MMA_SM90A_ENABLED)
#define MSA_SP_WGMMA 1
#else
#define MSA_SP_WGMMA 0
#endif

namespace msa::cuda::sparse_prefill {

using namespace cute;

// kKeysPerTile_: 0 = the choice below (the 256-thread kernels' register
// budget); 128 = the whole block as one key tile (the warp-specialized
// kernel's consumers have 224 registers: one m64n128 S GEMM, one softmax
// pass without rescaling, one P V per item).
template <class Elem_, bool kFp8_, int kHeadDim_, int kKeysPerTile_ = 0>
struct Traits {
  using Elem = Elem_;
  static constexpr bool kFp8 = kFp8_;
  static constexpr int kD = kHeadDim_;
  static_assert(kD % 64 == 0, "head_dim must be a multiple of 64");
  static constexpr int kM = kSparsePrefillRows;  // 128
  // Keys per tile: 32 at D = 128 keeps S / P and the K fragments of a tile
  // small enough for the 128-register budget next to the 64 O accumulators.
  static constexpr int kN = kKeysPerTile_ ? kKeysPerTile_ : (kD >= 128 ? 32 : 64);
  static_assert(kN == 32 || kN == 64 || kN == 128, "keys per tile");
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
  // The wgmma descriptors' 128-byte swizzle follows address bits 7-9, so the
  // tiles start on a 1024-byte boundary: the dynamic smem is declared
  // __align__(kSmemAlign) (ptxas then places it at an aligned offset of the
  // CTA's window and pads the static part: no slack needed here).
  static constexpr int kSmemAlign = 1024;
  static constexpr int kSmemBytes = kSmemQBytes + 2 * kSmemKVBytes;
  static constexpr int kCpr = kD * int(sizeof(Elem)) / 16;  // 16-byte chunks per Elem row
  static constexpr int kRowStep = kThreads / kCpr;
  static_assert(kRowStep % 8 == 0, "row step must keep the swizzle phase");
  static_assert(kM % kRowStep == 0, "the Q gather covers the rows exactly");
  static_assert((kWarpRows * kCpr) % 32 == 0, "the per-warp O store covers the warp's rows exactly");
};

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
// cp_async_16 with an L2 cache policy (a createpolicy result), for the ws producer's Q gather.
__device__ __forceinline__ void cp_async_16_policy(void* smem_dst, const void* gmem_src, int flag, uint64_t pol) {
  const uint32_t dst = cast_smem_ptr_to_uint(smem_dst);
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  .reg .b32 n;\n"
      "  setp.ge.s32 p, %2, 0;\n"
      "  selp.b32 n, 16, 0, p;\n"
      "  cp.async.cg.shared.global.L2::cache_hint.L2::128B [%0], [%1], 16, n, %3;\n"
      "}\n" ::"r"(dst),
      "l"(gmem_src), "r"(flag), "l"(pol));
}

// 4-byte cp.async (through L1: the small metadata of the next item).
__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* gmem_src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(cast_smem_ptr_to_uint(smem_dst)), "l"(gmem_src)
               : "memory");
}

// The pass's work items, as read by the main kernels: num_work <= work_items
// by construction (scan); clamped all the same. (< 2^31: sparse_prefill.cu.)
__device__ __forceinline__ int work_count(const PassView& v) {
  return int(min(int64_t(*v.num_work), v.work_items));
}

// ---- Per-item metadata and row setup, one warp at a time: warp w owns MMA
// rows [16 w, 16 w + 16) of every item. It copies the metadata of those
// rows of the next item (cp.async, while this item computes), and after its
// own epilogue it sets those rows up. Nothing else reads a warp's rows
// after the item's first barrier except the warp itself (the Q gather reads
// every row's qoff before that barrier, the masked tiles and the epilogue
// only the warp's own rows), so one buffer serves both items and no barrier
// beyond the item's first one is needed.

// The global values an item needs beyond its descriptor, copied one item
// ahead (fetch_meta): per MMA row r the entry of its query row r / G, and per
// warp the item's header.
struct ItemMeta {
  int32_t ent[kSparsePrefillRows];  // row r: entries[e_begin + r / G] (r / G < e_count): t_local * K + slot
  int32_t hdr[8][4];                // per warp: qe[b], qe[b + 1], len[b], kvb[b] (dense) or page_table[b, c] (paged)
};
enum { kHdrQe0 = 0, kHdrQe1 = 1, kHdrLen = 2, kHdrKv = 3 };

// The item's rows (written by row_setup, read by the Q gather, the masked
// tiles and the epilogue) and per-warp reductions of the visible keys.
struct RowSetup {
  int64_t qoff[kSparsePrefillRows];  // byte offset of the row's q, -1: padding
  int64_t out[kSparsePrefillRows];   // ((tl * Hq + h) * K + slot) * D: the row's partial O, -1: padding
  int32_t vis[kSparsePrefillRows];   // visible keys of the row from the block start, -1: padding
  uint32_t vis_max[8];               // warp w's rows: max(vis, 0)
  uint32_t vis_min[8];               // min(vis, 128), padding (-1) counting as 128
  // The warp-specialized kernel's producer gathers Q from these instead of
  // qoff (main_kernel_ws.cuh): the row's q offset in 16-byte units, bit 31
  // set for a padding row (offset 0 then: a valid address).
  uint32_t qsrc[kSparsePrefillRows];
  // ... and its epilogue stores the partial O and LSE from these: the row's
  // partial-O offset (out) in 16-byte units, bit 31 set for a padding row.
  uint32_t osrc[kSparsePrefillRows];
  int32_t kv[4];                     // warp-specialized kernel: K/V slot, release flag (main_kernel_ws.cuh)
};

// RowSetup::qsrc / osrc: a byte offset (< 2^35; < 0: padding) as a count of
// 16-byte units with bit 31 set for padding, and back to base + 16 units (a
// padding row gives base itself: a valid address; callers predicate on the
// sign bit). The address is one wide multiply-add: written in C++, the 64-bit
// product was split into shifts and masks (7 instructions a use).
__device__ __forceinline__ uint32_t units16(int64_t bytes) {
  return bytes >= 0 ? uint32_t(bytes >> 4) : 0x80000000u;
}
__device__ __forceinline__ uint64_t units16_addr(const void* base, uint32_t units) {
  uint64_t a;
  asm("mad.wide.u32 %0, %1, 16, %2;" : "=l"(a) : "r"(units & 0x7fffffffu), "l"(reinterpret_cast<uint64_t>(base)));
  return a;
}

// The item's K/V block: keys [key0, key0 + nvalid) are real (rows past nvalid
// are zero-filled; nvalid = 0 for an unresolvable page), key j of the block
// sits at element kv_base + j * row_stride of K (and V); row_bytes = the
// stride in bytes of the K/V dtype.
struct ItemKV {
  int64_t key0, kv_base;
  int nvalid;
  uint32_t row_bytes;
};
template <class Tr>
__device__ __forceinline__ ItemKV item_kv(const SparsePrefillParams& p, const WorkItem& it, const int32_t (&hdr)[4]) {
  constexpr int kD = Tr::kD;
  const int64_t Hkv = p.kv_heads;
  const int bs = int(p.block_size);
  ItemKV r;
  r.key0 = int64_t(it.c) * bs;
  const int64_t L = hdr[kHdrLen];
  const int nkeys = int(L - r.key0 < bs ? L - r.key0 : bs);  // >= 1 (c < ceil(L / bs))
  int64_t row_stride = 0;
  bool kv_ok = true;
  if (p.paged) {
    const int64_t page = hdr[kHdrKv];
    kv_ok = page >= 0 && page < p.num_pages;
    r.kv_base = ((kv_ok ? page : 0) * Hkv + it.g) * p.page_size * kD;
    row_stride = kD;
  } else {
    r.kv_base = ((int64_t(hdr[kHdrKv]) + r.key0) * Hkv + it.g) * kD;
    row_stride = Hkv * kD;
  }
  r.nvalid = kv_ok ? (nkeys > 0 ? nkeys : 0) : 0;
  constexpr int kKvBytes = Tr::kFp8 ? 1 : int(sizeof(typename Tr::Elem));
  r.row_bytes = uint32_t(row_stride) * kKvBytes;
  return r;
}

// Word i (< 4) of the item's header -> hdr[i] (cp.async): fetch_meta's
// lanes 16-19 and the ws producer's lanes 0-3 (fetch_meta_row).
__device__ __forceinline__ void fetch_hdr_word(const MainArgs& a, const WorkItem& it, int32_t (&hdr)[4], int i) {
  // (Selects, not a switch: no jump table in the middle of the item.)
  const bool page = i == kHdrKv && a.p.paged;
  const int32_t* base = i <= kHdrQe1 ? a.v.qe : i == kHdrLen ? a.v.len : page ? a.p.page_table : a.v.kvb;
  const int64_t idx = int64_t(it.b) * (page ? a.p.max_pages : 1) + (page ? it.c : int(i == kHdrQe1));
  cp_async_4(&hdr[i], base + idx);
}

// Warp w (all lanes): cp.async of its part of the item's metadata into m:
// lane l < 16 the entry of row 16 w + l (when its query row exists), lanes
// 16-19 the warp's copy of the header. Same indices as the loads the kernel
// made before the prefetch (work items come from the CSR build).
__device__ __forceinline__ void fetch_meta(const MainArgs& a, const WorkItem& it, ItemMeta& m, int tid) {
  const int w = tid >> 5, l = tid & 31;
  if (l < 16) {
    const int r = 16 * w + l;
    int pidx, hh;
    a.div_group(pidx, hh, r);
    if (pidx < it.e_count) cp_async_4(&m.ent[r], a.v.entries + it.e_begin + pidx);
  } else if (l < 20) {
    fetch_hdr_word(a, it, m.hdr[w], l - 16);
  }
}

// MMA row r = p * G + hh of the item: its Q offset in bytes and partial-O
// offset in elements (left at -1 for a padding row) and its visible keys from
// the block start (left at the caller's -1 for a padding row), from the item's
// metadata (m.ent, the warp's header copy hdr) and K/V block. Shared by
// row_setup and the ws producer's row_setup_row.
template <class Tr>
__device__ __forceinline__ void row_values(const MainArgs& a, const WorkItem& it, const ItemMeta& m,
                                           const int32_t (&hdr)[4], const ItemKV& kv, int r, int64_t& qoff,
                                           int64_t& out, int& vis) {
  constexpr int kD = Tr::kD;
  const SparsePrefillParams& p = a.p;
  const int64_t Hq = p.q_heads, K = p.topk;
  int pidx, hh;
  a.div_group(pidx, hh, r);
  if (pidx < it.e_count) {
    const int32_t e = m.ent[r];  // t_local * K + slot (>= 0 by construction)
    if (e >= 0) {
      int tl, slot;
      a.div_topk(tl, slot, e);
      const int64_t t = a.v.t0 + tl;
      const int64_t h = int64_t(it.g) * a.group + hh;
      qoff = (t * Hq + h) * (kD * int64_t(sizeof(typename Tr::Elem)));
      out = ((int64_t(tl) * Hq + h) * K + slot) * kD;
      if (p.causal) {
        const int64_t qb = hdr[kHdrQe0], ql = int64_t(hdr[kHdrQe1]) - qb, L = hdr[kHdrLen];
        const int64_t pos = L - ql + (t - qb);
        const int64_t lim = pos - kv.key0 + 1;
        vis = int(lim < 0 ? 0 : (lim > kv.nvalid ? kv.nvalid : lim));
      } else {
        vis = kv.nvalid;
      }
    }
  }
}

// Warp w (all lanes; lane l < 16 sets up row r = 16 w + l = p * G + hh):
// rows.{qoff, out, vis}[r] and the warp's reductions of vis, from the
// metadata fetched by the warp itself (waited for and __syncwarp'ed by the
// caller). The arithmetic of the previous in-loop row setup.
template <class Tr>
__device__ __forceinline__ void row_setup(const MainArgs& a, const WorkItem& it, const ItemMeta& m, RowSetup& rows,
                                          int tid) {
  const SparsePrefillParams& p = a.p;
  const int w = tid >> 5, l = tid & 31;
  const int32_t(&hdr)[4] = m.hdr[w];
  int vis = -1;
  if (l < 16) {
    const int r = 16 * w + l;
    const ItemKV kv = item_kv<Tr>(p, it, hdr);
    int64_t qoff = -1, out = -1;
    row_values<Tr>(a, it, m, hdr, kv, r, qoff, out, vis);
    rows.qoff[r] = qoff;
    rows.out[r] = out;
    rows.vis[r] = vis;
  }
  // (vis <= nvalid <= block_size <= 128; padding rows and lanes >= 16: -1 ->
  // 0 for the max, UINT_MAX -> 128 for the min.)
  const uint32_t vmax = __reduce_max_sync(0xffffffffu, uint32_t(max(vis, 0)));
  const uint32_t vmin = __reduce_min_sync(0xffffffffu, min(uint32_t(vis), 128u));
  if (l == 0) {
    rows.vis_max[w] = vmax;
    rows.vis_min[w] = vmin;
  }
}

// ---- wgmma (sm_90a).
#if MSA_SP_WGMMA
namespace gmma = cute::SM90::GMMA;
// S = Q K^T: m64 n{kN} k16, A (Q) and B (K) from shared memory, both K-major.
template <class Elem, int kN>
using WgS = std::conditional_t<
    std::is_same_v<Elem, cute::bfloat16_t>,
    std::conditional_t<
        kN == 32, gmma::MMA_64x32x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>,
        std::conditional_t<kN == 64, gmma::MMA_64x64x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>,
                           gmma::MMA_64x128x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>>>,
    std::conditional_t<
        kN == 32, gmma::MMA_64x32x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>,
        std::conditional_t<kN == 64, gmma::MMA_64x64x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>,
                           gmma::MMA_64x128x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>>>>;
// O += P V: m64 n{kD} k16, A (P) from registers, B (V) MN-major in shared memory.
template <class Elem, int kD>
using WgPV = std::conditional_t<
    std::is_same_v<Elem, cute::bfloat16_t>,
    std::conditional_t<kD == 128, gmma::MMA_64x128x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::MN>,
                       gmma::MMA_64x64x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::MN>>,
    std::conditional_t<kD == 128, gmma::MMA_64x128x16_F32F16F16_RS<gmma::Major::K, gmma::Major::MN>,
                       gmma::MMA_64x64x16_F32F16F16_RS<gmma::Major::K, gmma::Major::MN>>>;

template <class Op, class Acc, size_t... I>
__device__ __forceinline__ void wg_ss(uint64_t desc_a, uint64_t desc_b, Acc& d, bool accumulate,
                                      std::index_sequence<I...>) {
  Op::fma(desc_a, desc_b, d(I)..., accumulate ? gmma::ScaleOut::One : gmma::ScaleOut::Zero);
}
template <class Op, class PW, class Acc, size_t... I>
__device__ __forceinline__ void wg_rs(const PW& a, int a0, uint64_t desc_b, Acc& d, bool accumulate,
                                      std::index_sequence<I...>) {
  Op::fma(a(a0), a(a0 + 1), a(a0 + 2), a(a0 + 3), desc_b, d(I)...,
          accumulate ? gmma::ScaleOut::One : gmma::ScaleOut::Zero);
}
template <class T>
__device__ __forceinline__ void wg_fence_regs(T& t) {
#pragma unroll
  for (int i = 0; i < size(t); ++i) cute::warpgroup_fence_operand(t(i));
}
// Generic-proxy shared-memory writes (cp.async, st.shared) of this thread ->
// visible to the async proxy (wgmma) after the next barrier.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
#endif  // MSA_SP_WGMMA

// Shared-memory matrix descriptors (wgmma), 128-byte swizzle (layout type 1
// in bits 62-63): the start address in 16-byte units in bits 0-13, the
// leading byte offset (LBO) in bits 16-29, the stride byte offset (SBO) in
// bits 32-45. SBO: 8-row core-matrix groups 1024 bytes apart (8 rows of 128
// bytes) in all three operands. LBO: for the MN-major V^T, the 64-column
// panels of a V tile (kN * 128 bytes apart); K-major operands need none (1,
// as CuTe sets it). The descriptor is kept as its two 32-bit words: the high
// one is a constant, and a k-step / tile / panel moves the start by adding
// (bytes >> 4) to the low one (no carry: shared addresses are < 256 KB), as
// CUTLASS's descriptor iterator does. Kept uniform (warp-invariant inputs
// only), the words live in uniform registers, as HGMMA wants them.
constexpr uint32_t kWgSbo = 1024;
__host__ __device__ constexpr uint32_t wg_desc_hi() { return (1u << 30) | (kWgSbo >> 4); }
__host__ __device__ constexpr uint32_t wg_desc_lo(uint32_t addr, uint32_t lbo) { return ((lbo >> 4) << 16) | (addr >> 4); }
__host__ __device__ constexpr uint64_t wg_desc(uint32_t lo, uint32_t off_bytes) {
  return (uint64_t(wg_desc_hi()) << 32) | uint64_t(lo + (off_bytes >> 4));
}
constexpr uint32_t kWgLboK = 16;  // K-major: unused (field value 1)
template <class Tr>  // (one 64-column panel at D = 64: unused, 0 as CuTe sets it)
constexpr uint32_t kWgLboV = Tr::kD > 64 ? Tr::kN * 128 : 0;
// Byte offsets, from the Q rows of a warpgroup / from a K tile, of k-step ks
// (16 columns of D): 64-column panels, 32-byte steps inside a 128-byte
// swizzled row (the swizzle follows the absolute address, so the stepped
// start stays consistent with the layout); from a V tile, of k-step ks (16
// keys, 2 core-matrix groups).
template <class Tr>
__host__ __device__ constexpr uint32_t wg_q_off(int ks) {
  return uint32_t((ks / 4) * Tr::kM * 128 + (ks % 4) * 32);
}
template <class Tr>
__host__ __device__ constexpr uint32_t wg_k_off(int ks) {
  return uint32_t((ks / 4) * Tr::kN * 128 + (ks % 4) * 32);
}
__host__ __device__ constexpr uint32_t wg_v_off(int ks) { return uint32_t(ks * 16 * 128); }
// Tile n of the K / V region and the Q rows of warpgroup g (bytes).
template <class Tr>
__host__ __device__ constexpr uint32_t wg_tile_off(int n) {
  return uint32_t(n * Tr::kN * Tr::kD * 2);
}
__host__ __device__ constexpr uint32_t wg_rows_off(int g) { return uint32_t(g * 64 * 128); }

#if MSA_SP_WGMMA
// The two GEMMs of a key tile on wgmma, for one warpgroup, shared by
// main_kernel<Tr, true> and the warp-specialized consumers.
// S = Q K^T: the warpgroup's 64 Q rows at shared address q_rows, the tile's
// K at k_tile; issued and committed, not waited for.
template <class Tr, class AccS>
__device__ __forceinline__ void wg_issue_s(uint32_t q_rows, uint32_t k_tile, AccS& acc_s) {
  const uint32_t q_lo = wg_desc_lo(q_rows, kWgLboK);
  const uint32_t k_lo = wg_desc_lo(k_tile, kWgLboK);
  wg_fence_regs(acc_s);
  cute::warpgroup_arrive();
#pragma unroll
  for (int ks = 0; ks < Tr::kD / 16; ++ks) {
    wg_ss<WgS<typename Tr::Elem, Tr::kN>>(wg_desc(q_lo, wg_q_off<Tr>(ks)), wg_desc(k_lo, wg_k_off<Tr>(ks)), acc_s,
                                          ks > 0, std::make_index_sequence<Tr::kN / 2>{});
  }
  cute::warpgroup_commit_batch();
}
// S = Q K^T, waited for together with the previous tile's P V.
template <class Tr, class AccS, class AccO>
__device__ __forceinline__ void wg_s_gemm(uint32_t q_rows, uint32_t k_tile, AccS& acc_s, AccO& acc_o) {
  wg_issue_s<Tr>(q_rows, k_tile, acc_s);
  cute::warpgroup_wait<0>();  // S(n) and P V(n - 1)
  wg_fence_regs(acc_s);
  wg_fence_regs(acc_o);
}
// O += P V (accumulate = false: O = P V): P from registers (rP, the A
// fragments), the tile's V at v_tile; issued and committed, waited for with
// the next tile's S (or before the epilogue).
template <class Tr, class AccP, class AccO>
__device__ __forceinline__ void wg_issue_pv(AccP& rP, uint32_t v_tile, AccO& acc_o, bool accumulate) {
  Tensor pw = recast<uint32_t>(rP);  // k-step ks: words 4 ks .. 4 ks + 3 (the A fragment)
  const uint32_t v_lo = wg_desc_lo(v_tile, kWgLboV<Tr>);
  wg_fence_regs(pw);
  wg_fence_regs(acc_o);
  cute::warpgroup_arrive();
#pragma unroll
  for (int ks = 0; ks < Tr::kN / 16; ++ks) {
    wg_rs<WgPV<typename Tr::Elem, Tr::kD>>(pw, 4 * ks, wg_desc(v_lo, wg_v_off(ks)), acc_o, accumulate || ks > 0,
                                           std::make_index_sequence<Tr::kD / 2>{});
  }
  cute::warpgroup_commit_batch();
}
#endif  // MSA_SP_WGMMA

// Visible-key range of warpgroup g's 64 rows (its four warps' reductions),
// by REDUX: uniform registers, so that tile counts and descriptors stay uniform.
__device__ __forceinline__ void wg_vis_range(const RowSetup& rows, uint32_t g, uint32_t& vis_max,
                                             uint32_t& vis_min) {
  const int w0 = int(g) * 4;  // warpgroup g: warps 4 g .. 4 g + 3
  vis_max = __reduce_max_sync(0xffffffffu, max(max(rows.vis_max[w0], rows.vis_max[w0 + 1]),
                                               max(rows.vis_max[w0 + 2], rows.vis_max[w0 + 3])));
  vis_min = __reduce_min_sync(0xffffffffu, min(min(rows.vis_min[w0], rows.vis_min[w0 + 1]),
                                               min(rows.vis_min[w0 + 2], rows.vis_min[w0 + 3])));
}

// K or V rows [0, 64) (and [64, 128) when the block has 128 keys) of the
// block -> shared memory (the K/V layout of Traits); rows >= nvalid are
// zero-filled. src points at key 0 of the block (this KV head), row_bytes is
// the byte distance between keys. Thread t copies chunk t % kCpr of rows
// r0 + i * kRowStep (r0 = t / kCpr): its smem offsets differ by compile-time
// constants and its global offsets by multiples of one 32-bit product, so each
// 16-byte copy costs a handful of instructions (no per-copy swizzle or 64-bit
// index math).
//
// load_kv_cp: the cp.async (same-dtype) part, for "thread" t of Tr::kThreads
// (the warp-specialized kernel's producer threads call it for t and
// t + 128: two of the 256 threads' shares each).
template <class Tr>
__device__ __forceinline__ void load_kv_cp(const uint8_t* src, uint32_t row_bytes, int nvalid, bool full128,
                                           typename Tr::Elem* dst, uint32_t t) {
  using Elem = typename Tr::Elem;
  static_assert(!Tr::kFp8, "fp8 K/V are converted through registers (load_kv)");
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
}
template <class Tr>
__device__ __forceinline__ void load_kv(const uint8_t* src, uint32_t row_bytes, int nvalid, bool full128,
                                        typename Tr::Elem* dst) {
  using Elem = typename Tr::Elem;
  const uint32_t t = threadIdx.x + opaque_zero();
  if constexpr (!Tr::kFp8) {
    load_kv_cp<Tr>(src, row_bytes, nvalid, full128, dst, t);
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
// gather_q_t: for "thread" t of Tr::kThreads (gather_q: t = threadIdx.x; the
// warp-specialized kernel's producer threads call it for t and t + 128).
template <class Tr>
__device__ __forceinline__ void gather_q_t(const void* q, const int64_t* s_qoff, typename Tr::Elem* q_smem,
                                           uint32_t t) {
  constexpr int kCpr = Tr::kCpr, kStep = Tr::kRowStep;
  static_assert(kStep % 8 == 0, "row step must keep the swizzle phase");
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
__device__ __forceinline__ void gather_q(const void* q, const int64_t* s_qoff, typename Tr::Elem* q_smem) {
  gather_q_t<Tr>(q, s_qoff, q_smem, threadIdx.x + opaque_zero());
}

// The key-tile driver of one item, shared by main_kernel and the ws
// consumers (what differs between them is in the callables): the first tile
// (its S overlapping the V copy), or no_tile() for a warp / warpgroup
// without one; wait_v() until V is visible; the first P V (run even without
// a tile: P = 0 and V = 0 there give O = +0); then two copies of the tile
// loop, the tiles that need no mask (all of them unless the block is cut by
// the causal diagonal or by nvalid), then the rest, so that the common loop
// carries no select or compare per element.
template <class SGemm, class Softmax, class PV, class NoTile, class WaitV>
__device__ __forceinline__ void item_tiles(int tiles, int full_tiles, SGemm&& s_gemm, Softmax&& softmax, PV&& pv,
                                           NoTile&& no_tile, WaitV&& wait_v) {
  if (tiles > 0) {
    s_gemm(0);
    softmax(0, std::true_type{}, full_tiles == 0);
  } else {
    no_tile();
  }
  wait_v();
  pv(0, false);
  int n = 1;
  for (; n < tiles && n < full_tiles; ++n) {
    s_gemm(n);
    softmax(n, std::false_type{}, false);
    pv(n, true);
  }
  for (; n < tiles; ++n) {
    s_gemm(n);
    softmax(n, std::false_type{}, true);
    pv(n, true);
  }
}

// kWg: the sm_90a wgmma tile loop (per-warpgroup tile counts); false, or any
// target other than sm_90a: the mma.sync tile loop (per-warp tile counts).
// Both instances exist so that the host can select the mma.sync one
// (MSA_JAX_SPARSE_PREFILL_KERNEL=sync, or the older MSA_JAX_SPARSE_PREFILL_MMA_SYNC=1) for
// A/B runs and bit comparisons. (main_kernel_ws.cuh: the warp-specialized kernel.)
template <class Tr, bool kWg>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) main_kernel(const __grid_constant__ MainArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kM = Tr::kM, kN = Tr::kN, kD = Tr::kD;
  constexpr bool kUseWg = kWg && MSA_SP_WGMMA;
  extern __shared__ __align__(1024) uint8_t smem_[];
  __shared__ RowSetup s_rows;     // this item's rows (each warp's replaced by the warp after its epilogue)
  __shared__ ItemMeta s_meta;     // this item's metadata until its K/Q barrier, then the next one's (per warp)
  __shared__ WorkItem s_item[2];  // this item's descriptor and the next one's

  const SparsePrefillParams& p = a.p;
  const PassView& v = a.v;
  const int tid = threadIdx.x;
  static_assert(Tr::kSmemAlign == 1024, "the __align__ of smem_");
#if MSA_SP_WGMMA
  // (The wgmma descriptors need it; a misplaced window traps instead of
  // computing garbage. ptxas folds this for a compile-time offset.)
  if constexpr (kUseWg) {
    if (cast_smem_ptr_to_uint(smem_) & uint32_t(Tr::kSmemAlign - 1)) __trap();
  }
#endif
  Elem* q_smem = reinterpret_cast<Elem*>(smem_);
  Elem* k_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes);
  Elem* v_smem = reinterpret_cast<Elem*>(smem_ + Tr::kSmemQBytes + Tr::kSmemKVBytes);
  Tensor sQ = make_tensor(make_smem_ptr(q_smem), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(k_smem), typename Tr::SmemLayoutKV{});

  const int num_work = work_count(v);
  const int stride = int(gridDim.x);

  typename Tr::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  // Warp w owns MMA rows [16 w, 16 w + 16) (one atom: MMA_M == 1). In the
  // m16n8 accumulator layout the thread's two rows are 16 w + lane / 4 (values
  // 0, 1) and + 8 (values 2, 3), at columns 8 j + 2 (lane % 4) + {0, 1} of
  // n-atom j (checked on the host against CuTe's partition_C). The wgmma
  // m64nN accumulators of warpgroup g = w / 4 have the same per-warp layout
  // (warp w % 4 of the warpgroup holds rows 16 (w % 4) of its 64). The
  // epilogue recomputes the rows (my_row0 below) per item.
  //
  // This thread's warpgroup, in a uniform register (REDUX).
  const uint32_t wg_u = __reduce_max_sync(0xffffffffu, uint32_t(tid >> 7));

  // Register views of the ldmatrix destinations (CuTe's retiling of the MMA
  // fragments); the source addresses are computed by hand (ldsm_addrs).
  auto smem_thr_copy_q = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, tiled_mma).get_thread_slice(tid);
  auto smem_thr_copy_k = make_tiled_copy_B(typename Tr::SmemCopyAtom{}, tiled_mma).get_thread_slice(tid);
  auto smem_thr_copy_v = make_tiled_copy_B(typename Tr::SmemCopyAtomT{}, tiled_mma).get_thread_slice(tid);

  // Prologue: the first item's descriptor, metadata and row setup (every
  // later item gets them from the previous item: s_item via the K group,
  // each warp's part of s_meta via the metadata group, which the warp uses
  // for its rows of s_rows after its epilogue; published by the item's first
  // barrier).
  if (tid == 0 && int(blockIdx.x) < num_work) s_item[0] = v.work[blockIdx.x];
  __syncthreads();
  if (int(blockIdx.x) < num_work) {
    fetch_meta(a, s_item[0], s_meta, tid);
    cute::cp_async_fence();
    cute::cp_async_wait<0>();
    __syncwarp();
    row_setup<Tr>(a, s_item[0], s_meta, s_rows, tid);
  }
  int buf = 0;
  for (int64_t w = blockIdx.x; w < num_work; w += stride, buf ^= 1) {
    __syncthreads();  // the previous item is done with shared memory; this item's rows published

    const WorkItem it = s_item[buf];
    // (This warp's index, recomputed per item: not held in a register across
    // the tile loop.)
    const int warp = (int(threadIdx.x) + (int(w) & a.zero)) >> 5;
    const ItemKV kv = item_kv<Tr>(p, it, s_meta.hdr[warp]);
    const RowSetup& rows = s_rows;
    const bool has_next = w + stride < num_work;
    constexpr int kKvBytes = Tr::kFp8 ? 1 : int(sizeof(Elem));
    const bool full128 = p.block_size > 64;

    // ---- K, then the Q rows (gathered; padding rows zero-filled), then V,
    // back to back (rows past nvalid zero-filled). The next item's descriptor
    // joins the K group.
    load_kv<Tr>(static_cast<const uint8_t*>(p.k) + kv.kv_base * kKvBytes, kv.row_bytes, kv.nvalid, full128, k_smem);
    if (tid < 2 && has_next) {
      SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(
          reinterpret_cast<const cute::uint128_t*>(v.work + (w + stride))[tid],
          reinterpret_cast<cute::uint128_t*>(&s_item[buf ^ 1])[tid]);
    }
    cute::cp_async_fence();
    gather_q<Tr>(p.q, rows.qoff, q_smem);
    cute::cp_async_fence();
    load_kv<Tr>(static_cast<const uint8_t*>(p.v) + kv.kv_base * kKvBytes, kv.row_bytes, kv.nvalid, full128, v_smem);
    cute::cp_async_fence();

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

    // S = Q K_n^T -> acc_s (mma.sync: ldmatrix + HMMA; wgmma: issued, then
    // waited for, together with the previous tile's P V).
    auto s_gemm = [&](int n) {
      if constexpr (kUseWg) {
#if MSA_SP_WGMMA
        // (Uniform: smem bases, the warpgroup from a REDUX, n.)
        wg_s_gemm<Tr>(cast_smem_ptr_to_uint(q_smem) + wg_rows_off(wg_u),
                      cast_smem_ptr_to_uint(k_smem) + wg_tile_off<Tr>(n), acc_s, acc_o);
#endif
      } else {
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
      }
    };

    // Scale, mask (`masked`: only tiles past full_tiles), online softmax (log2
    // domain), P -> rP (softmax.cuh; kFirst: tile 0, no O rescale).
    auto softmax = [&](int n, auto first, bool masked) {
      online_softmax_step<kN>(acc_s, rP, acc_o, row_max, row_sum, first, masked, a.scale_log2, rows.vis,
                              int(threadIdx.x), n, a.zero);
    };
    // O += P V_n (accumulate = false: O = P V_n; mma.sync: C = 0, folded to RZ).
    auto pv = [&](int n, bool accumulate) {
      if constexpr (kUseWg) {
#if MSA_SP_WGMMA
        wg_issue_pv<Tr>(rP, cast_smem_ptr_to_uint(v_smem) + wg_tile_off<Tr>(n), acc_o, accumulate);
#endif
      } else {
        if (!accumulate) clear(acc_o);
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
      }
    };
    // After a cp.async wait: what this thread's copies (and fp8 stores) wrote
    // -> visible to every thread (and, for wgmma, to the async proxy: the
    // PTX ISA asks for fence.proxy.async between generic writes of shared
    // memory and wgmma reading it).
    auto publish_smem = [&]() {
#if MSA_SP_WGMMA
      if constexpr (kUseWg) fence_proxy_async_smem();
#endif
      __syncthreads();
    };

    cute::cp_async_wait<1>();  // K and Q landed (V may be in flight)
    publish_smem();
    // The next item's metadata (this warp's part): its descriptor landed
    // with the K group; this item's metadata was last read before the
    // barrier above.
    if (has_next) fetch_meta(a, s_item[buf ^ 1], s_meta, int(threadIdx.x) + (int(w) & a.zero));
    cute::cp_async_fence();  // (every thread: the group count stays uniform)
    // Key tiles: those holding a visible key of one of the warp's 16 rows
    // (mma.sync) or of the warpgroup's 64 rows (wgmma: its MMAs are
    // collective). Padding rows have vis = -1; a warp (warpgroup) of padding
    // rows computes nothing. Tiles past a row's last visible key would only
    // add exact zeros (p = 0, corr = 1), so skipping them changes no result.
    // The leading tiles in which every real row sees every key need no mask
    // (padding rows do not count: their results are never stored).
    // (vis <= nvalid <= block_size, so the tile counts are <= block_size / kN.
    // REDUX: the same value in every lane, but in a uniform register, so that
    // the loop bounds, the loop counter and, for wgmma, the descriptors built
    // from it stay uniform. Read after the metadata copies, whose branches
    // would otherwise move the counts into vector registers; each warp's rows
    // are rewritten only after the V barrier below.)
    uint32_t vis_max, vis_min;
    if constexpr (kUseWg) {
      wg_vis_range(rows, wg_u, vis_max, vis_min);
    } else {
      vis_max = __reduce_max_sync(0xffffffffu, rows.vis_max[warp]);
      vis_min = __reduce_min_sync(0xffffffffu, rows.vis_min[warp]);
    }
    const int tiles = int((vis_max + kN - 1) / kN), full_tiles = int(vis_min / kN);

    // A warp (warpgroup) with no tile holds padding rows and rows with
    // nvalid = 0 (a valid row sees >= 1 key of a block it selected, csr
    // mark): P = 0 and V = 0 there, so the unconditional first P V gives
    // O = +0, as before. (Running it costs such warps one tile of P V;
    // branching around it made the compiler materialise 64 zeros for O on
    // every item.)
    item_tiles(
        tiles, full_tiles, s_gemm, softmax, pv, [&] { clear(rP); },
        [&] {
          cute::cp_async_wait<1>();  // V landed (the metadata group may be in flight)
          publish_smem();
        });
#if MSA_SP_WGMMA
    if constexpr (kUseWg) {
      cute::warpgroup_wait<0>();  // the last P V
      wg_fence_regs(acc_o);
    }
#endif

    // ---- Epilogue (epilogue.cuh; per warp, no CTA barrier): O / l -> the
    // warp's own 16 rows of the Q tile (only this warp read them: the
    // ldmatrix rows of the warp, or the A rows of the warp's part of each
    // wgmma, all completed) -> 16-byte stores into the partial O; lse ->
    // partial LSE.
    // (row_lse is the caller's: an array local to the inlined epilogue
    // reordered NVVM's phis and so the SASS.)
    float row_lse[2];
    softmax_finalize(row_max, row_sum, a.out_scale, row_lse);  // row_sum: now the O scale
    epilogue<Tr>(acc_o, row_sum, row_lse, q_smem, rows.out, v, int(threadIdx.x), w, a.zero);

    // ---- The next item's rows of this warp (after the warp's epilogue, the
    // last reader of its rows): its metadata landed (each lane waits for its
    // own copies, __syncwarp shares them); published by the next item's
    // first barrier. (The thread index, here and in the metadata copy, is
    // threadIdx.x plus a zero ptxas cannot fold, a different one in each
    // place: the lane / warp / row arithmetic is redone there instead of
    // being shared and held in registers across the tile loop.)
    if (has_next) {
      cute::cp_async_wait<0>();
      __syncwarp();
      row_setup<Tr>(a, s_item[buf ^ 1], s_meta, s_rows, int(threadIdx.x) + (int(w >> 1) & a.zero));
    }
  }
}

}  // namespace msa::cuda::sparse_prefill

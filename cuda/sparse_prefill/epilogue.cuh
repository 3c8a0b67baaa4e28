// Epilogue of the sparse-prefill main kernels (main_kernel.cuh, both tile
// loops; main_kernel_ws.cuh's consumers use epilogue_ws.cuh, which writes the
// same values to the same places): per warp, no CTA barrier, O / l (times
// v_scale) -> the warp's own 16 rows of the Q tile in shared memory ->
// 16-byte stores into the partial O [Tc, Hq, K, D]; lse = m + log l (natural
// log) -> the partial LSE. The index maps (o_frag_*, ORowMap) are checked on
// the host against CuTe's layouts.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/tensor.hpp>

#include "cuda/sparse_prefill/internal.h"
#include "cuda/sparse_prefill/softmax.cuh"

namespace msa::cuda::sparse_prefill {

// An int NVVM cannot see through (0): addresses built from it are recomputed
// where they are used instead of being hoisted out of the work loop by the
// front end and kept live. (ptxas does see through the mov; inside the tile
// loop `n & MainArgs::zero` plays this role.)
__device__ __forceinline__ int opaque_zero() {
  int z;
  asm volatile("mov.b32 %0, 0;" : "=r"(z));
  return z;
}

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

// 16-byte global store when flag >= 0 (a predicated store: no branch and
// reconvergence per row in the epilogue). Streaming (.cs: evict-first in L2):
// the partial O is read back only by the combine, after the whole pass has
// written ~2 GB, so its lines would only push the pass's Q rows and K/V
// blocks (reused by later items) out of L2.
__device__ __forceinline__ void st_global_16_if(void* gmem_dst, const uint4& val, int flag) {
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ge.s32 p, %5, 0;\n"
      "  @p st.global.cs.v4.b32 [%0], {%1, %2, %3, %4};\n"
      "}\n" ::"l"(gmem_dst),
      "r"(val.x), "r"(val.y), "r"(val.z), "r"(val.w), "r"(flag)
      : "memory");
}

// 4-byte global store of x when flag >= 0, predicated like st_global_16_if
// (epilogue_ws.cuh's LSE stores; the LSEs are few, so no cache hint).
__device__ __forceinline__ void st_global_4_if(float* gmem_dst, float x, int flag) {
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ge.s32 p, %2, 0;\n"
      "  @p st.global.f32 [%0], %1;\n"
      "}\n" ::"l"(gmem_dst),
      "f"(x), "r"(flag)
      : "memory");
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

// The epilogue of one item, after the last P V completed (so every wgmma /
// ldmatrix that read the warp's Q rows is done) and softmax_finalize:
// O * o_scale (out_scale / l) -> the warp's own rows of q_smem (the item's Q
// tile: only this warp read them), row_lse -> v.part_lse, then the rows ->
// v.part_o. row_out: the item's output offsets per MMA row (RowSetup::out, < 0:
// padding); tid: the thread's index among the kernel's 256 MMA threads (warp
// tid / 32 owns MMA rows [16 (tid / 32), + 16)); w, zero: the work item's
// index and MainArgs::zero, for a per-item zero ptxas cannot fold (w & zero,
// formed here: made by the caller, it moved in NVVM's output). The thread's
// rows are recomputed from tid here (behind zeros the compilers cannot fold),
// not held in registers across the tile loop.
template <class Tr, class AccO>
__device__ __forceinline__ void epilogue(const AccO& acc_o, const float (&o_scale)[2], const float (&row_lse)[2],
                                         typename Tr::Elem* q_smem, const int64_t* row_out, const PassView& v,
                                         int tid, int64_t w, int zero) {
  using Elem = typename Tr::Elem;
  constexpr int kD = Tr::kD;
  static_assert(decltype(cute::size(acc_o))::value == kD / 2, "O holds the thread's D / 2 values");
  __syncwarp();  // every lane of the warp is done reading its Q rows
  {
    const uint32_t base = o_frag_base<Tr>(uint32_t(tid) + opaque_zero());
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < kD / 8; ++j) {
        *reinterpret_cast<uint32_t*>(q_smem + o_frag_off<Tr>(base, h, j)) =
            pack2<Elem>(acc_o(frag_idx(h, 0, j)) * o_scale[h], acc_o(frag_idx(h, 1, j)) * o_scale[h]);
      }
    }
  }
  // (The thread's rows 16 w + lane / 4 and + 8.)
  const int et = tid + (int(w) & zero), my_row0 = (et >> 5) * 16 + ((et & 31) >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if ((et & 3) == 0) {
      const int64_t out = row_out[my_row0 + 8 * h];
      if (out >= 0) v.part_lse[out / kD] = row_lse[h];
    }
  }
  __syncwarp();
  {
    using Map = ORowMap<Tr>;
    const uint32_t t = uint32_t(tid) + opaque_zero(), row = Map::row(t), base = Map::base(t);
    Elem* po = static_cast<Elem*>(v.part_o) + Map::chunk(t) * 8;
#pragma unroll
    for (int i = 0; i < Map::kChunks; ++i) {
      const int64_t out = row_out[row + Map::kRs * i];  // < 0: padding row (not stored)
      const uint4 val = *reinterpret_cast<const uint4*>(q_smem + Map::off(base, i));
      st_global_16_if(po + out, val, int(out >> 32));
    }
  }
}

}  // namespace msa::cuda::sparse_prefill

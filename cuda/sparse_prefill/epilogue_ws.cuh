// The warp-specialized main kernel's epilogue (main_kernel_ws.cuh, sm_90a
// only: stmatrix): what epilogue() (epilogue.cuh) writes, with fewer
// instructions on the consumers' serial path.
#pragma once

#include <cstdint>

#include <cute/arch/copy_sm90.hpp>

#include "cuda/sparse_prefill/epilogue.cuh"  // st_global_16_if / _4_if, pack2, opaque_zero, ORowMap
#include "cuda/sparse_prefill/main_kernel.cuh"  // RowSetup::osrc, units16_addr

namespace msa::cuda::sparse_prefill {

// The warp-specialized kernel's epilogue (main_kernel_ws.cuh): the same
// values to the same places as epilogue(), with fewer instructions on the
// consumers' serial path (each item ends with it):
// * O is staged with stmatrix (8 x4 stores per thread instead of 32 4-byte
//   ones): matrices (0, j), (1, j), (0, j + 1), (1, j + 1) (h, n-atom) of the
//   m64 accumulator fragment (thread l holds row l / 4, columns 2 (l % 4)
//   and + 1 of each 8 x 8 matrix: stmatrix's fragment), lane l addressing
//   row 16 w + 8 ((l / 8) % 2) + l % 8, chunk j + l / 16 of the swizzled tile;
// * the rows' partial-O offsets are 32-bit counts of 16-byte units
//   (RowSetup::osrc, bit 31: padding) and every store is predicated, so
//   neither the LSE stores nor the O stores branch.
template <class Tr, class AccO>
__device__ __forceinline__ void epilogue_ws(const AccO& acc_o, const float (&o_scale)[2], const float (&row_lse)[2],
                                            typename Tr::Elem* q_smem, const uint32_t* row_osrc, const PassView& v,
                                            int tid) {
  using Elem = typename Tr::Elem;
  constexpr int kD = Tr::kD;
  // 16-byte units per partial-O row: the LSE index of a row is osrc / kUnits.
  constexpr int kUnits = kD * int(sizeof(Elem)) / 16;
  static_assert((kUnits & (kUnits - 1)) == 0, "a power of two");
  static_assert(decltype(cute::size(acc_o))::value == kD / 2, "O holds the thread's D / 2 values");
  const int lane = tid & 31, warp = tid >> 5;
  // The LSE rows' offsets first (their loads overlap the staging below).
  const int r_lse = warp * 16 + (lane >> 2);
  const uint32_t lse0 = row_osrc[r_lse], lse1 = row_osrc[r_lse + 8];
  __syncwarp();  // every lane of the warp is done reading its Q rows
  {
    // Lane's row 16 w + 8 h + l % 8 (h = (l / 8) % 2) and chunk parity l / 16,
    // in the swizzled layout: one base, the chunk j % 8 XORed in per j.
    const uint32_t row = uint32_t(warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) + uint32_t(opaque_zero());
    const uint32_t base = (row * 64 + (row & 7) * 8) ^ uint32_t((lane >> 4) * 8);
#pragma unroll
    for (int j = 0; j < kD / 8; j += 2) {
      const uint32_t off = (base ^ uint32_t(8 * (j % 8))) + uint32_t((j / 8) * (Tr::kM * 64));
      uint32_t r[4];
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int h = m & 1, jj = j + (m >> 1);
        r[m] = pack2<Elem>(acc_o(frag_idx(h, 0, jj)) * o_scale[h], acc_o(frag_idx(h, 1, jj)) * o_scale[h]);
      }
      cute::SM90_U32x4_STSM_N::copy(r[0], r[1], r[2], r[3], *reinterpret_cast<cute::uint128_t*>(q_smem + off));
    }
  }
  // LSEs: lane 4 i stores rows 16 w + i and + 8 (both quads' lanes hold them).
  const int quad_lead = (lane & 3) == 0 ? 0 : -1;
  st_global_4_if(v.part_lse + (lse0 & 0x7fffffffu) / kUnits, row_lse[0], int(lse0) | quad_lead);
  st_global_4_if(v.part_lse + (lse1 & 0x7fffffffu) / kUnits, row_lse[1], int(lse1) | quad_lead);
  __syncwarp();
  {
    using Map = ORowMap<Tr>;
    const uint32_t t = uint32_t(tid) + opaque_zero(), row = Map::row(t), base = Map::base(t);
    const uint8_t* po = static_cast<const uint8_t*>(v.part_o) + Map::chunk(t) * 16;
    uint32_t src[Map::kChunks];  // all first: the stores then issue back to back
#pragma unroll
    for (int i = 0; i < Map::kChunks; ++i) src[i] = row_osrc[row + Map::kRs * i];
#pragma unroll
    for (int i = 0; i < Map::kChunks; ++i) {
      const uint4 val = *reinterpret_cast<const uint4*>(q_smem + Map::off(base, i));
      st_global_16_if(reinterpret_cast<void*>(units16_addr(po, src[i])), val, int(src[i]));
    }
  }
}

}  // namespace msa::cuda::sparse_prefill

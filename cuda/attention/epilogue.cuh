// Epilogue pieces of the attention kernels: O fragments -> shared memory ->
// coalesced 16-byte global stores (flattened GQA rows), LSE per row, and the
// per-block score maxima (flushed at block boundaries, -inf fill for blocks
// a tile never computes).
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "cuda/attention/mainloop.cuh"

namespace msa::cuda::attention {

using namespace cute;

// Flattened tile row (token, group head) -> index of (token, query head) in
// [T, Hq] (fits int32: the launcher checks T * Hq < 2^31).
__device__ __forceinline__ int row_index(int64_t row, int group, int g, int q_heads) {
  const uint32_t tok = uint32_t(row) / uint32_t(group), hh = uint32_t(row) % uint32_t(group);
  return int(tok) * q_heads + g * group + int(hh);
}

// Normalised O accumulators (4, MMA_M, MMA_D) -> Elem in sO (the Q tile's
// storage; the caller synchronises before: every warp done with sQ).
template <class Tr, class AccO, class STensor, class TiledMma>
__device__ __forceinline__ void o_to_smem(const AccO& acc_o, STensor& sO, const TiledMma& mma) {
  using Elem = typename Tr::Elem;
  auto thr_mma = mma.get_thread_slice(threadIdx.x);
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<Tr::kBlockM>, Int<Tr::kHeadDim>>{}));
  constexpr int kMmaM = decltype(size<1>(acc_o))::value;
  constexpr int kMmaD = decltype(size<2>(acc_o))::value;
#pragma unroll
  for (int m = 0; m < kMmaM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < kMmaD; ++j) {
        const int row = get<0>(tOcO(2 * h, m, j)), col = get<1>(tOcO(2 * h, m, j));
        *reinterpret_cast<uint32_t*>(&sO(row, col)) =
            pack2(acc_o(2 * h, m, j), acc_o(2 * h + 1, m, j), static_cast<Elem*>(nullptr));
      }
}

// sO rows [0, row_end - row_begin) -> o (16-byte stores; the caller
// synchronises after o_to_smem).
template <class Tr, class STensor>
__device__ __forceinline__ void smem_to_o(const STensor& sO, typename Tr::Elem* __restrict__ o, int64_t row_begin,
                                          int64_t row_end, int group, int g, int q_heads) {
  constexpr int kCpr = Tr::kQChunksPerRow;
  constexpr int kRowStep = Tr::kQRowStep;
  const int tid = threadIdx.x;
  const int cc = tid % kCpr, r0 = tid / kCpr;
#pragma unroll
  for (int i = 0; i < Tr::kQChunksPerThread; ++i) {
    const int r = r0 + i * kRowStep;
    const int64_t row = row_begin + r;
    if (row < row_end) {
      const int64_t idx = row_index(row, group, g, q_heads);
      *reinterpret_cast<uint4*>(o + idx * Tr::kHeadDim + cc * 8) = *reinterpret_cast<const uint4*>(&sO(r, cc * 8));
    }
  }
}

// -inf for block maxima of tile rows [row_begin, row_end) x blocks
// [c_begin, num_blocks): a warp per row, lanes along the (contiguous) blocks.
template <int kThreads>
__device__ __forceinline__ void fill_block_max(float* __restrict__ bm, int64_t num_blocks, int64_t row_begin,
                                               int64_t row_end, int64_t c_begin, int group, int g, int q_heads) {
  if (c_begin >= num_blocks) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t r = row_begin + warp; r < row_end; r += kThreads / 32) {
    float* out = bm + int64_t(row_index(r, group, g, q_heads)) * num_blocks;
    for (int64_t c = c_begin + lane; c < num_blocks; c += 32) out[c] = -INFINITY;
  }
}

}  // namespace msa::cuda::attention

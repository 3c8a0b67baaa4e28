// Mainloop building blocks of the FlashAttention-2 style kernels: the Q tile
// load (flattened GQA rows), S = Q K^T with both operands from shared memory
// (ldmatrix of k-slice i+1 overlapping the MMAs of slice i), P conversion
// (fp32 accumulators -> Elem A-operand registers, no shared-memory round
// trip) and O += P V with V^T read by transposed ldmatrix.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/tensor.hpp>

namespace msa::cuda::attention {

using namespace cute;

// acc += A B^T, A and B read from shared memory slice by slice (k mode 2).
template <class Acc, class RA, class RB, class SA, class SB, class TiledMma, class CopyA, class CopyB, class ThrA,
          class ThrB>
__device__ __forceinline__ void gemm_ss(Acc& acc, RA& tCrA, RB& tCrB, const SA& tCsA, const SB& tCsB,
                                        const TiledMma& mma, const CopyA& copy_a, const CopyB& copy_b,
                                        const ThrA& thr_a, const ThrB& thr_b) {
  Tensor tCrA_view = thr_a.retile_D(tCrA);
  Tensor tCrB_view = thr_b.retile_D(tCrB);
  // Slice by slice, no register double buffering (the d128 kernel needs its
  // registers for the accumulators); ptxas hoists the ldmatrix of the next
  // slice as far as registers allow, and the other CTA's warps on the SM
  // cover the rest.
#pragma unroll
  for (int i = 0; i < size<2>(tCrA); ++i) {
    cute::copy(copy_a, tCsA(_, _, i), tCrA_view(_, _, i));
    cute::copy(copy_b, tCsB(_, _, i), tCrB_view(_, _, i));
    cute::gemm(mma, tCrA(_, _, i), tCrB(_, _, i), acc);
  }
}

// acc += A B^T, A already in registers (P), B read from shared memory.
template <class Acc, class RA, class RB, class SB, class TiledMma, class CopyB, class ThrB>
__device__ __forceinline__ void gemm_rs(Acc& acc, const RA& tCrA, RB& tCrB, const SB& tCsB, const TiledMma& mma,
                                        const CopyB& copy_b, const ThrB& thr_b) {
  Tensor tCrB_view = thr_b.retile_D(tCrB);
#pragma unroll
  for (int i = 0; i < size<2>(tCrA); ++i) {
    cute::copy(copy_b, tCsB(_, _, i), tCrB_view(_, _, i));
    cute::gemm(mma, tCrA(_, _, i), tCrB(_, _, i), acc);
  }
}

// SM80 m16n8k16: the C fragments of two adjacent n8 atoms are the A fragment
// of one k16 slice. (4, MMA_M, MMA_N) -> ((4, 2), MMA_M, MMA_N / 2).
template <class Layout>
__device__ __forceinline__ auto acc_to_a_layout(Layout acc_layout) {
  static_assert(decltype(size<0>(acc_layout))::value == 4, "SM80 C fragment");
  static_assert(decltype(rank(acc_layout))::value == 3, "(MMA, MMA_M, MMA_N)");
  auto l = logical_divide(acc_layout, Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

__device__ __forceinline__ uint32_t pack2(float a, float b, cute::bfloat16_t*) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack2(float a, float b, cute::half_t*) {
  __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

// fp32 accumulator fragment -> Elem fragment of the same (compact) layout,
// two values per cvt; view the result with acc_to_a_layout to feed it as A:
//   Tensor rP = make_tensor<Elem>(acc.layout()); convert_acc(acc, rP);
//   Tensor tOrP = make_tensor(rP.data(), acc_to_a_layout(rP.layout()));
template <class Acc, class RP>
__device__ __forceinline__ void convert_acc(const Acc& acc, RP& rP) {
  using Elem = typename RP::value_type;
  static_assert(decltype(size(rP))::value % 2 == 0, "pairs");
  Tensor r32 = recast<uint32_t>(rP);
#pragma unroll
  for (int i = 0; i < size(r32); ++i) r32(i) = pack2(acc(2 * i), acc(2 * i + 1), static_cast<Elem*>(nullptr));
}

// Q tile -> shared memory: flattened rows [row_begin, row_end) of one
// sequence and KV head g; row r = (token r / G, query head g * G + r % G).
// Rows past row_end are zero-filled. One cp.async group is left open.
template <class Tr, class STensor>
__device__ __forceinline__ void load_q_tile(const typename Tr::Elem* __restrict__ q, STensor& sQ, int64_t row_begin,
                                            int64_t row_end, int group, int g, int64_t q_heads) {
  using Elem = typename Tr::Elem;
  using GmemCopy = SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>;
  constexpr int kCpr = Tr::kQChunksPerRow;
  constexpr int kRowStep = Tr::kQRowStep;
  constexpr int kD = Tr::kHeadDim;
  const int tid = threadIdx.x;
  const int cc = tid % kCpr, r0 = tid / kCpr;
  Elem* dst0 = &sQ(r0, cc * 8);
#pragma unroll
  for (int i = 0; i < Tr::kQChunksPerThread; ++i) {
    const int64_t row = row_begin + r0 + i * kRowStep;
    const bool ok = row < row_end;
    const uint32_t tok = uint32_t(row) / uint32_t(group), hh = uint32_t(row) % uint32_t(group);
    const Elem* src = ok ? q + ((int64_t(tok) * q_heads + int64_t(g) * group + hh) * kD + cc * 8) : q;
    GmemCopy::copy(*reinterpret_cast<const cute::uint128_t*>(src),
                   *reinterpret_cast<cute::uint128_t*>(dst0 + i * kRowStep * 64), ok);
  }
}

// Flips the sign of this thread's own Q chunks (after they landed): the
// kernels run the softmax on max(q.k * c) with c > 0.
template <class Tr, class STensor>
__device__ __forceinline__ void negate_own_q_chunks(STensor& sQ) {
  using Elem = typename Tr::Elem;
  constexpr int kCpr = Tr::kQChunksPerRow;
  constexpr int kRowStep = Tr::kQRowStep;
  const int tid = threadIdx.x;
  Elem* dst0 = &sQ(tid / kCpr, (tid % kCpr) * 8);
#pragma unroll
  for (int i = 0; i < Tr::kQChunksPerThread; ++i) {
    uint4* c = reinterpret_cast<uint4*>(dst0 + i * kRowStep * 64);
    uint4 x = *c;
    x.x ^= 0x80008000u;
    x.y ^= 0x80008000u;
    x.z ^= 0x80008000u;
    x.w ^= 0x80008000u;
    *c = x;
  }
}

}  // namespace msa::cuda::attention

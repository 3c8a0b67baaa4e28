// CuTe pieces shared by the SM80 mma.sync tile kernels (attention, block_scores,
// sparse_prefill main): the MMA atom of each 16-bit operand type and the swizzled
// shared-memory atom their Q / K / V tiles are built from.
#pragma once

#include <cute/tensor.hpp>

namespace msa::cuda {

// Elem: the MMA operand type (cute::bfloat16_t / cute::half_t); fp32 accumulators.
template <class Elem>
struct MmaAtomFor;
template <>
struct MmaAtomFor<cute::bfloat16_t> {
  using type = cute::SM80_16x8x16_F32BF16BF16F32_TN;
};
template <>
struct MmaAtomFor<cute::half_t> {
  using type = cute::SM80_16x8x16_F32F16F16F32_TN;
};

// 8 rows x 64 16-bit elements (128 B) per atom, 16-byte chunks XOR-swizzled by row:
// conflict-free cp.async stores and ldmatrix (also transposed) loads.
using SwizzledSmemAtom = decltype(cute::composition(
    cute::Swizzle<3, 3, 3>{}, cute::Layout<cute::Shape<cute::_8, cute::_64>, cute::Stride<cute::_64, cute::_1>>{}));

}  // namespace msa::cuda

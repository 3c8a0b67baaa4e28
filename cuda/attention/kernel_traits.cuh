// Compile-time configuration of the FlashAttention-2 style prefill kernel:
// CTA tile, tensor-core MMA (CuTe TiledMMA over SM80 mma.sync), swizzled
// shared-memory layouts (Q, K/V stages, V^T view), ldmatrix copy atoms and
// the cp.async pipeline depth. Reusable by the sparse prefill kernel.
#pragma once

#include <cute/tensor.hpp>

#include "cuda/common/cute_sm80.cuh"

namespace msa::cuda::attention {

using namespace cute;

// Elem: q dtype (cute::bfloat16_t / cute::half_t), the MMA operand type.
// kFp8KV: K and V stored as float8_e4m3fn, converted to Elem in shared memory.
template <class Elem_, bool kFp8KV_, int kHeadDim_>
struct KernelTraits {
  using Elem = Elem_;
  static constexpr bool kFp8KV = kFp8KV_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim % 64 == 0, "head_dim must be a multiple of 64");

  // M rows: flattened (token, head-of-the-GQA-group) rows of one sequence and
  // one KV head (the group's query heads share K/V, so they stack along M).
  // N: keys per K/V tile: 64 for d64; 32 for d128 (with 128 fp32 O
  // accumulators per thread, N = 64 spills under the 255-register cap; FA2's
  // sm86 choice), 3 stages. Page and block sizes must be multiples of 64,
  // a multiple of either.
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = kHeadDim == 128 ? 32 : 64;
  static constexpr int kWarps = 4;  // along M: each warp owns 32 rows
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = 3;  // K/V tiles in flight
  static constexpr int kMinBlocksPerSm = 2;

  using TiledMma = TiledMMA<MMA_Atom<typename MmaAtomFor<Elem>::type>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;

  // cuda/common/cute_sm80.cuh: 8 x 64 elements per atom, 16-byte chunks XOR-swizzled by row.
  using SmemLayoutAtom = SwizzledSmemAtom;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  // Elem-typed K / V tiles: the pipeline stages (same-dtype K/V) or the single
  // converted tile (fp8 K/V).
  static constexpr int kKVTiles = kFp8KV ? 1 : kStages;
  using SmemLayoutKV =
      decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kKVTiles>>{}));
  // V^T view (D x N per tile) of the same memory, for the P V product.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kKVTiles>>{},
                                  Stride<Int<kBlockN>, _1, Int<kBlockN * kHeadDim>>{})));
  using SmemLayoutVtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutVt{}));

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Elem>;
  using SmemCopyAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Elem>;

  static constexpr int kSmemQBytes = kBlockM * kHeadDim * sizeof(Elem);
  static constexpr int kTileElems = kBlockN * kHeadDim;
  static constexpr int kSmemKVBytes = 2 * kKVTiles * kTileElems * sizeof(Elem);  // K then V
  // Raw fp8 pipeline stages (row-major, 1 byte per element): K stages then V stages.
  static constexpr int kSmemRawBytes = kFp8KV ? 2 * kStages * kTileElems : 0;
  static constexpr int kSmemBytes = kSmemQBytes + kSmemKVBytes + kSmemRawBytes;

  // Global -> shared copy mapping (16-byte chunks).
  static constexpr int kKVElemBytes = kFp8KV ? 1 : int(sizeof(Elem));
  static constexpr int kKVStageBytes = kTileElems * kKVElemBytes;  // one of K or V
  static constexpr int kKVChunksPerRow = kHeadDim * kKVElemBytes / 16;
  static constexpr int kKVChunksPerThread = kBlockN * kKVChunksPerRow / kThreads;
  static constexpr int kKVRowStep = kThreads / kKVChunksPerRow;
  static constexpr int kQChunksPerRow = kHeadDim * int(sizeof(Elem)) / 16;
  static constexpr int kQChunksPerThread = kBlockM * kQChunksPerRow / kThreads;
  static constexpr int kQRowStep = kThreads / kQChunksPerRow;
  static_assert(kBlockN * kKVChunksPerRow % kThreads == 0, "K/V copy mapping");
  static_assert(kThreads % kKVChunksPerRow == 0 && kThreads % kQChunksPerRow == 0, "copy mapping");
  static_assert(kKVRowStep % 8 == 0 && kQRowStep % 8 == 0, "row steps must keep the swizzle phase");
  // The schedule scan borrows the K/V region for q_indptr.
  static constexpr int kScanCapacity = kSmemKVBytes / 4;
};

}  // namespace msa::cuda::attention

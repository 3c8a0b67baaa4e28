// Compile-time configuration of the block-score kernel: CTA tile, tensor-core
// MMA (CuTe TiledMMA over SM80 mma.sync), swizzled shared-memory layouts,
// ldmatrix copy atoms and the cp.async pipeline depth.
#pragma once

#include <cute/tensor.hpp>

#include "cuda/common/cute_sm80.cuh"

namespace msa::cuda::block_scores {

using namespace cute;

// Elem: q_idx dtype (cute::bfloat16_t / cute::half_t), the MMA operand type.
// kFp8K: keys stored as float8_e4m3fn, converted to Elem in shared memory.
template <class Elem_, bool kFp8K_, int kHeadDim_>
struct KernelTraits {
  using Elem = Elem_;
  static constexpr bool kFp8K = kFp8K_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim % 64 == 0, "head_dim must be a multiple of 64");

  // M rows = flattened (token, head) rows of one sequence; N = 64 keys, half
  // a 128-token block (a block is block_size / 64 consecutive tiles).
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  static constexpr int kWarps = 4;  // along M: each warp owns 32 rows x 64 keys
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = kHeadDim == 64 ? 6 : 4;

  using TiledMma = TiledMMA<MMA_Atom<typename MmaAtomFor<Elem>::type>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;

  // cuda/common/cute_sm80.cuh: 8 x 64 elements per atom, 16-byte chunks XOR-swizzled by row.
  using SmemLayoutAtom = SwizzledSmemAtom;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  // Elem-typed K tiles: the pipeline stages (same-dtype keys) or the single
  // converted tile (fp8 keys).
  static constexpr int kKTiles = kFp8K ? 1 : kStages;
  using SmemLayoutK = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kKTiles>>{}));

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Elem>;

  static constexpr int kSmemQBytes = kBlockM * kHeadDim * sizeof(Elem);
  static constexpr int kSmemKBytes = kKTiles * kBlockN * kHeadDim * sizeof(Elem);
  // Raw fp8 pipeline stages (row-major, 1 byte per element).
  static constexpr int kSmemKRawBytes = kFp8K ? kStages * kBlockN * kHeadDim : 0;
  static constexpr int kSmemBytes = kSmemQBytes + kSmemKBytes + kSmemKRawBytes;

  // Bytes per stage of the global->shared K pipeline and 16-byte chunks per key row.
  static constexpr int kKElemBytes = kFp8K ? 1 : int(sizeof(Elem));
  static constexpr int kKStageBytes = kBlockN * kHeadDim * kKElemBytes;
  static constexpr int kKChunksPerRow = kHeadDim * kKElemBytes / 16;
  static constexpr int kKChunksPerThread = kBlockN * kKChunksPerRow / kThreads;
  static constexpr int kQChunksPerRow = kHeadDim * int(sizeof(Elem)) / 16;
  static constexpr int kQChunksPerThread = kBlockM * kQChunksPerRow / kThreads;
  static_assert(kBlockN * kKChunksPerRow % kThreads == 0, "K copy mapping");
  static_assert(kThreads % kKChunksPerRow == 0 && kThreads % kQChunksPerRow == 0, "copy mapping");
  // The schedule scan borrows the pipeline region for q_indptr.
  static constexpr int kScanCapacity = (kFp8K ? kSmemKRawBytes : kSmemKBytes) / 4;
};

}  // namespace msa::cuda::block_scores

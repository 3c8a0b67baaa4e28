// Compile-time configuration of the block-score kernel: CTA tile, tensor-core
// MMA (CuTe TiledMMA over SM80 mma.sync; the fp8 sm_90a path issues wgmma
// itself), swizzled shared-memory layouts, ldmatrix copy atoms and the
// cp.async pipeline depth.
#pragma once

#include <cute/tensor.hpp>

#include "cuda/common/cute_sm80.cuh"

namespace msa::cuda::block_scores {

using namespace cute;

// Elem: q_idx dtype (cute::bfloat16_t / cute::half_t), the MMA operand type.
// kFp8K: keys stored as float8_e4m3fn; the raw bytes stay in shared memory and
// are converted to Elem in registers, right before the MMAs that use them.
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
  // fp8 stages are half the bytes (no converted tile); 4 keep the fp8
  // instance small enough for 3 CTAs per SM on sm_90a (min_blocks_per_sm).
  static constexpr int kStages = kFp8K ? 4 : (kHeadDim == 64 ? 6 : 4);

  using TiledMma = TiledMMA<MMA_Atom<typename MmaAtomFor<Elem>::type>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;

  // cuda/common/cute_sm80.cuh: 8 x 64 elements per atom, 16-byte chunks XOR-swizzled by row.
  using SmemLayoutAtom = SwizzledSmemAtom;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  // Elem-typed K pipeline stages (same-dtype keys only; the fp8 instances
  // declare one stage's layout for the unused same-dtype code path and
  // allocate none).
  static constexpr int kKTiles = kFp8K ? 1 : kStages;
  using SmemLayoutK = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kKTiles>>{}));

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Elem>;

  static constexpr int kSmemQBytes = kBlockM * kHeadDim * sizeof(Elem);
  static constexpr int kSmemKBytes = kFp8K ? 0 : kKTiles * kBlockN * kHeadDim * sizeof(Elem);
  // Raw fp8 pipeline stages: key rows of kHeadDim bytes, 16-byte chunks
  // swizzled by fp8_chunk_swizzle (conflict-free LDS.128 B-fragment loads).
  static constexpr int kSmemKRawBytes = kFp8K ? kStages * kBlockN * kHeadDim : 0;
  // fp8 keys, sm_90a (wgmma reads Q through a 128-byte-swizzle descriptor,
  // whose XOR pattern follows the absolute address): the Q tile starts on a
  // 1024-byte boundary (kSmemAlignPad of slack), and two small tables follow
  // the raw stages: visible keys per row and the cross-warp block maxima.
  static constexpr int kSmemAlignPad = kFp8K ? 1024 : 0;
  static constexpr int kSmemVisBytes = kFp8K ? kBlockM * 4 : 0;
  static constexpr int kSmemRedBytes = kFp8K ? kWarps * kBlockM * 4 : 0;
  static constexpr int kSmemBytes =
      kSmemAlignPad + kSmemQBytes + kSmemKBytes + kSmemKRawBytes + kSmemVisBytes + kSmemRedBytes;

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

  // fp8 keys: XOR mask of the 16-byte chunk index of key row `row` in a raw
  // stage. A quarter-warp LDS.128 phase reads rows r, r+1 (r even) at the same
  // 4 chunks of a 64-byte group; with rows a multiple of 128 bytes apart that
  // is a 2-way bank conflict unless odd rows move to the other 64-byte half of
  // the 128-byte bank window (chunk ^ 4). 64-byte rows (kHeadDim = 64) already
  // put rows r, r+1 in different halves.
  static constexpr int kFp8ChunkSwizzle = kHeadDim % 128 == 0 ? 4 : 0;
  __host__ __device__ static constexpr int fp8_chunk_swizzle(int row) { return (row & 1) * kFp8ChunkSwizzle; }
};

}  // namespace msa::cuda::block_scores

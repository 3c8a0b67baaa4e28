// msa_decode: compile-time configuration of the split kernel (tiles, pipeline depth,
// shared-memory map, CTAs per SM) and its launch arguments.
#pragma once

#include <cstdint>

#include "cuda/decode/decode.h"

namespace msa::cuda::decode {

template <class Elem_, bool kFp8_, int kD_>
struct Traits {
  using Elem = Elem_;                       // q / MMA operand type (__nv_bfloat16 or __half)
  static constexpr bool kFp8 = kFp8_;       // K/V caches in float8_e4m3fn
  static constexpr int kD = kD_;            // head_dim: 64 or 128
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kKeys = 16;          // keys per warp per pipeline stage
  static constexpr int kHeads = 16;         // M rows (query heads) per CTA
  static constexpr int kCacheBytes = kFp8 ? 1 : 2;
  static constexpr int kRowBytes = kD * kCacheBytes;       // a cache row in a stage
  static constexpr int kChunksPerRow = kRowBytes / 16;     // 16-byte chunks: 4, 8 or 16
  static constexpr int kRowsPerPass = 32 / kChunksPerRow;  // rows a warp copies per pass
  static constexpr int kLoadsPerLane = kKeys * kChunksPerRow / 32;  // per tensor per stage
  static constexpr int kStages = kFp8 ? (kD == 64 ? 6 : 4) : (kD == 64 ? 4 : 3);
  static constexpr int kStageBytes = 2 * kKeys * kRowBytes;        // K rows then V rows
  static constexpr int kWarpBytes = kStages * kStageBytes;
  static constexpr int kPipeBytes = kWarps * kWarpBytes;
  static constexpr int kEpiBytes = kWarps * kHeads * kD * 4;       // per-warp O (f32)
  static constexpr int kIdChunk = 1024;                            // sparse dedup ids per pass
  static constexpr int kRegionBytes = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;
  static_assert(kRegionBytes >= kIdChunk * 4, "dedup buffer");
  static constexpr int kListOffset = kRegionBytes;
  static constexpr int kListBytes = int(kDecodeMaxPagesPerSplit) * 8;
  static constexpr int kMiscOffset = kListOffset + kListBytes;
  // misc: masks [kWarps][kStages] u32, scan [kWarps] i32, m [kWarps][16], l [kWarps][16] f32
  static constexpr int kMiscBytes = (kWarps * kStages + kWarps + 2 * kWarps * kHeads) * 4;
  static constexpr int kSmemBytes = kMiscOffset + kMiscBytes;
  static constexpr int kSlotsPerThread = int(kDecodeMaxPagesPerSplit) / kThreads;
  static constexpr int kMinBlocks = kSmemBytes <= 74 * 1024 ? 3 : 2;
  static_assert(kChunksPerRow >= 4 && 32 % kChunksPerRow == 0, "copy mapping");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");

  // Physical 16-byte chunk of logical chunk c of stage row r is c ^ swz(r). Every
  // 8-lane phase of the copies (8 lanes = one row's chunks or 8 rows' same chunk) and
  // of the fragment loads must hit distinct banks:
  //   16-bit caches: ldmatrix rows 0-7 of one chunk column -> r & 7;
  //   fp8, 8 chunks: K loads read rows {2m, 2m+1} x chunks {4j + 0..3} (bit 2 of
  //     swz must differ between the two rows), V loads read rows {2t + x : t < 4} x
  //     chunks {2p, 2p+1} (bits 1-2 distinct over the 4 rows) -> (r & 7) ^ ((r & 1) << 2);
  //   fp8, 4 chunks (64-byte rows, two per bank line): the copies' 8 rows -> (r >> 1) & 3
  //     (K loads are conflict-free anyway; V's 8-byte loads stay 2-way).
  __device__ __forceinline__ static int swz(int r) {
    if constexpr (!kFp8) return r & 7;
    else if constexpr (kChunksPerRow == 8) return (r & 7) ^ ((r & 1) << 2);
    else return (r >> 1) & 3;
  }
};

struct KernelArgs {
  DecodeParams p;
  int64_t head_chunks;  // ceil(G / 16)
  float scale_log2;     // scale * k_scale * log2(e)
  float* lse_part;      // [B, Hq, S] (num_splits > 1)
  float* o_part;        // [B, Hq, S, D]
  // v / page_size for 0 <= v < 2^31 as (v * ps_mul) >> ps_shift (round-up reciprocal,
  // ps_shift = 31 + ceil(log2 page_size)): no integer division in the main loop.
  uint32_t ps_mul;
  int ps_shift;
  uint32_t row_bytes;   // Tr::kRowBytes, as a runtime operand: one IMAD.WIDE per row address
};

}  // namespace msa::cuda::decode

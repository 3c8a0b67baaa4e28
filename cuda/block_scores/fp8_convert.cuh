// float8_e4m3fn -> bf16 / fp16, four values per 32-bit word, with integer ops
// plus one exact power-of-two multiply (full-rate ALU; cvt.*.e4m3x2 is slow
// and sm_89+ only). Exact for every finite e4m3 value including subnormals;
// the e4m3 NaN encodings (0x7f/0xff) come out as +-480 instead of NaN. The bit
// layout constants and the multiply are cuda/common/mma_sm80.cuh's Mma<>.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cute/numeric/numeric_types.hpp>

#include "cuda/common/mma_sm80.cuh"

namespace msa::cuda::block_scores {

// The CUDA 16-bit type behind a CuTe one (Mma<> is keyed by the CUDA types).
template <class Elem>
using NativeElem = std::conditional_t<std::is_same_v<Elem, cute::bfloat16_t>, __nv_bfloat16, __half>;

// Bytes [b0 b1 b2 b3] -> {b0<<8 | b1<<24, b2<<8 | b3<<24}: each e4m3 byte in
// the high byte of a 16-bit lane.
__device__ __forceinline__ void spread_fp8x4(uint32_t w, uint32_t& lo, uint32_t& hi) {
  lo = __byte_perm(w, 0u, 0x1404);
  hi = __byte_perm(w, 0u, 0x3424);
}

// Two e4m3 bytes, each in the high byte of a 16-bit lane -> two Elem values: the
// magnitude bits moved under Mma's mask (value * 2^-120 in bf16, * 2^-8 in fp16;
// fp8 subnormals become bf16 / fp16 subnormals, exactly), the sign kept at bit 15,
// then the exact power-of-two multiply restores the value.
template <class Elem>
__device__ __forceinline__ uint32_t cvt2(uint32_t v) {
  using F = Mma<NativeElem<Elem>>;
  return F::fp8_unscale(((v >> (8 - F::kFp8Left)) & F::kFp8Mag) | (v & 0x80008000u));
}

// 16 e4m3 values -> 16 Elem values (two 16-byte vectors).
template <class Elem>
__device__ __forceinline__ void convert_fp8x16(const uint4& in, uint4& out0, uint4& out1) {
  uint32_t lo, hi;
  spread_fp8x4(in.x, lo, hi);
  out0.x = cvt2<Elem>(lo);
  out0.y = cvt2<Elem>(hi);
  spread_fp8x4(in.y, lo, hi);
  out0.z = cvt2<Elem>(lo);
  out0.w = cvt2<Elem>(hi);
  spread_fp8x4(in.z, lo, hi);
  out1.x = cvt2<Elem>(lo);
  out1.y = cvt2<Elem>(hi);
  spread_fp8x4(in.w, lo, hi);
  out1.z = cvt2<Elem>(lo);
  out1.w = cvt2<Elem>(hi);
}

// Bytes [b0 b1 b2 b3] of w -> even = {b0, b2}, odd = {b1, b3} as Elem pairs
// (low half first): the same values as spread_fp8x4 + cvt2 with the bytes paired
// by parity, which needs no byte permute (cuda/common/mma_sm80.cuh's fp8x4).
template <class Elem>
__device__ __forceinline__ void convert_fp8x4_by_parity(uint32_t w, uint32_t& even, uint32_t& odd) {
  fp8x4_cxx_shift<NativeElem<Elem>>(w, even, odd);
}

}  // namespace msa::cuda::block_scores

// float8_e4m3fn -> bf16 / fp16, four values per 32-bit word, with integer ops
// plus one exact power-of-two multiply (full-rate ALU; cvt.*.e4m3x2 is slow
// and sm_89+ only). Exact for every finite e4m3 value including subnormals;
// the e4m3 NaN encodings (0x7f/0xff) come out as +-480 instead of NaN.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace msa::cuda::block_scores {

// Bytes [b0 b1 b2 b3] -> {b0<<8 | b1<<24, b2<<8 | b3<<24}: each e4m3 byte in
// the high byte of a 16-bit lane.
__device__ __forceinline__ void spread_fp8x4(uint32_t w, uint32_t& lo, uint32_t& hi) {
  lo = __byte_perm(w, 0u, 0x1404);
  hi = __byte_perm(w, 0u, 0x3424);
}

template <class Elem>
struct Fp8Converter;

// fp16: magnitude bits shifted to bit 7 -> value * 2^-8 (fp8 subnormals become
// fp16 subnormals, exactly); times 2^8 in fp16 restores it.
template <>
struct Fp8Converter<cute::half_t> {
  __device__ __forceinline__ static uint32_t cvt2(uint32_t v) {
    uint32_t bits = ((v >> 1) & 0x3f803f80u) | (v & 0x80008000u);
    __half2 h = *reinterpret_cast<__half2*>(&bits);
    h = __hmul2(h, __half2half2(__ushort_as_half(0x5c00)));  // 256
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// bf16: magnitude bits shifted to bit 4 -> value * 2^-120 (fp8 subnormals
// become bf16 subnormals, exactly); times 2^120 in bf16 restores it.
template <>
struct Fp8Converter<cute::bfloat16_t> {
  __device__ __forceinline__ static uint32_t cvt2(uint32_t v) {
    uint32_t bits = ((v >> 4) & 0x07f007f0u) | (v & 0x80008000u);
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&bits);
    h = __hmul2(h, __bfloat162bfloat162(__ushort_as_bfloat16(0x7b80)));  // 2^120
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// 16 e4m3 values -> 16 Elem values (two 16-byte vectors).
template <class Elem>
__device__ __forceinline__ void convert_fp8x16(const uint4& in, uint4& out0, uint4& out1) {
  uint32_t lo, hi;
  spread_fp8x4(in.x, lo, hi);
  out0.x = Fp8Converter<Elem>::cvt2(lo);
  out0.y = Fp8Converter<Elem>::cvt2(hi);
  spread_fp8x4(in.y, lo, hi);
  out0.z = Fp8Converter<Elem>::cvt2(lo);
  out0.w = Fp8Converter<Elem>::cvt2(hi);
  spread_fp8x4(in.z, lo, hi);
  out1.x = Fp8Converter<Elem>::cvt2(lo);
  out1.y = Fp8Converter<Elem>::cvt2(hi);
  spread_fp8x4(in.w, lo, hi);
  out1.z = Fp8Converter<Elem>::cvt2(lo);
  out1.w = Fp8Converter<Elem>::cvt2(hi);
}

}  // namespace msa::cuda::block_scores

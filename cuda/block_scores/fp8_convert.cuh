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

// Constants of the e4m3 -> Elem bit move (the same as cvt2's): in each 16-bit
// lane the 7 magnitude bits land under kMagMask (e4m3 byte << kLeft, i.e. the
// high-byte placement >> (8 - kLeft)), the sign at bit 15, then * kScaleBits.
template <class Elem>
struct Fp8Bits;
template <>
struct Fp8Bits<cute::half_t> {
  static constexpr int kLeft = 7;
  static constexpr uint32_t kMagMask = 0x3f803f80u;
  __device__ __forceinline__ static uint32_t scale(uint32_t bits) {
    __half2 h = *reinterpret_cast<__half2*>(&bits);
    h = __hmul2(h, __half2half2(__ushort_as_half(0x5c00)));  // 256
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <>
struct Fp8Bits<cute::bfloat16_t> {
  static constexpr int kLeft = 4;
  static constexpr uint32_t kMagMask = 0x07f007f0u;
  __device__ __forceinline__ static uint32_t scale(uint32_t bits) {
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&bits);
    h = __hmul2(h, __bfloat162bfloat162(__ushort_as_bfloat16(0x7b80)));  // 2^120
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// (a & kMask) | (b & ~kMask) as one LOP3. Inline PTX so the compiler keeps the
// shared sign word below instead of re-deriving two masked copies of w.
template <uint32_t kMask>
__device__ __forceinline__ uint32_t bit_select(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xe4;" : "=r"(d) : "r"(a), "r"(b), "n"(kMask));
  return d;
}

// Bytes [b0 b1 b2 b3] of w -> even = {b0, b2}, odd = {b1, b3} as Elem pairs
// (low half first). Same values as spread_fp8x4 + cvt2 but with the bytes
// paired by parity, which needs no byte permute: the magnitudes are w shifted
// so each byte's 7 low bits land under kMagMask (garbage elsewhere), and one
// bit-select per pair takes the rest (sign at bit 15 of each lane) from the
// sign bits of w (bits 7/23 of the select source fall under the mask, 15/31
// outside it). 4 logic ops (incl. one shift) + 2 left shifts (IMAD, FMA pipe)
// + 2 multiplies per 4 values instead of 8 logic ops + 2 multiplies; exact
// for every e4m3 value, as cvt2 is.
template <class Elem>
__device__ __forceinline__ void convert_fp8x4_by_parity(uint32_t w, uint32_t& even, uint32_t& odd) {
  using B = Fp8Bits<Elem>;
  const uint32_t sgn = w & 0x80808080u;
  even = B::scale(bit_select<B::kMagMask>(w << B::kLeft, sgn << 8));
  odd = B::scale(bit_select<B::kMagMask>(w >> (8 - B::kLeft), sgn));
}

}  // namespace msa::cuda::block_scores

// sm_80+ warp-level PTX pieces shared by the hand-written mma.sync kernels (decode,
// decode-shaped block_scores): shared-memory addresses, cp.async groups, ldmatrix,
// mma.m16n8k16 per 16-bit operand type (Elem = __nv_bfloat16 or __half), and the
// exact e4m3 -> bf16/fp16 register conversion of four bytes at a time (fp8x4: integer
// ops, any arch; fp8x4_f16_pairs: the sm_89+ cvt instruction).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace msa::cuda {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <class Elem>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  // fp8x4: the 7 magnitude bits of an e4m3 byte land at bits 4-10 of a bf16 lane
  // (exponent field low 4 bits + mantissa top 3): value * 2^-120, exact for
  // subnormals too (bf16 subnormals); times 2^120 in bf16 restores it. The
  // multiply stays: the mma's handling of subnormal inputs is unspecified.
  static constexpr int kFp8Left = 4;
  static constexpr uint32_t kFp8Mag = 0x07f007f0u;
  __device__ __forceinline__ static uint32_t fp8_unscale(uint32_t bits) {
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&bits);
    h = __hmul2(h, __bfloat162bfloat162(__ushort_as_bfloat16(0x7b80)));  // 2^120
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Mma<__half> {
  __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  // fp16: magnitude bits at bits 7-13 of an fp16 lane: value * 2^-8 (fp8
  // subnormals become fp16 subnormals, exactly); times 2^8 restores it.
  static constexpr int kFp8Left = 7;
  static constexpr uint32_t kFp8Mag = 0x3f803f80u;
  __device__ __forceinline__ static uint32_t fp8_unscale(uint32_t bits) {
    __half2 h = *reinterpret_cast<__half2*>(&bits);
    h = __hmul2(h, __half2half2(__ushort_as_half(0x5c00)));  // 256
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
};

// (a & mask) | (b & ~mask) as one LOP3.
template <uint32_t kMask>
__device__ __forceinline__ uint32_t bit_select(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xe4;" : "=r"(d) : "r"(a), "r"(b), "n"(kMask));
  return d;
}

// e4m3 bytes [b0 b1 b2 b3] of w -> even = {b0, b2}, odd = {b1, b3} as Elem pairs
// (low half first). The magnitudes are w shifted under the magnitude mask, the sign
// bits (bit 15 / 31 of a lane) come from w's own sign bits, then one exact
// power-of-two multiply per pair (Mma<Elem>::fp8_unscale): 6 integer ops + 2
// multiplies per 4 values, no byte permute. Exact for every e4m3 value including
// subnormals; the NaN encodings (0x7f / 0xff) read as +-480.
template <class Elem>
__device__ __forceinline__ void fp8x4(uint32_t w, uint32_t& even, uint32_t& odd) {
  constexpr int kL = Mma<Elem>::kFp8Left;
  constexpr uint32_t kM = Mma<Elem>::kFp8Mag;
  const uint32_t sgn = w & 0x80808080u;
  // sgn << 8 (bits 7 / 23 -> 15 / 31; 15 -> 23 is masked) in PTX: the compiler would
  // rewrite it as (w << 8) & 0x80808000, one more op than reusing sgn.
  uint32_t sgn8;
  asm("shl.b32 %0, %1, 8;" : "=r"(sgn8) : "r"(sgn));
  even = Mma<Elem>::fp8_unscale(bit_select<kM>(w << kL, sgn8));
  odd = Mma<Elem>::fp8_unscale(bit_select<kM>(w >> (8 - kL), sgn));  // signs 15 / 31 in place (7 / 23 masked)
}

// fp8x4 with the sign shift written in C++ (the same bits; the compiler picks another
// instruction sequence): the block_scores kernels were validated on the GPU with this
// sequence. Switch them to fp8x4 after a GPU test run of that change.
template <class Elem>
__device__ __forceinline__ void fp8x4_cxx_shift(uint32_t w, uint32_t& even, uint32_t& odd) {
  using F = Mma<Elem>;
  const uint32_t sgn = w & 0x80808080u;
  even = F::fp8_unscale(bit_select<F::kFp8Mag>(w << F::kFp8Left, sgn << 8));
  odd = F::fp8_unscale(bit_select<F::kFp8Mag>(w >> (8 - F::kFp8Left), sgn));
}

// The hardware e4m3 -> f16 conversion (sm_89+): cvt.rn.f16x2.e4m3x2, one F2FP per pair,
// which reads either 16-bit half of a register (no shift or permute needed).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
inline constexpr bool kHasFp8Cvt = true;
#else
inline constexpr bool kHasFp8Cvt = false;
#endif

// e4m3 bytes [b0 b1 b2 b3] of w -> lo = {b0, b1}, hi = {b2, b3} as f16 pairs (low half
// first). Exact: every finite e4m3 value is an f16 normal or zero. A NaN byte (0x7f /
// 0xff) gives an f16 NaN with kHasFp8Cvt; the integer fallback (never used by the kernels,
// kept so the function is total) reads it as +-480.
__device__ __forceinline__ void fp8x4_f16_pairs(uint32_t w, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(w));
#else
  uint32_t even, odd;
  fp8x4<__half>(w, even, odd);
  lo = __byte_perm(even, odd, 0x5410);
  hi = __byte_perm(even, odd, 0x7632);
#endif
}

}  // namespace msa::cuda

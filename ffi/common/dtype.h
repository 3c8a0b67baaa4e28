// Host-side element conversions for the CPU handlers: every input is read as
// float32 and every output written back in its own dtype (round to nearest
// even; float8_e4m3fn saturates to +-448, NaN stays NaN).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "xla/ffi/api/ffi.h"

namespace msa {

namespace ffi = xla::ffi;

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t bits = float_to_bits(f);
  if (std::isnan(f)) return uint16_t((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return uint16_t((bits + rounding) >> 16);
}

inline float fp16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    // Subnormal or zero: value = man * 2^-24.
    float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t float_to_fp16(float f) {
  uint32_t bits = float_to_bits(f);
  uint16_t sign = uint16_t((bits >> 16) & 0x8000);
  if (std::isnan(f)) return uint16_t(sign | 0x7e00);
  float a = std::fabs(f);
  if (a >= 65520.0f) return uint16_t(sign | 0x7c00);  // rounds to inf
  if (a < 6.103515625e-05f) {
    // Subnormal range: quantum 2^-24, nearbyint rounds half to even.
    return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t abits = float_to_bits(a);
  uint32_t rounding = 0xfff + ((abits >> 13) & 1);
  abits += rounding;
  uint32_t exp = (abits >> 23) - 112;
  return uint16_t(sign | (exp << 10) | ((abits >> 13) & 0x3ff));
}

inline float fp8e4m3_to_float(uint8_t x) {
  uint32_t sign = x & 0x80;
  uint32_t exp = (x >> 3) & 0xf;
  uint32_t man = x & 0x7;
  float v;
  if (exp == 0xf && man == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exp == 0) {
    v = std::ldexp(float(man), -9);
  } else {
    v = std::ldexp(float(8 + man), int(exp) - 10);
  }
  return sign ? -v : v;
}

inline uint8_t float_to_fp8e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.0f) return uint8_t(sign | 0x7e);  // saturate (no inf in e4m3fn)
  if (a < std::ldexp(1.0f, -6)) {
    // Subnormal: quantum 2^-9.
    int m = int(std::nearbyint(a * 512.0f));
    return uint8_t(sign | m);  // m == 8 lands exactly on the smallest normal
  }
  int e;
  float frac = std::frexp(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
  // a = (1 + man/8) * 2^(e-1); man = (2 frac - 1) * 8.
  float mf = std::nearbyint((2.0f * frac - 1.0f) * 8.0f);
  int man = int(mf);
  int exp = e - 1 + 7;
  if (man == 8) {
    man = 0;
    exp += 1;
  }
  if (exp > 15 || (exp == 15 && man == 7)) return uint8_t(sign | 0x7e);
  return uint8_t(sign | (exp << 3) | man);
}

inline bool is_float_dtype(ffi::DataType t) {
  return t == ffi::DataType::F32 || t == ffi::DataType::BF16 || t == ffi::DataType::F16;
}
inline bool is_kv_dtype(ffi::DataType t) {
  return is_float_dtype(t) || t == ffi::DataType::F8E4M3FN;
}

// Element i of a buffer of dtype t, as float.
inline float load_as_float(const void* data, ffi::DataType t, int64_t i) {
  switch (t) {
    case ffi::DataType::F32:
      return static_cast<const float*>(data)[i];
    case ffi::DataType::BF16:
      return bf16_to_float(static_cast<const uint16_t*>(data)[i]);
    case ffi::DataType::F16:
      return fp16_to_float(static_cast<const uint16_t*>(data)[i]);
    case ffi::DataType::F8E4M3FN:
      return fp8e4m3_to_float(static_cast<const uint8_t*>(data)[i]);
    default:
      return std::numeric_limits<float>::quiet_NaN();
  }
}

inline void store_from_float(void* data, ffi::DataType t, int64_t i, float v) {
  switch (t) {
    case ffi::DataType::F32:
      static_cast<float*>(data)[i] = v;
      break;
    case ffi::DataType::BF16:
      static_cast<uint16_t*>(data)[i] = float_to_bf16(v);
      break;
    case ffi::DataType::F16:
      static_cast<uint16_t*>(data)[i] = float_to_fp16(v);
      break;
    case ffi::DataType::F8E4M3FN:
      static_cast<uint8_t*>(data)[i] = float_to_fp8e4m3(v);
      break;
    default:
      break;
  }
}

}  // namespace msa

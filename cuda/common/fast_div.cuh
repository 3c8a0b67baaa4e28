// Division by a runtime constant with a multiply and shifts (host-built constants,
// device-side division). Used where a kernel divides by a shape (heads, block_size,
// splits) once per row: a 64-bit division there costs more than the row's selection.
#pragma once

#include <cstdint>

namespace msa::cuda {

// Division by a runtime constant d >= 1 (heads, block_size, splits): multiply
// and shifts for 32-bit dividends (q = (t + ((n - t) >> sh1)) >> sh2 with
// t = umulhi(n, mul), Granlund-Montgomery), 64-bit division otherwise. The
// constants come from the launcher (shapes only).
struct FastDiv {
  int64_t d = 1;
  uint32_t mul = 1, sh1 = 0, sh2 = 0;
  bool ok = true;  // d < 2^32
};
inline FastDiv make_fastdiv(int64_t d) {
  FastDiv f;
  f.d = d < 1 ? 1 : d;
  if (uint64_t(f.d) >> 32) {
    f.ok = false;
    return f;
  }
  uint32_t l = 0;
  while ((uint64_t(1) << l) < uint64_t(f.d)) ++l;  // ceil(log2 d) <= 32
  f.mul = uint32_t((((uint64_t(1) << l) - uint64_t(f.d)) << 32) / uint64_t(f.d) + 1);
  f.sh1 = l < 1 ? l : 1;
  f.sh2 = l > 1 ? l - 1 : 0;
  return f;
}
__device__ __forceinline__ uint32_t fdiv32(uint32_t n, const FastDiv& f) {
  if (!f.ok) return 0u;  // d >= 2^32 > n
  const uint32_t t = __umulhi(n, f.mul);
  return (t + ((n - t) >> f.sh1)) >> f.sh2;
}
__device__ __forceinline__ int64_t fdiv(int64_t n, const FastDiv& f) {  // n >= 0
  if (f.ok && (uint64_t(n) >> 32) == 0) {
    const uint32_t u = uint32_t(n), t = __umulhi(u, f.mul);
    return int64_t((t + ((u - t) >> f.sh1)) >> f.sh2);
  }
  return n / f.d;
}

}  // namespace msa::cuda

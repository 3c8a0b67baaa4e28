// 64-bit integer clamps used by the kernels' bounds checks on device data (lengths,
// indptrs, page ids).
#pragma once

#include <cstdint>

namespace msa::cuda {

__device__ __forceinline__ int64_t clamp64(int64_t x, int64_t lo, int64_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

}  // namespace msa::cuda

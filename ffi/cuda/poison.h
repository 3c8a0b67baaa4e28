// Output poisoning for the GPU tests: with MSA_JAX_POISON_OUTPUTS=1 (set by
// tests/conftest.py; off by default, the benchmarks leave it unset) the CUDA
// handlers fill each real output with a poison pattern right before the kernel
// launch, so an element the kernel fails to write cannot pass the tests by
// holding stale but plausible memory. Patterns: 0xFF bytes for floating outputs
// (NaN in f32, bf16, f16 and float8_e4m3fn), 0x7F bytes for int32 outputs
// (0x7F7F7F7F: an out-of-range block id, unlike the -1 padding). Cost when on:
// one cudaMemsetAsync per output on XLA's stream (a memset node: no host sync,
// no allocation, so CUDA graphs / command buffers still capture the call).
// Scratch outputs (internal) and in-place caches (msa_append_paged) are never
// poisoned.
#pragma once

#include <cstdlib>
#include <cstring>

#include <cuda_runtime_api.h>

#include "ffi/cuda/launch_check.h"
#include "xla/ffi/api/ffi.h"

namespace msa {

inline bool poison_outputs_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("MSA_JAX_POISON_OUTPUTS");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

// Poisons one output buffer (ffi::AnyBuffer or ffi::Buffer<T>) when enabled;
// empty outputs are left alone.
template <typename Buf>
xla::ffi::Error poison_output(const char* op, const Buf& out, cudaStream_t stream) {
  if (!poison_outputs_enabled() || out.size_bytes() == 0) return xla::ffi::Error::Success();
  const int byte = out.element_type() == xla::ffi::DataType::S32 ? 0x7F : 0xFF;
  return cuda_status(op, cudaMemsetAsync(out.untyped_data(), byte, out.size_bytes(), stream));
}

}  // namespace msa

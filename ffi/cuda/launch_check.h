// Turns a CUDA launch status into an ffi::Error naming the op.
#pragma once

#include <string>

#include <cuda_runtime_api.h>

#include "xla/ffi/api/ffi.h"

namespace msa {

inline xla::ffi::Error cuda_status(const char* op, cudaError_t err) {
  if (err == cudaSuccess) return xla::ffi::Error::Success();
  return xla::ffi::Error(xla::ffi::ErrorCode::kInternal,
                         std::string(op) + ": CUDA error: " + cudaGetErrorString(err));
}

}  // namespace msa

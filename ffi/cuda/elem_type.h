// XLA FFI dtype -> kernel ElemType.
#pragma once

#include "cuda/common/elem_type.h"
#include "xla/ffi/api/ffi.h"

namespace msa {

inline bool to_elem_type(xla::ffi::DataType t, cuda::ElemType* out) {
  switch (t) {
    case xla::ffi::DataType::F32: *out = cuda::ElemType::kF32; return true;
    case xla::ffi::DataType::BF16: *out = cuda::ElemType::kBF16; return true;
    case xla::ffi::DataType::F16: *out = cuda::ElemType::kF16; return true;
    case xla::ffi::DataType::F8E4M3FN: *out = cuda::ElemType::kFP8E4M3; return true;
    default: return false;
  }
}

}  // namespace msa

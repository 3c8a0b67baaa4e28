// Argument checks shared by the handlers: each failure names the argument.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace msa {

namespace ffi = xla::ffi;

inline ffi::Error invalid(const std::string& msg) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, msg);
}

// A valid call outside what a kernel supports ("op: msg").
inline ffi::Error unimplemented(const char* op, const std::string& msg) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented, std::string(op) + ": " + msg);
}

inline std::string dims_str(const ffi::AnyBuffer& b) {
  std::string s = "[";
  auto d = b.dimensions();
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

inline ffi::Error check_rank(const char* op, const char* name, const ffi::AnyBuffer& b, size_t rank) {
  if (b.dimensions().size() != rank)
    return invalid(std::string(op) + ": " + name + " must have rank " + std::to_string(rank) +
                   ", got shape " + dims_str(b));
  return ffi::Error::Success();
}

inline ffi::Error check_dtype(const char* op, const char* name, const ffi::AnyBuffer& b,
                              std::initializer_list<ffi::DataType> allowed) {
  for (auto t : allowed)
    if (b.element_type() == t) return ffi::Error::Success();
  return invalid(std::string(op) + ": " + name + " has an unsupported dtype (code " +
                 std::to_string(static_cast<int>(b.element_type())) + ")");
}

inline ffi::Error check_dim(const char* op, const char* name, const ffi::AnyBuffer& b, size_t axis,
                            int64_t expected, const char* what) {
  if (b.dimensions()[axis] != expected)
    return invalid(std::string(op) + ": " + name + " dim " + std::to_string(axis) + " must equal " +
                   what + " (" + std::to_string(expected) + "), got shape " + dims_str(b));
  return ffi::Error::Success();
}

}  // namespace msa

// Return the error of a check when it failed.
#define MSA_RETURN_IF_ERROR(expr)           \
  do {                                      \
    ::xla::ffi::Error _msa_err = (expr);    \
    if (_msa_err.failure()) return _msa_err; \
  } while (0)

// Shape/dtype checks of msa_append_paged shared by the CPU and CUDA handlers.
#pragma once

#include "ffi/common/checks.h"
#include "ffi/common/dtype.h"

namespace msa {

struct AppendDims {
  int64_t num_pages, heads, page_size, head_dim, batch, steps, max_pages;
};

inline ffi::Error check_append_args(const ffi::AnyBuffer& cache, const ffi::AnyBuffer& new_tokens,
                                    const ffi::Buffer<ffi::S32>& page_table,
                                    const ffi::Buffer<ffi::S32>& positions,
                                    const ffi::AnyBuffer& out, AppendDims* d) {
  constexpr const char* op = "msa_append_paged";
  MSA_RETURN_IF_ERROR(check_rank(op, "cache", cache, 4));
  MSA_RETURN_IF_ERROR(check_rank(op, "new", new_tokens, 4));
  MSA_RETURN_IF_ERROR(check_dtype(op, "cache", cache,
                                  {ffi::DataType::F32, ffi::DataType::BF16, ffi::DataType::F16,
                                   ffi::DataType::F8E4M3FN}));
  MSA_RETURN_IF_ERROR(check_dtype(op, "new", new_tokens,
                                  {ffi::DataType::F32, ffi::DataType::BF16, ffi::DataType::F16}));
  auto c = cache.dimensions();
  auto n = new_tokens.dimensions();
  *d = AppendDims{c[0], c[1], c[2], c[3], n[0], n[1], 0};
  MSA_RETURN_IF_ERROR(check_dim(op, "new", new_tokens, 2, d->heads, "cache heads"));
  MSA_RETURN_IF_ERROR(check_dim(op, "new", new_tokens, 3, d->head_dim, "cache head_dim"));
  if (page_table.dimensions().size() != 2 || page_table.dimensions()[0] != d->batch)
    return invalid("msa_append_paged: page_table must be [B, max_pages] with B = new.shape[0]");
  if (positions.dimensions().size() != 1 || positions.dimensions()[0] != d->batch)
    return invalid("msa_append_paged: positions must be [B] with B = new.shape[0]");
  if (out.element_type() != cache.element_type() || out.element_count() != cache.element_count())
    return invalid("msa_append_paged: output must match cache");
  d->max_pages = page_table.dimensions()[1];
  return ffi::Error::Success();
}

}  // namespace msa

// msa_append_paged on the CPU: write new K/V (or index-key) tokens into a
// paged cache, in place when XLA aliases the output to the input.
#include <cstring>

#include "ffi/common/append_args.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error AppendPagedCpuImpl(ffi::AnyBuffer cache, ffi::AnyBuffer new_tokens,
                              ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> positions,
                              float scale, ffi::Result<ffi::AnyBuffer> out) {
  msa::AppendDims d;
  MSA_RETURN_IF_ERROR(msa::check_append_args(cache, new_tokens, page_table, positions, *out, &d));
  if (out->untyped_data() != cache.untyped_data())
    std::memcpy(out->untyped_data(), cache.untyped_data(), cache.size_bytes());
  const int32_t* pt = page_table.typed_data();
  const int32_t* posv = positions.typed_data();
  for (int64_t b = 0; b < d.batch; ++b) {
    if (posv[b] < 0) continue;
    for (int64_t s = 0; s < d.steps; ++s) {
      int64_t p = int64_t(posv[b]) + s;
      int64_t page_idx = p / d.page_size;
      if (page_idx >= d.max_pages) break;
      int64_t page = pt[b * d.max_pages + page_idx];
      if (page < 0 || page >= d.num_pages) continue;
      for (int64_t h = 0; h < d.heads; ++h) {
        int64_t src = ((b * d.steps + s) * d.heads + h) * d.head_dim;
        int64_t dst = ((page * d.heads + h) * d.page_size + p % d.page_size) * d.head_dim;
        for (int64_t e = 0; e < d.head_dim; ++e) {
          float v = msa::load_as_float(new_tokens.untyped_data(), new_tokens.element_type(), src + e);
          msa::store_from_float(out->untyped_data(), out->element_type(), dst + e, v / scale);
        }
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaAppendPagedCpu, AppendPagedCpuImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::AnyBuffer>());

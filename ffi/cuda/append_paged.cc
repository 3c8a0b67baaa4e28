// msa_append_paged on the GPU: decode and check the arguments, launch the
// kernel on XLA's stream. No host sync and no allocation (CUDA-graph safe).
#include <cuda_runtime_api.h>

#include "cuda/append_kv/append_paged.h"
#include "ffi/common/append_args.h"
#include "ffi/cuda/elem_type.h"
#include "ffi/cuda/launch_check.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error AppendPagedCudaImpl(cudaStream_t stream, ffi::AnyBuffer cache, ffi::AnyBuffer new_tokens,
                               ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> positions,
                               float scale, ffi::Result<ffi::AnyBuffer> out) {
  msa::AppendDims d;
  MSA_RETURN_IF_ERROR(msa::check_append_args(cache, new_tokens, page_table, positions, *out, &d));
  msa::cuda::AppendPagedParams p{};
  if (!msa::to_elem_type(cache.element_type(), &p.cache_type) ||
      !msa::to_elem_type(new_tokens.element_type(), &p.new_type))
    return msa::invalid("msa_append_paged: unsupported dtype");
  if (out->untyped_data() != cache.untyped_data()) {
    // Not aliased (should not happen with input_output_aliases): copy first.
    MSA_RETURN_IF_ERROR(msa::cuda_status(
        "msa_append_paged", cudaMemcpyAsync(out->untyped_data(), cache.untyped_data(),
                                            cache.size_bytes(), cudaMemcpyDeviceToDevice, stream)));
  }
  p.cache = out->untyped_data();
  p.new_tokens = new_tokens.untyped_data();
  p.page_table = page_table.typed_data();
  p.positions = positions.typed_data();
  p.num_pages = d.num_pages;
  p.heads = d.heads;
  p.page_size = d.page_size;
  p.head_dim = d.head_dim;
  p.batch = d.batch;
  p.steps = d.steps;
  p.max_pages = d.max_pages;
  p.scale = scale;
  return msa::cuda_status("msa_append_paged", msa::cuda::launch_append_paged(p, stream));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaAppendPagedCuda, AppendPagedCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::AnyBuffer>(),
                              {ffi::Traits::kCmdBufferCompatible});

// msa_attention on the GPU (docs/ffi-contract.md): decode and check the
// arguments (same binding as ffi/cpu/attention.cc), launch the FlashAttention-2
// style kernel on XLA's stream. No host sync and no allocation (CUDA-graph
// safe); device data (indptrs, lengths, page ids) are range-checked by the
// kernel.
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "cuda/attention/attention.h"
#include "ffi/common/attn_args.h"
#include "ffi/common/checks.h"
#include "ffi/cuda/elem_type.h"
#include "ffi/cuda/launch_check.h"
#include "ffi/cuda/poison.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

constexpr const char* kOp = "msa_attention";

ffi::Error AttentionCudaImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                             ffi::Buffer<ffi::S32> q_indptr, ffi::Buffer<ffi::S32> kv_indptr,
                             ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> page_table, float scale,
                             float k_scale, float v_scale, bool causal, bool paged, int64_t block_size,
                             ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::AnyBuffer> lse,
                             ffi::Result<ffi::AnyBuffer> block_max) {
  // Shapes and dtypes exactly as the CPU handler checks them.
  msa::AttnArgs a;
  MSA_RETURN_IF_ERROR(msa::check_attn_inputs(kOp, "q", q, "k", k, "v", &v, paged, false, &q_indptr, &kv_indptr,
                                             kv_lens, &page_table, &a));
  const int64_t t = a.q.tokens, hq = a.q.heads, d = a.q.head_dim;
  MSA_RETURN_IF_ERROR(msa::check_output(kOp, "o", *o, q.element_type(), {t, hq, d}, "[T,Hq,D]"));
  MSA_RETURN_IF_ERROR(msa::check_output(kOp, "lse", *lse, ffi::DataType::F32, {t, hq}, "[T,Hq]"));
  MSA_RETURN_IF_ERROR(msa::check_output(kOp, "block_max", *block_max, ffi::DataType::F32, {t, hq, -1}, "[T,Hq,NB]"));
  const int64_t nb = block_max->dimensions()[2];
  if (nb > 0) MSA_RETURN_IF_ERROR(msa::check_block_size(kOp, block_size, a.kv));
  if (k.element_type() != v.element_type())
    return msa::invalid(std::string(kOp) + ": k and v must have the same dtype on CUDA");

  // What the CUDA kernel supports (clear Unimplemented errors otherwise).
  if (q.element_type() == ffi::DataType::F32)
    return msa::unimplemented(kOp,
                              "the CUDA kernel supports bfloat16 / float16 queries, not float32 (cast q, k, v, or run "
                              "on the CPU)");
  if (d != 64 && d != 128)
    return msa::unimplemented(kOp, "the CUDA kernel supports head_dim 64 and 128, got " + std::to_string(d));
  if (paged && a.kv.page_size % 64 != 0)
    return msa::unimplemented(kOp, "the CUDA kernel needs page_size to be a multiple of 64, got " +
                         std::to_string(a.kv.page_size));
  if (nb > 0 && block_size % 64 != 0)
    return msa::unimplemented(kOp, "the CUDA kernel needs block_size to be a multiple of 64 for block maxima, got " +
                         std::to_string(block_size));

  msa::cuda::AttentionParams p{};
  if (!msa::to_elem_type(q.element_type(), &p.q_type) || !msa::to_elem_type(k.element_type(), &p.kv_type))
    return msa::invalid(std::string(kOp) + ": unsupported dtype");
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.q_indptr = q_indptr.typed_data();
  p.kv_indptr = kv_indptr.typed_data();
  p.kv_lens = kv_lens.typed_data();
  p.page_table = page_table.typed_data();
  p.o = o->untyped_data();
  p.lse = static_cast<float*>(lse->untyped_data());
  p.block_max = static_cast<float*>(block_max->untyped_data());
  p.total_q = t;
  p.q_heads = hq;
  p.kv_heads = a.kv.num_heads;
  p.head_dim = d;
  p.num_blocks = nb;
  p.batch = a.batch;
  p.dense_rows = a.kv.dense_rows;
  p.num_pages = a.kv.num_pages;
  p.page_size = a.kv.page_size;
  p.max_pages = a.kv.max_pages;
  p.block_size = block_size;
  p.scale = scale;
  p.k_scale = k_scale;
  p.v_scale = v_scale;
  p.causal = causal;
  p.paged = paged;
  if (t * hq == 0) return ffi::Error::Success();  // nothing to write
  const char* why = nullptr;
  if (!msa::cuda::attention_supported(p, &why))
    return msa::unimplemented(kOp, std::string("configuration not supported by the CUDA kernel: ") + (why ? why : "?"));
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *o, stream));
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *lse, stream));
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *block_max, stream));  // empty unless requested
  return msa::cuda_status(kOp, msa::cuda::launch_attention(p, stream));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaAttentionCuda, AttentionCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()         // q
                                  .Arg<ffi::AnyBuffer>()         // k
                                  .Arg<ffi::AnyBuffer>()         // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // q_indptr
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_indptr
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()  // page_table
                                  .Attr<float>("scale")
                                  .Attr<float>("k_scale")
                                  .Attr<float>("v_scale")
                                  .Attr<bool>("causal")
                                  .Attr<bool>("paged")
                                  .Attr<int64_t>("block_size")
                                  .Ret<ffi::AnyBuffer>()   // o
                                  .Ret<ffi::AnyBuffer>()   // lse
                                  .Ret<ffi::AnyBuffer>(),  // block_max
                              {ffi::Traits::kCmdBufferCompatible});

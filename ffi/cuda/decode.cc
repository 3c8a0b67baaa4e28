// msa_decode on the GPU (docs/ffi-contract.md): decode and check the
// arguments like the CPU handler, launch the split and combine kernels on
// XLA's stream (cuda/decode/decode.h). No host sync and no allocation: the
// split partials live in the `scratch` output, sized by the wrapper with
// decode_scratch_bytes (CUDA-graph safe). Device data (lengths, page ids,
// block ids) are range-checked by the kernel.
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "cuda/decode/decode.h"
#include "ffi/common/attn_args.h"
#include "ffi/common/checks.h"
#include "ffi/cuda/elem_type.h"
#include "ffi/cuda/launch_check.h"
#include "ffi/cuda/poison.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

constexpr const char* kOp = "msa_decode";

ffi::Error DecodeCudaImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k_cache, ffi::AnyBuffer v_cache,
                          ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> kv_lens,
                          ffi::Buffer<ffi::S32> block_ids, float scale, float k_scale, float v_scale, bool sparse,
                          int64_t num_splits, ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::AnyBuffer> lse,
                          ffi::Result<ffi::AnyBuffer> scratch) {
  msa::AttnArgs a;
  MSA_RETURN_IF_ERROR(msa::check_attn_inputs(kOp, "q", q, "k_cache", k_cache, "v_cache", &v_cache,
                                             /*paged=*/true, false, nullptr, nullptr, kv_lens, &page_table, &a));
  const int64_t B = a.q.tokens, Hq = a.q.heads, D = a.q.head_dim;
  MSA_RETURN_IF_ERROR(msa::check_dim(kOp, "q", q, 0, a.batch, "kv_lens.shape[0] (B)"));
  const auto bd = block_ids.dimensions();
  if (sparse && (bd.size() != 3 || bd[0] != B || bd[1] != a.kv.num_heads))
    return msa::invalid(std::string(kOp) + ": block_ids must have shape [B,Hkv,K] = [" + std::to_string(B) + "," +
                        std::to_string(a.kv.num_heads) + ",*], got " + msa::shape_str(block_ids));
  MSA_RETURN_IF_ERROR(msa::check_output(kOp, "o", *o, q.element_type(), {B, Hq, D}, "[B,Hq,D]"));
  MSA_RETURN_IF_ERROR(msa::check_output(kOp, "lse", *lse, ffi::DataType::F32, {B, Hq}, "[B,Hq]"));
  if (scratch->element_type() != ffi::DataType::U8 || scratch->dimensions().size() != 1)
    return msa::invalid(std::string(kOp) + ": scratch output must be a 1-D uint8 array, got " +
                        msa::dims_str(*scratch));
  if (num_splits < 1)
    return msa::invalid(std::string(kOp) + ": num_splits must be >= 1, got " + std::to_string(num_splits));

  // What the CUDA kernels implement.
  msa::cuda::DecodeParams p{};
  if (q.element_type() != ffi::DataType::BF16 && q.element_type() != ffi::DataType::F16)
    return msa::unimplemented(kOp, "the CUDA kernel supports bfloat16 and float16 queries (float32 runs on the CPU)");
  if (k_cache.element_type() != v_cache.element_type())
    return msa::unimplemented(kOp, "the CUDA kernel needs k_cache and v_cache of the same dtype");
  if (!msa::to_elem_type(q.element_type(), &p.q_type) || !msa::to_elem_type(k_cache.element_type(), &p.kv_type))
    return msa::invalid(std::string(kOp) + ": unsupported dtype");
  if (D != 64 && D != 128)
    return msa::unimplemented(kOp, "the CUDA kernel supports head_dim 64 and 128, got " + std::to_string(D));
  const int64_t ps = a.kv.page_size, P = a.kv.max_pages, Hkv = a.kv.num_heads;
  if (ps > (int64_t(1) << 20) || P * ps > INT32_MAX)
    return msa::unimplemented(kOp, "the CUDA kernel needs page_size <= 2^20 and max_pages * page_size < 2^31, got "
                         "page_size " + std::to_string(ps) + ", max_pages " + std::to_string(P));
  if (a.kv.num_pages * Hkv * ps > int64_t(0xffffffff))
    return msa::unimplemented(kOp, "the CUDA kernel needs num_pages * kv_heads * page_size < 2^32 cache rows");
  const int64_t K = sparse ? bd[2] : 0;
  const int64_t n = sparse ? K : P;
  if (!msa::cuda::decode_splits_ok(n, num_splits))
    return msa::invalid(std::string(kOp) + ": num_splits=" + std::to_string(num_splits) + " gives more than " +
                        std::to_string(msa::cuda::kDecodeMaxPagesPerSplit) + " " + (sparse ? "block_ids slots" : "pages") +
                        " per split (" + std::to_string(n) + "); use decode_num_splits(B, Hkv, P, K)");
  const int64_t need = msa::cuda::decode_scratch_bytes(B, Hq, D, num_splits);
  if (static_cast<int64_t>(scratch->size_bytes()) < need)
    return msa::invalid(std::string(kOp) + ": scratch output too small: " + std::to_string(scratch->size_bytes()) +
                        " bytes, need " + std::to_string(need) + " (decode_scratch_bytes(B=" + std::to_string(B) +
                        ", Hq=" + std::to_string(Hq) + ", D=" + std::to_string(D) +
                        ", num_splits=" + std::to_string(num_splits) + "))");
  if (need > 0 && (reinterpret_cast<uintptr_t>(scratch->untyped_data()) & 15u) != 0)
    return msa::invalid(std::string(kOp) + ": scratch must be 16-byte aligned");
  if (B * Hkv * ((a.group + 15) / 16) * num_splits > INT32_MAX)
    return msa::unimplemented(kOp, "too many CTAs (B * Hkv * ceil(G / 16) * num_splits >= 2^31)");

  p.q = q.untyped_data();
  p.k_cache = k_cache.untyped_data();
  p.v_cache = v_cache.untyped_data();
  p.page_table = page_table.typed_data();
  p.kv_lens = kv_lens.typed_data();
  p.block_ids = block_ids.typed_data();
  p.o = o->untyped_data();
  p.lse = static_cast<float*>(lse->untyped_data());
  p.scratch = scratch->untyped_data();
  p.scratch_bytes = static_cast<int64_t>(scratch->size_bytes());
  p.batch = B;
  p.q_heads = Hq;
  p.kv_heads = Hkv;
  p.head_dim = D;
  p.num_pages = a.kv.num_pages;
  p.page_size = ps;
  p.max_pages = P;
  p.topk = K;
  p.sparse = sparse;
  p.scale = scale;
  p.k_scale = k_scale;
  p.v_scale = v_scale;
  p.num_splits = num_splits;
  if (B * Hq == 0) return ffi::Error::Success();  // nothing to write
  if (!msa::cuda::decode_supported(p)) return msa::unimplemented(kOp, "configuration not supported on CUDA");
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *o, stream));  // scratch: internal, not poisoned
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *lse, stream));
  return msa::cuda_status(kOp, msa::cuda::launch_decode(p, stream));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaDecodeCuda, DecodeCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()         // q [B,Hq,D]
                                  .Arg<ffi::AnyBuffer>()         // k_cache [num_pages,Hkv,page_size,D]
                                  .Arg<ffi::AnyBuffer>()         // v_cache
                                  .Arg<ffi::Buffer<ffi::S32>>()  // page_table [B,P]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens [B]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // block_ids [B,Hkv,K] (dense: K = 0)
                                  .Attr<float>("scale")
                                  .Attr<float>("k_scale")
                                  .Attr<float>("v_scale")
                                  .Attr<bool>("sparse")
                                  .Attr<int64_t>("num_splits")
                                  .Ret<ffi::AnyBuffer>()   // o [B,Hq,D]
                                  .Ret<ffi::AnyBuffer>()   // lse [B,Hq] f32
                                  .Ret<ffi::AnyBuffer>(),  // scratch (u8, decode_scratch_bytes)
                              {ffi::Traits::kCmdBufferCompatible});

// msa_decode on the CPU: one query per request at pos = L - 1 over a paged
// cache, dense (every resolvable token) or block-sparse with
// block_size = page_size (docs/ffi-contract.md).
#include <numeric>
#include <vector>

#include "ffi/common/attend_cpu.h"
#include "ffi/common/attn_args.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error DecodeCpuImpl(ffi::AnyBuffer q, ffi::AnyBuffer k_cache, ffi::AnyBuffer v_cache,
                         ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> kv_lens,
                         ffi::Buffer<ffi::S32> block_ids, float scale, float k_scale, float v_scale,
                         bool sparse, int64_t /*num_splits: GPU schedule*/,
                         ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::AnyBuffer> lse,
                         ffi::Result<ffi::AnyBuffer> /*scratch: GPU split partials*/) {
  constexpr const char* op = "msa_decode";
  msa::AttnArgs a;
  MSA_RETURN_IF_ERROR(msa::check_attn_inputs(op, "q", q, "k_cache", k_cache, "v_cache", &v_cache,
                                             /*paged=*/true, false, nullptr, nullptr, kv_lens,
                                             &page_table, &a));
  const int64_t b = a.q.tokens, hq = a.q.heads;
  MSA_RETURN_IF_ERROR(msa::check_dim(op, "q", q, 0, a.batch, "kv_lens.shape[0] (B)"));
  auto bd = block_ids.dimensions();
  if (sparse && (bd.size() != 3 || bd[0] != b || bd[1] != a.kv.num_heads))
    return msa::invalid(std::string(op) + ": block_ids must have shape [B,Hkv,K] = [" +
                        std::to_string(b) + "," + std::to_string(a.kv.num_heads) + ",*], got " +
                        msa::shape_str(block_ids));
  MSA_RETURN_IF_ERROR(
      msa::check_output(op, "o", *o, q.element_type(), {b, hq, a.q.head_dim}, "[B,Hq,D]"));
  MSA_RETURN_IF_ERROR(msa::check_output(op, "lse", *lse, ffi::DataType::F32, {b, hq}, "[B,Hq]"));

  // One query row per request: q_indptr = [0, 1, ..., B].
  std::vector<int32_t> q_indptr(size_t(b + 1));
  std::iota(q_indptr.begin(), q_indptr.end(), 0);
  msa::Sequences seq = msa::Sequences::make(q_indptr.data(), kv_lens.typed_data(), b, b, a.kv);
  msa::AttendJob job;
  job.q = q.untyped_data();
  job.q_type = q.element_type();
  job.tokens = b;
  job.q_heads = hq;
  job.head_dim = a.q.head_dim;
  job.group = a.group;
  job.kv = msa::KvSource{a.kv,
                         k_cache.untyped_data(),
                         k_cache.element_type(),
                         k_scale,
                         v_cache.untyped_data(),
                         v_cache.element_type(),
                         v_scale};
  job.scale = scale;
  job.causal = true;  // pos = L - 1: every token j < L
  job.block_size = a.kv.page_size;
  if (sparse) {
    job.block_ids = block_ids.typed_data();
    job.topk = bd[2];
  }
  job.o = o->untyped_data();
  job.o_type = o->element_type();
  job.lse = static_cast<float*>(lse->untyped_data());
  msa::attend_cpu(job, seq);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaDecodeCpu, DecodeCpuImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()         // q
                                  .Arg<ffi::AnyBuffer>()         // k_cache
                                  .Arg<ffi::AnyBuffer>()         // v_cache
                                  .Arg<ffi::Buffer<ffi::S32>>()  // page_table
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()  // block_ids
                                  .Attr<float>("scale")
                                  .Attr<float>("k_scale")
                                  .Attr<float>("v_scale")
                                  .Attr<bool>("sparse")
                                  .Attr<int64_t>("num_splits")  // GPU schedule, unused here
                                  .Ret<ffi::AnyBuffer>()    // o
                                  .Ret<ffi::AnyBuffer>()    // lse
                                  .Ret<ffi::AnyBuffer>());  // scratch, unused here

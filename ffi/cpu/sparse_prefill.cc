// msa_sparse_prefill on the CPU: each query row / head attends to the visible
// tokens of the distinct valid blocks its KV head selected (block_ids), dense
// or paged cache (docs/ffi-contract.md).
#include "ffi/common/attend_cpu.h"
#include "ffi/common/attn_args.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error SparsePrefillCpuImpl(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                                ffi::Buffer<ffi::S32> block_ids, ffi::Buffer<ffi::S32> q_indptr,
                                ffi::Buffer<ffi::S32> kv_indptr, ffi::Buffer<ffi::S32> kv_lens,
                                ffi::Buffer<ffi::S32> page_table, float scale, float k_scale,
                                float v_scale, bool causal, bool paged, int64_t block_size,
                                int64_t /*q_chunk: GPU pass schedule*/,
                                int64_t /*q_ranges: GPU work order*/,
                                ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::AnyBuffer> lse,
                                ffi::Result<ffi::AnyBuffer> /*scratch: GPU passes*/) {
  constexpr const char* op = "msa_sparse_prefill";
  msa::AttnArgs a;
  MSA_RETURN_IF_ERROR(msa::check_attn_inputs(op, "q", q, "k", k, "v", &v, paged, false, &q_indptr,
                                             &kv_indptr, kv_lens, &page_table, &a));
  const int64_t t = a.q.tokens, hq = a.q.heads;
  auto bd = block_ids.dimensions();
  if (bd.size() != 3 || bd[0] != t || bd[1] != a.kv.num_heads)
    return msa::invalid(std::string(op) + ": block_ids must have shape [T,Hkv,K] = [" +
                        std::to_string(t) + "," + std::to_string(a.kv.num_heads) + ",*], got " +
                        msa::shape_str(block_ids));
  MSA_RETURN_IF_ERROR(msa::check_block_size(op, block_size, a.kv));
  MSA_RETURN_IF_ERROR(
      msa::check_output(op, "o", *o, q.element_type(), {t, hq, a.q.head_dim}, "[T,Hq,D]"));
  MSA_RETURN_IF_ERROR(msa::check_output(op, "lse", *lse, ffi::DataType::F32, {t, hq}, "[T,Hq]"));

  msa::Sequences seq =
      msa::Sequences::make(q_indptr.typed_data(), kv_lens.typed_data(), a.batch, t, a.kv);
  msa::AttendJob job;
  job.q = q.untyped_data();
  job.q_type = q.element_type();
  job.tokens = t;
  job.q_heads = hq;
  job.head_dim = a.q.head_dim;
  job.group = a.group;
  job.kv = msa::KvSource{a.kv,          k.untyped_data(), k.element_type(), k_scale,
                         v.untyped_data(), v.element_type(), v_scale};
  job.scale = scale;
  job.causal = causal;
  job.block_size = block_size;
  job.block_ids = block_ids.typed_data();
  job.topk = bd[2];
  job.o = o->untyped_data();
  job.o_type = o->element_type();
  job.lse = static_cast<float*>(lse->untyped_data());
  msa::attend_cpu(job, seq);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaSparsePrefillCpu, SparsePrefillCpuImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()         // q
                                  .Arg<ffi::AnyBuffer>()         // k
                                  .Arg<ffi::AnyBuffer>()         // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // block_ids
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
                                  .Attr<int64_t>("q_chunk")  // GPU pass schedule, unused here
                                  .Attr<int64_t>("q_ranges")  // GPU work order, unused here
                                  .Ret<ffi::AnyBuffer>()    // o
                                  .Ret<ffi::AnyBuffer>()    // lse
                                  .Ret<ffi::AnyBuffer>());  // scratch, unused here

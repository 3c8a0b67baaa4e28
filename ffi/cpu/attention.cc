// msa_attention on the CPU: dense / paged (causal) softmax attention of every
// query row over its visible KV tokens, with lse and optional per-block
// score maxima (docs/ffi-contract.md).
#include "ffi/common/attend_cpu.h"
#include "ffi/common/attn_args.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error AttentionCpuImpl(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                            ffi::Buffer<ffi::S32> q_indptr, ffi::Buffer<ffi::S32> kv_indptr,
                            ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> page_table,
                            float scale, float k_scale, float v_scale, bool causal, bool paged,
                            int64_t block_size, ffi::Result<ffi::AnyBuffer> o,
                            ffi::Result<ffi::AnyBuffer> lse, ffi::Result<ffi::AnyBuffer> block_max) {
  constexpr const char* op = "msa_attention";
  msa::AttnArgs a;
  MSA_RETURN_IF_ERROR(msa::check_attn_inputs(op, "q", q, "k", k, "v", &v, paged, false, &q_indptr,
                                             &kv_indptr, kv_lens, &page_table, &a));
  const int64_t t = a.q.tokens, hq = a.q.heads;
  MSA_RETURN_IF_ERROR(
      msa::check_output(op, "o", *o, q.element_type(), {t, hq, a.q.head_dim}, "[T,Hq,D]"));
  MSA_RETURN_IF_ERROR(msa::check_output(op, "lse", *lse, ffi::DataType::F32, {t, hq}, "[T,Hq]"));
  MSA_RETURN_IF_ERROR(
      msa::check_output(op, "block_max", *block_max, ffi::DataType::F32, {t, hq, -1}, "[T,Hq,NB]"));
  const int64_t nb = block_max->dimensions()[2];
  if (nb > 0) MSA_RETURN_IF_ERROR(msa::check_block_size(op, block_size, a.kv));

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
  job.block_max = static_cast<float*>(block_max->untyped_data());
  job.num_blocks = nb;
  job.o = o->untyped_data();
  job.o_type = o->element_type();
  job.lse = static_cast<float*>(lse->untyped_data());
  msa::attend_cpu(job, seq);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaAttentionCpu, AttentionCpuImpl,
                              ffi::Ffi::Bind()
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
                                  .Ret<ffi::AnyBuffer>()    // o
                                  .Ret<ffi::AnyBuffer>()    // lse
                                  .Ret<ffi::AnyBuffer>());  // block_max

// msa_sparse_prefill on the GPU (docs/ffi-contract.md): decode and check the
// arguments, launch the KV-outer kernels on XLA's stream
// (cuda/sparse_prefill/sparse_prefill.h). No host sync and no allocation: the
// reverse CSR, work list and per-slot partials live in the `scratch` output,
// sized by the wrapper with sparse_prefill_scratch_bytes (CUDA-graph safe).
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "cuda/sparse_prefill/sparse_prefill.h"
#include "ffi/common/attn_args.h"
#include "ffi/common/checks.h"
#include "ffi/cuda/elem_type.h"
#include "ffi/cuda/launch_check.h"
#include "ffi/cuda/poison.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

constexpr const char* kOp = "msa_sparse_prefill";

ffi::Error SparsePrefillCudaImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                                 ffi::Buffer<ffi::S32> block_ids, ffi::Buffer<ffi::S32> q_indptr,
                                 ffi::Buffer<ffi::S32> kv_indptr, ffi::Buffer<ffi::S32> kv_lens,
                                 ffi::Buffer<ffi::S32> page_table, float scale, float k_scale, float v_scale,
                                 bool causal, bool paged, int64_t block_size, int64_t q_chunk,
                                 int64_t q_ranges, ffi::Result<ffi::AnyBuffer> o, ffi::Result<ffi::AnyBuffer> lse,
                                 ffi::Result<ffi::AnyBuffer> scratch) {
  msa::AttnArgs a;
  MSA_RETURN_IF_ERROR(msa::check_attn_inputs(kOp, "q", q, "k", k, "v", &v, paged, false, &q_indptr, &kv_indptr,
                                             kv_lens, &page_table, &a));
  const int64_t T = a.q.tokens, Hq = a.q.heads, D = a.q.head_dim, Hkv = a.kv.num_heads, B = a.batch;
  auto bd = block_ids.dimensions();
  if (bd.size() != 3 || bd[0] != T || bd[1] != Hkv)
    return msa::invalid(std::string(kOp) + ": block_ids must have shape [T,Hkv,K] = [" + std::to_string(T) + "," +
                        std::to_string(Hkv) + ",*], got " + msa::shape_str(block_ids));
  const int64_t K = bd[2];
  MSA_RETURN_IF_ERROR(msa::check_block_size(kOp, block_size, a.kv));
  MSA_RETURN_IF_ERROR(msa::check_output(kOp, "o", *o, q.element_type(), {T, Hq, D}, "[T,Hq,D]"));
  MSA_RETURN_IF_ERROR(msa::check_output(kOp, "lse", *lse, ffi::DataType::F32, {T, Hq}, "[T,Hq]"));
  if (q_chunk < 1) return msa::invalid(std::string(kOp) + ": q_chunk must be >= 1, got " + std::to_string(q_chunk));
  if (q_ranges < 1)
    return msa::invalid(std::string(kOp) + ": q_ranges must be >= 1, got " + std::to_string(q_ranges));
  if (K < 1) return msa::invalid(std::string(kOp) + ": block_ids needs at least one slot");

  // What the CUDA kernels implement.
  if (q.element_type() == ffi::DataType::F32)
    return msa::unimplemented(kOp, "the CUDA kernel supports bfloat16 / float16 queries, not float32");
  if (k.element_type() != v.element_type())
    return msa::unimplemented(kOp, "the CUDA kernel needs k and v of the same dtype");
  if (D != 64 && D != 128)
    return msa::unimplemented(kOp, "the CUDA kernel supports head_dim 64 and 128, got " + std::to_string(D));
  if (block_size != 64 && block_size != 128)
    return msa::unimplemented(kOp, "the CUDA kernel supports block_size (page_size) 64 and 128, got " +
                                       std::to_string(block_size));
  if (a.group > 128)
    return msa::unimplemented(kOp, "the CUDA kernel supports Hq / Hkv <= 128, got " + std::to_string(a.group));

  msa::cuda::SparsePrefillParams p{};
  if (!msa::to_elem_type(q.element_type(), &p.q_type) || !msa::to_elem_type(k.element_type(), &p.kv_type))
    return msa::invalid(std::string(kOp) + ": unsupported dtype");
  p.total_blocks = msa::cuda::sparse_prefill_total_blocks(paged, B, block_size, a.kv.dense_rows, a.kv.max_pages);
  const msa::cuda::SparsePrefillScratch s =
      msa::cuda::sparse_prefill_scratch_layout(T, Hq, Hkv, D, K, p.total_blocks, q_chunk, B, q_ranges);
  // 32-bit device indices: entries (tl * K + slot), work items, lists, block ids.
  const int64_t lim = int64_t(1) << 31;
  if (s.total < 0 || s.n_entries >= lim || s.work_items >= lim || s.n_lists * s.words >= lim ||
      p.total_blocks >= lim || T >= lim || a.kv.dense_rows >= lim || (paged && a.kv.num_pages >= lim))
    return msa::invalid(std::string(kOp) + ": problem too large for the CUDA kernel (lower q_chunk or q_ranges?)");
  if (static_cast<int64_t>(scratch->size_bytes()) < s.total)
    return msa::invalid(std::string(kOp) + ": scratch output too small: " + std::to_string(scratch->size_bytes()) +
                        " bytes, need " + std::to_string(s.total) + " (sparse_prefill_scratch_bytes(T=" +
                        std::to_string(T) + ", Hq=" + std::to_string(Hq) + ", Hkv=" + std::to_string(Hkv) +
                        ", D=" + std::to_string(D) + ", K=" + std::to_string(K) + ", total_blocks=" +
                        std::to_string(p.total_blocks) + ", q_chunk=" + std::to_string(q_chunk) + ", B=" +
                        std::to_string(B) + ", q_ranges=" + std::to_string(q_ranges) + "))");
  if ((reinterpret_cast<uintptr_t>(scratch->untyped_data()) & 15u) != 0)
    return msa::invalid(std::string(kOp) + ": scratch must be 16-byte aligned");

  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.block_ids = block_ids.typed_data();
  p.q_indptr = q_indptr.typed_data();
  p.kv_indptr = kv_indptr.typed_data();
  p.kv_lens = kv_lens.typed_data();
  p.page_table = page_table.typed_data();
  p.o = o->untyped_data();
  p.lse = static_cast<float*>(lse->untyped_data());
  p.scratch = scratch->untyped_data();
  p.scratch_bytes = static_cast<int64_t>(scratch->size_bytes());
  p.tokens = T;
  p.q_heads = Hq;
  p.kv_heads = Hkv;
  p.head_dim = D;
  p.topk = K;
  p.batch = B;
  p.dense_rows = a.kv.dense_rows;
  p.num_pages = a.kv.num_pages;
  p.page_size = a.kv.page_size;
  p.max_pages = a.kv.max_pages;
  p.block_size = block_size;
  p.q_chunk = q_chunk;
  p.q_ranges = q_ranges;
  p.scale = scale;
  p.k_scale = k_scale;
  p.v_scale = v_scale;
  p.causal = causal;
  p.paged = paged;
  if (T * Hq == 0) return ffi::Error::Success();  // nothing to write
  if (!msa::cuda::sparse_prefill_supported(p)) return msa::unimplemented(kOp, "configuration not supported on CUDA");
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *o, stream));  // scratch: internal, not poisoned
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *lse, stream));
  return msa::cuda_status(kOp, msa::cuda::launch_sparse_prefill(p, stream));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaSparsePrefillCuda, SparsePrefillCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()         // q [T,Hq,D]
                                  .Arg<ffi::AnyBuffer>()         // k
                                  .Arg<ffi::AnyBuffer>()         // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // block_ids [T,Hkv,K]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // q_indptr [B+1]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_indptr [B+1]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens [B]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // page_table [B,P]
                                  .Attr<float>("scale")
                                  .Attr<float>("k_scale")
                                  .Attr<float>("v_scale")
                                  .Attr<bool>("causal")
                                  .Attr<bool>("paged")
                                  .Attr<int64_t>("block_size")
                                  .Attr<int64_t>("q_chunk")
                                  .Attr<int64_t>("q_ranges")
                                  .Ret<ffi::AnyBuffer>()   // o [T,Hq,D]
                                  .Ret<ffi::AnyBuffer>()   // lse [T,Hq] f32
                                  .Ret<ffi::AnyBuffer>(),  // scratch (u8)
                              {ffi::Traits::kCmdBufferCompatible});

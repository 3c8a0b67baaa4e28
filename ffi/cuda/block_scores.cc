// msa_block_scores on the GPU (docs/ffi-contract.md): decode and check the
// arguments, launch the kernel on XLA's stream. No host sync and no
// allocation (CUDA-graph safe); device data (indptrs, lengths, page ids) are
// range-checked by the kernel.
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "cuda/block_scores/block_scores.h"
#include "ffi/common/checks.h"
#include "ffi/cuda/elem_type.h"
#include "ffi/cuda/launch_check.h"
#include "ffi/cuda/poison.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

constexpr const char* kOp = "msa_block_scores";

ffi::Error BlockScoresCudaImpl(cudaStream_t stream, ffi::AnyBuffer q_idx, ffi::AnyBuffer k_idx,
                               ffi::Buffer<ffi::S32> q_indptr, ffi::Buffer<ffi::S32> kv_indptr,
                               ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> page_table, float scale,
                               float k_scale, bool causal, bool paged, int64_t block_size,
                               ffi::Result<ffi::Buffer<ffi::F32>> scores) {
  MSA_RETURN_IF_ERROR(msa::check_rank(kOp, "q_idx", q_idx, 3));
  MSA_RETURN_IF_ERROR(msa::check_dtype(kOp, "q_idx", q_idx, {ffi::DataType::BF16, ffi::DataType::F16}));
  if (k_idx.element_type() != q_idx.element_type() && k_idx.element_type() != ffi::DataType::F8E4M3FN)
    return msa::invalid("msa_block_scores: k_idx must have q_idx's dtype or float8_e4m3fn");
  auto qd = q_idx.dimensions();
  const int64_t T = qd[0], H = qd[1], D = qd[2];
  if (D != 64 && D != 128)
    return msa::unimplemented(kOp, "the CUDA kernel supports head_dim 64 and 128, got " + std::to_string(D));

  msa::cuda::BlockScoresParams p{};
  if (!msa::to_elem_type(q_idx.element_type(), &p.q_type) || !msa::to_elem_type(k_idx.element_type(), &p.k_type))
    return msa::invalid("msa_block_scores: unsupported dtype");

  // Sequence metadata.
  if (q_indptr.dimensions().size() != 1 || q_indptr.dimensions()[0] < 1)
    return msa::invalid("msa_block_scores: q_indptr must be [B+1]");
  const int64_t B = q_indptr.dimensions()[0] - 1;
  if (kv_indptr.dimensions().size() != 1 || kv_indptr.dimensions()[0] != B + 1)
    return msa::invalid("msa_block_scores: kv_indptr must be [B+1] with B+1 = q_indptr.shape[0]");
  if (kv_lens.dimensions().size() != 1 || kv_lens.dimensions()[0] != B)
    return msa::invalid("msa_block_scores: kv_lens must be [B] with B+1 = q_indptr.shape[0]");

  // Keys.
  if (paged) {
    MSA_RETURN_IF_ERROR(msa::check_rank(kOp, "k_idx", k_idx, 4));
    auto kd = k_idx.dimensions();
    MSA_RETURN_IF_ERROR(msa::check_dim(kOp, "k_idx", k_idx, 1, 1, "1 (one index key head)"));
    MSA_RETURN_IF_ERROR(msa::check_dim(kOp, "k_idx", k_idx, 3, D, "q_idx head_dim"));
    if (page_table.dimensions().size() != 2 || page_table.dimensions()[0] != B)
      return msa::invalid("msa_block_scores: page_table must be [B, max_pages]");
    p.num_pages = kd[0];
    p.page_size = kd[2];
    p.max_pages = page_table.dimensions()[1];
    if (block_size != p.page_size)
      return msa::invalid("msa_block_scores: paged block_size must equal page_size (" +
                          std::to_string(p.page_size) + "), got " + std::to_string(block_size));
    if (p.num_pages > INT32_MAX || p.max_pages * p.page_size >= (int64_t(1) << 31))
      return msa::invalid("msa_block_scores: paged KV capacity must be below 2^31 tokens");
  } else {
    MSA_RETURN_IF_ERROR(msa::check_rank(kOp, "k_idx", k_idx, 2));
    MSA_RETURN_IF_ERROR(msa::check_dim(kOp, "k_idx", k_idx, 1, D, "q_idx head_dim"));
    p.dense_rows = k_idx.dimensions()[0];
    if (p.dense_rows >= (int64_t(1) << 31))
      return msa::invalid("msa_block_scores: k_idx must have fewer than 2^31 rows");
  }
  if (block_size <= 0) return msa::invalid("msa_block_scores: block_size must be positive");
  if (block_size % 64 != 0)
    return msa::unimplemented(kOp, "the CUDA kernel needs block_size (and page_size) to be a multiple of 64, got " +
                                       std::to_string(block_size));

  // Output [T, H, NB].
  auto od = scores->dimensions();
  if (od.size() != 3 || od[0] != T || od[1] != H)
    return msa::invalid("msa_block_scores: scores must be [T, H, num_blocks] with T, H from q_idx");
  const int64_t NB = od[2];
  if (T >= (int64_t(1) << 31) || T * H / 128 + B + 2 >= (int64_t(1) << 31) || NB >= (int64_t(1) << 31))
    return msa::invalid("msa_block_scores: problem too large for the CUDA kernel");

  p.q = q_idx.untyped_data();
  p.k = k_idx.untyped_data();
  p.q_indptr = q_indptr.typed_data();
  p.kv_indptr = kv_indptr.typed_data();
  p.kv_lens = kv_lens.typed_data();
  p.page_table = page_table.typed_data();
  p.scores = scores->typed_data();
  p.total_q = T;
  p.heads = H;
  p.head_dim = D;
  p.num_blocks = NB;
  p.batch = B;
  p.block_size = block_size;
  p.scale = scale;
  p.k_scale = k_scale;
  p.causal = causal;
  p.paged = paged;
  if (T * H == 0 || NB == 0) return ffi::Error::Success();  // nothing to write
  if (!msa::cuda::block_scores_supported(p))
    return msa::unimplemented(kOp, "configuration not supported on CUDA");
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *scores, stream));
  return msa::cuda_status(kOp, msa::cuda::launch_block_scores(p, stream));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaBlockScoresCuda, BlockScoresCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()         // q_idx
                                  .Arg<ffi::AnyBuffer>()         // k_idx
                                  .Arg<ffi::Buffer<ffi::S32>>()  // q_indptr
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_indptr
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()  // page_table
                                  .Attr<float>("scale")
                                  .Attr<float>("k_scale")
                                  .Attr<bool>("causal")
                                  .Attr<bool>("paged")
                                  .Attr<int64_t>("block_size")
                                  .Ret<ffi::Buffer<ffi::F32>>(),  // scores
                              {ffi::Traits::kCmdBufferCompatible});

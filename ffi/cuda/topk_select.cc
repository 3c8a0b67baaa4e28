// msa_topk_select on the GPU: decode and check the arguments, launch the
// kernels on XLA's stream (cuda/topk_select/topk_select.h). No host sync and no
// allocation: the merge buffer of split rows is the `scratch` output, sized by
// the wrapper with topk_scratch_bytes (CUDA-graph safe).
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "cuda/topk_select/topk_select.h"
#include "ffi/common/checks.h"
#include "ffi/cuda/launch_check.h"
#include "ffi/cuda/poison.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

constexpr const char* kOp = "msa_topk_select";

ffi::Error TopkSelectCudaImpl(cudaStream_t stream, ffi::AnyBuffer scores,
                              ffi::Buffer<ffi::S32> q_indptr, ffi::Buffer<ffi::S32> kv_lens,
                              int64_t local_blocks, int64_t sink_blocks, int64_t block_size,
                              bool causal, int64_t num_splits, ffi::Result<ffi::Buffer<ffi::S32>> ids,
                              ffi::Result<ffi::AnyBuffer> scratch) {
  MSA_RETURN_IF_ERROR(msa::check_rank(kOp, "scores", scores, 3));
  MSA_RETURN_IF_ERROR(msa::check_dtype(kOp, "scores", scores, {ffi::DataType::F32}));
  const auto sd = scores.dimensions();
  const int64_t T = sd[0], H = sd[1], NB = sd[2];

  if (q_indptr.dimensions().size() != 1 || q_indptr.dimensions()[0] < 1)
    return msa::invalid("msa_topk_select: q_indptr must have shape [B+1] with B >= 0");
  const int64_t B = q_indptr.dimensions()[0] - 1;
  if (kv_lens.dimensions().size() != 1 || kv_lens.dimensions()[0] != B)
    return msa::invalid("msa_topk_select: kv_lens must have shape [B] = [" + std::to_string(B) +
                        "] (q_indptr has B+1 entries)");

  const auto od = ids->dimensions();
  if (od.size() != 3 || od[0] != T || od[1] != H)
    return msa::invalid("msa_topk_select: ids must have shape [T, H, K] = [" + std::to_string(T) +
                        ", " + std::to_string(H) + ", K] like scores " + msa::dims_str(scores));
  const int64_t K = od[2];

  if (block_size < 1)
    return msa::invalid("msa_topk_select: block_size must be >= 1, got " + std::to_string(block_size));
  if (local_blocks < 0 || sink_blocks < 0 || local_blocks + sink_blocks > K)
    return msa::invalid("msa_topk_select: need 0 <= local_blocks, 0 <= sink_blocks and "
                        "local_blocks + sink_blocks <= topk (" + std::to_string(local_blocks) +
                        " + " + std::to_string(sink_blocks) + " > " + std::to_string(K) + ")");
  if (NB > INT32_MAX || K > INT32_MAX)
    return msa::invalid("msa_topk_select: num_blocks and topk must fit in int32");
  if (num_splits < 1)
    return msa::invalid("msa_topk_select: num_splits must be >= 1, got " + std::to_string(num_splits));

  const int64_t rows = T * H;
  if (rows == 0 || K == 0) return ffi::Error::Success();
  const int64_t need = msa::cuda::topk_scratch_bytes(rows, NB, K, num_splits);
  if (need < 0)
    return msa::invalid("msa_topk_select: unsupported num_splits=" + std::to_string(num_splits) +
                        " for " + std::to_string(NB) + " blocks and topk " + std::to_string(K) +
                        " (segments hold at most 2048 blocks: num_splits >= ceil(num_blocks / "
                        "2048); split rows need topk <= 1024)");
  if (static_cast<int64_t>(scratch->size_bytes()) < need)
    return msa::invalid("msa_topk_select: scratch output too small: " +
                        std::to_string(scratch->size_bytes()) + " bytes, need " +
                        std::to_string(need) + " (topk_scratch_bytes(rows=" + std::to_string(rows) +
                        ", nb=" + std::to_string(NB) + ", k=" + std::to_string(K) +
                        ", num_splits=" + std::to_string(num_splits) + "))");
  if (need > 0 && (reinterpret_cast<uintptr_t>(scratch->untyped_data()) & 15u) != 0)
    return msa::invalid("msa_topk_select: scratch must be 16-byte aligned");

  msa::cuda::TopkSelectParams p{};
  p.scores = static_cast<const float*>(scores.untyped_data());
  p.q_indptr = q_indptr.typed_data();
  p.kv_lens = kv_lens.typed_data();
  p.ids = ids->typed_data();
  p.scratch = scratch->untyped_data();
  p.scratch_bytes = static_cast<int64_t>(scratch->size_bytes());
  p.tokens = T;
  p.heads = H;
  p.nb = NB;
  p.k = K;
  p.batch = B;
  p.local_blocks = local_blocks;
  p.sink_blocks = sink_blocks;
  p.block_size = block_size;
  p.causal = causal;
  p.num_splits = num_splits;
  MSA_RETURN_IF_ERROR(msa::poison_output(kOp, *ids, stream));  // scratch: internal, not poisoned
  return msa::cuda_status(kOp, msa::cuda::launch_topk_select(p, stream));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaTopkSelectCuda, TopkSelectCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()           // scores [T,H,NB] f32
                                  .Arg<ffi::Buffer<ffi::S32>>()    // q_indptr [B+1]
                                  .Arg<ffi::Buffer<ffi::S32>>()    // kv_lens [B]
                                  .Attr<int64_t>("local_blocks")
                                  .Attr<int64_t>("sink_blocks")
                                  .Attr<int64_t>("block_size")
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("num_splits")
                                  .Ret<ffi::Buffer<ffi::S32>>()    // ids [T,H,K]
                                  .Ret<ffi::AnyBuffer>(),          // scratch (bytes)
                              {ffi::Traits::kCmdBufferCompatible});

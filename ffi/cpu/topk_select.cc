// msa_topk_select on the CPU: per query row / head, the forced local and sink
// blocks plus the best-scoring other visible blocks, ascending ids then -1
// (docs/ffi-contract.md). Ranking: descending score (-0.0 equals +0.0), NaN
// below every number (-inf included) but still eligible, ties to the lower id.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ffi/common/attend_cpu.h"
#include "ffi/common/attn_args.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

// Ranking key of a score, larger is better: the float order as uint32
// (-0.0 equal to +0.0), every NaN below -inf.
uint32_t rank_key(float x) {
  if (std::isnan(x)) return 0;
  const uint32_t u = msa::float_to_bits(x == 0.0f ? 0.0f : x);
  return (u >> 31) ? ~u : (u | 0x80000000u);
}

// Number of blocks holding a token visible to row i of sequence b, clipped to nb.
int64_t visible_blocks(const msa::Sequences& seq, int64_t b, int64_t i, bool causal,
                       int64_t block_size, int64_t nb) {
  int64_t n = msa::ceil_div(seq.kv_len[b], block_size);
  if (causal) {
    int64_t pos = seq.pos(b, i);
    if (pos < 0) return 0;
    n = std::min(n, pos / block_size + 1);
  }
  return std::min(n, nb);
}

ffi::Error TopkSelectCpuImpl(ffi::AnyBuffer scores, ffi::Buffer<ffi::S32> q_indptr,
                             ffi::Buffer<ffi::S32> kv_lens, int64_t local_blocks,
                             int64_t sink_blocks, int64_t block_size, bool causal,
                             int64_t /*num_splits: GPU schedule*/,
                             ffi::Result<ffi::Buffer<ffi::S32>> ids,
                             ffi::Result<ffi::AnyBuffer> /*scratch: GPU split path*/) {
  constexpr const char* op = "msa_topk_select";
  MSA_RETURN_IF_ERROR(msa::check_rank(op, "scores", scores, 3));
  MSA_RETURN_IF_ERROR(msa::check_dtype(op, "scores", scores, {ffi::DataType::F32}));
  auto sd = scores.dimensions();
  const int64_t t = sd[0], h = sd[1], nb = sd[2];
  if (kv_lens.dimensions().size() != 1)
    return msa::invalid(std::string(op) + ": kv_lens must have shape [B], got " +
                        msa::shape_str(kv_lens));
  const int64_t batch = kv_lens.dimensions()[0];
  MSA_RETURN_IF_ERROR(msa::check_meta_shape(op, "q_indptr", q_indptr, {batch + 1}, "[B+1]"));
  if (block_size < 1)
    return msa::invalid(std::string(op) + ": block_size must be >= 1, got " +
                        std::to_string(block_size));
  if (local_blocks < 0 || sink_blocks < 0)
    return msa::invalid(std::string(op) + ": local_blocks and sink_blocks must be >= 0");
  auto od = ids->dimensions();
  if (od.size() != 3 || od[0] != t || od[1] != h)
    return msa::invalid(std::string(op) + ": output ids must have shape [T,H,K] = [" +
                        std::to_string(t) + "," + std::to_string(h) + ",*], got " +
                        msa::shape_str(*ids));
  const int64_t k = od[2];

  int32_t* out = ids->typed_data();
  std::fill(out, out + t * h * k, int32_t(-1));
  if (k == 0) return ffi::Error::Success();

  // No cache here: the capacity is the blocks the scores have, so kv_lens is
  // clipped to [0, NB * block_size] (a paged layout of NB pages of block_size).
  msa::KvLayout blocks_only;
  blocks_only.paged = true;
  blocks_only.page_size = block_size;
  blocks_only.max_pages = nb;
  if (nb > 0 && block_size > std::numeric_limits<int64_t>::max() / nb) {
    blocks_only.page_size = int64_t(1) << 32;  // beyond any int32 length: no overflow
    blocks_only.max_pages = 1;
  }
  msa::Sequences seq =
      msa::Sequences::make(q_indptr.typed_data(), kv_lens.typed_data(), batch, t, blocks_only);

  const float* sc = static_cast<const float*>(scores.untyped_data());
  std::vector<int32_t> chosen, cand;
  for (int64_t b = 0; b < seq.batch; ++b) {
    for (int64_t i = 0; i < seq.q_len[b]; ++i) {
      const int64_t tok = seq.q_begin[b] + i;
      const int64_t nvis = visible_blocks(seq, b, i, causal, block_size, nb);
      if (nvis <= 0) continue;
      // Forced: sinks [0, sink_end) and locals [local_begin, nvis).
      const int64_t sink_end = std::min(sink_blocks, nvis);
      const int64_t local_begin = std::max<int64_t>(0, nvis - local_blocks);
      for (int64_t hh = 0; hh < h; ++hh) {
        const float* row = sc + (tok * h + hh) * nb;
        chosen.clear();
        cand.clear();
        for (int64_t c = 0; c < nvis; ++c) {
          if (c < sink_end || c >= local_begin) chosen.push_back(int32_t(c));
          else cand.push_back(int32_t(c));
        }
        const int64_t slots = std::max<int64_t>(0, k - int64_t(chosen.size()));
        const int64_t take = std::min<int64_t>(slots, int64_t(cand.size()));
        if (take > 0) {
          auto better = [row](int32_t x, int32_t y) {
            const uint32_t kx = rank_key(row[x]), ky = rank_key(row[y]);
            return kx != ky ? kx > ky : x < y;
          };
          std::partial_sort(cand.begin(), cand.begin() + take, cand.end(), better);
          chosen.insert(chosen.end(), cand.begin(), cand.begin() + take);
        }
        std::sort(chosen.begin(), chosen.end());
        // chosen can only exceed k when local_blocks + sink_blocks > k (the
        // wrapper forbids it): keep the lowest ids, never write past k.
        const int64_t n = std::min<int64_t>(k, int64_t(chosen.size()));
        std::copy(chosen.begin(), chosen.begin() + n, out + (tok * h + hh) * k);
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaTopkSelectCpu, TopkSelectCpuImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()         // scores
                                  .Arg<ffi::Buffer<ffi::S32>>()  // q_indptr
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens
                                  .Attr<int64_t>("local_blocks")
                                  .Attr<int64_t>("sink_blocks")
                                  .Attr<int64_t>("block_size")
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("num_splits")   // GPU schedule, unused here
                                  .Ret<ffi::Buffer<ffi::S32>>()  // ids
                                  .Ret<ffi::AnyBuffer>());       // scratch, unused here

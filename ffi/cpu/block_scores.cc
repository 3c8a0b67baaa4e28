// msa_block_scores on the CPU (index branch): per query row / index head, the
// max over each block of the visible index keys of scale * q_idx . k_idx
// (docs/ffi-contract.md).
#include <algorithm>

#include "ffi/common/attend_cpu.h"
#include "ffi/common/attn_args.h"
#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error BlockScoresCpuImpl(ffi::AnyBuffer q_idx, ffi::AnyBuffer k_idx,
                              ffi::Buffer<ffi::S32> q_indptr, ffi::Buffer<ffi::S32> kv_indptr,
                              ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> page_table,
                              float scale, float k_scale, bool causal, bool paged,
                              int64_t block_size, ffi::Result<ffi::AnyBuffer> scores) {
  constexpr const char* op = "msa_block_scores";
  msa::AttnArgs a;
  MSA_RETURN_IF_ERROR(msa::check_attn_inputs(op, "q_idx", q_idx, "k_idx", k_idx, nullptr, nullptr,
                                             paged, /*index_keys=*/true, &q_indptr, &kv_indptr,
                                             kv_lens, &page_table, &a));
  const int64_t t = a.q.tokens, h = a.q.heads;
  MSA_RETURN_IF_ERROR(
      msa::check_output(op, "scores", *scores, ffi::DataType::F32, {t, h, -1}, "[T,H,NB]"));
  const int64_t nb = scores->dimensions()[2];
  MSA_RETURN_IF_ERROR(msa::check_block_size(op, block_size, a.kv));

  float* out = static_cast<float*>(scores->untyped_data());
  std::fill(out, out + t * h * nb, msa::kNegInf);
  if (nb == 0) return ffi::Error::Success();

  msa::Sequences seq =
      msa::Sequences::make(q_indptr.typed_data(), kv_lens.typed_data(), a.batch, t, a.kv);
  const msa::KvSource src{a.kv, k_idx.untyped_data(), k_idx.element_type(), k_scale};
  msa::KvRows kv(src);
  msa::QueryRow row(a.q.head_dim);
  for (int64_t b = 0; b < seq.batch; ++b) {
    kv.bind(seq, b, 0);
    for (int64_t i = 0; i < seq.q_len[b]; ++i) {
      const int64_t tok = seq.q_begin[b] + i;
      const int64_t vend = seq.visible_end(b, i, causal);
      for (int64_t hh = 0; hh < h; ++hh) {
        const int64_t row_id = tok * h + hh;
        row.load(q_idx.untyped_data(), q_idx.element_type(), row_id * a.q.head_dim);
        float* bm = out + row_id * nb;
        for (int64_t j = 0; j < vend; ++j) {
          const int64_t c = j / block_size;
          if (c >= nb) break;  // tokens past the last output column are not scored
          const float* k = kv.key(j);
          if (!k) continue;
          bm[c] = msa::nan_max(bm[c], float(row.score(k, scale)));
        }
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsaBlockScoresCpu, BlockScoresCpuImpl,
                              ffi::Ffi::Bind()
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
                                  .Ret<ffi::AnyBuffer>());  // scores

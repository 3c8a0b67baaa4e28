// Launcher of msa_sparse_prefill: the setup, then per pass of q_chunk query
// rows the CSR build (mark, scan_fill), the main kernel and the combine
// (sparse_prefill.h).
// The number of passes and every grid depend on shapes and attributes only.
#include "cuda/sparse_prefill/internal.h"

namespace msa::cuda {

bool sparse_prefill_supported(const SparsePrefillParams& p) {
  const bool q_ok = p.q_type == ElemType::kBF16 || p.q_type == ElemType::kF16;
  const bool kv_ok = p.kv_type == p.q_type || p.kv_type == ElemType::kFP8E4M3;
  const bool d_ok = p.head_dim == 64 || p.head_dim == 128;
  const bool bs_ok = (p.block_size == 64 || p.block_size == 128) && (!p.paged || p.page_size == p.block_size);
  const bool g_ok = p.kv_heads >= 1 && p.q_heads % p.kv_heads == 0 && p.q_heads / p.kv_heads <= kSparsePrefillRows;
  return q_ok && kv_ok && d_ok && bs_ok && g_ok && p.topk >= 1 && p.q_chunk >= 1 &&
         p.q_ranges >= 1;
}

cudaError_t launch_sparse_prefill(const SparsePrefillParams& p, cudaStream_t stream) {
  using namespace sparse_prefill;
  if (!sparse_prefill_supported(p)) return cudaErrorInvalidValue;
  if (p.tokens == 0) return cudaSuccess;
  const SparsePrefillScratch s = sparse_prefill_scratch_layout(p.tokens, p.q_heads, p.kv_heads, p.head_dim, p.topk,
                                                               p.total_blocks, p.q_chunk, p.batch, p.q_ranges);
  if (s.total < 0 || s.total > p.scratch_bytes) return cudaErrorInvalidValue;
  // The CSR kernels index entries, work items and bitmap words with 32 bits
  // and pack entry / chunk prefixes in 31 bits each (the FFI handler checks the same).
  const int64_t lim = int64_t(1) << 31;
  if (s.n_entries >= lim || s.work_items >= lim || s.n_lists * s.words >= lim) return cudaErrorInvalidValue;
  uint8_t* base = static_cast<uint8_t*>(p.scratch);
  PassView v{};
  int32_t* seq = reinterpret_cast<int32_t*>(base + s.seq);
  v.qe = seq;
  v.kvb = seq + (p.batch + 1);
  v.len = v.kvb + p.batch;
  v.boff = v.len + p.batch;
  v.tile_state = reinterpret_cast<uint64_t*>(base + s.tile_state);
  v.bitmap = reinterpret_cast<uint32_t*>(base + s.bitmap);
  v.entries = reinterpret_cast<int32_t*>(base + s.entries);
  v.num_work = reinterpret_cast<int32_t*>(base + s.work);
  v.ticket = reinterpret_cast<int32_t*>(base + s.work + 128);
  v.work = reinterpret_cast<WorkItem*>(base + s.work + 256);
  v.part_lse = reinterpret_cast<float*>(base + s.part_lse);
  v.part_o = base + s.part_o;
  v.n_lists = s.n_lists;
  v.words = s.words;  // Wr: words per list (one query range)
  v.ranges = s.ranges;
  v.rows_per_item = s.rows_per_item;
  v.entry_cap = s.n_entries;
  csr_tiles(s.n_lists, s.words, &v.lists_per_tile, &v.n_tiles);
  if (8 * v.n_tiles > s.bitmap - s.tile_state) return cudaErrorInvalidValue;  // n_tiles <= N: never
  cudaError_t err = launch_setup(p, v, stream);
  if (err != cudaSuccess) return err;
  for (int64_t t0 = 0; t0 < p.tokens; t0 += s.tc) {
    v.t0 = t0;
    v.tc = std::min(s.tc, p.tokens - t0);
    // Work-item bound of this pass (a shorter last pass needs fewer).
    const int64_t e = v.tc * p.kv_heads * p.topk;
    v.work_items = (e + s.rows_per_item - 1) / s.rows_per_item + std::min(s.n_lists, e);
    if ((err = launch_csr(p, v, stream)) != cudaSuccess) return err;
    if ((err = launch_main(p, v, stream)) != cudaSuccess) return err;
    if ((err = launch_combine(p, v, stream)) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace msa::cuda

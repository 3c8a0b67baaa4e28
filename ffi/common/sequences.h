// Sequence metadata as the CPU handlers read it (docs/ffi-contract.md):
// query rows per sequence, runtime kv lengths clipped to capacity, bottom-right
// causal positions, and KV-token resolution for dense and paged caches. Every
// index coming from device data is range-checked here, once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace msa {

namespace ffi = xla::ffi;

// Where the KV tokens of one op live.
struct KvLayout {
  bool paged = false;
  int64_t num_heads = 0;   // Hkv
  int64_t head_dim = 0;    // D
  int64_t dense_rows = 0;  // Tk (dense)
  int64_t num_pages = 0;   // paged
  int64_t page_size = 0;   // paged
  int64_t max_pages = 0;   // page_table.shape[1]
  const int32_t* page_table = nullptr;
  const int32_t* kv_indptr = nullptr;
};

struct Sequences {
  int64_t batch = 0;
  std::vector<int64_t> q_begin, q_len, kv_begin, kv_len;

  // Builds the per-sequence view; q_indptr is clamped to [0, T] and made
  // monotone, kv_lens clipped to [0, capacity].
  static Sequences make(const int32_t* q_indptr, const int32_t* kv_lens, int64_t batch,
                        int64_t total_q, const KvLayout& kv) {
    Sequences s;
    s.batch = batch;
    s.q_begin.resize(batch);
    s.q_len.resize(batch);
    s.kv_begin.assign(batch, 0);
    s.kv_len.resize(batch);
    int64_t prev = 0;
    for (int64_t b = 0; b < batch; ++b) {
      int64_t lo = std::clamp<int64_t>(q_indptr[b], prev, total_q);
      int64_t hi = std::clamp<int64_t>(q_indptr[b + 1], lo, total_q);
      s.q_begin[b] = lo;
      s.q_len[b] = hi - lo;
      prev = lo;
      int64_t cap;
      if (kv.paged) {
        cap = kv.max_pages * kv.page_size;
      } else {
        int64_t kb = std::clamp<int64_t>(kv.kv_indptr[b], 0, kv.dense_rows);
        int64_t ke = std::clamp<int64_t>(kv.kv_indptr[b + 1], kb, kv.dense_rows);
        s.kv_begin[b] = kb;
        cap = ke - kb;
      }
      s.kv_len[b] = std::clamp<int64_t>(kv_lens[b], 0, cap);
    }
    return s;
  }

  // Bottom-right causal position of query row i of sequence b.
  int64_t pos(int64_t b, int64_t i) const { return kv_len[b] - q_len[b] + i; }

  // Last visible token + 1 for row i of sequence b.
  int64_t visible_end(int64_t b, int64_t i, bool causal) const {
    if (!causal) return kv_len[b];
    return std::clamp<int64_t>(pos(b, i) + 1, 0, kv_len[b]);
  }
};

// Flat element offset of K/V token j of sequence b, head h, element 0, or -1
// when the token cannot be resolved (page id out of range).
inline int64_t kv_offset(const KvLayout& kv, const Sequences& s, int64_t b, int64_t j, int64_t h) {
  if (!kv.paged) return ((s.kv_begin[b] + j) * kv.num_heads + h) * kv.head_dim;
  int64_t page_idx = j / kv.page_size;
  if (page_idx >= kv.max_pages) return -1;
  int64_t page = kv.page_table[b * kv.max_pages + page_idx];
  if (page < 0 || page >= kv.num_pages) return -1;
  return ((page * kv.num_heads + h) * kv.page_size + (j % kv.page_size)) * kv.head_dim;
}

}  // namespace msa

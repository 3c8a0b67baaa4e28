// Softmax attention of query rows over their visible KV tokens on the CPU,
// shared by msa_attention, msa_sparse_prefill and msa_decode (and the K-side
// pieces by msa_block_scores). Everything is float32 in, double accumulated:
//   s = scale * q . (k * k_scale),  p = exp(s - max s),
//   o = sum p * (v * v_scale) / sum p,  lse = max s + log(sum p).
// A row with no visible token keeps o = 0, lse = -inf, block maxima -inf.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ffi/common/dtype.h"
#include "ffi/common/sequences.h"

namespace msa {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// max that propagates NaN, like jnp.max.
inline float nan_max(float a, float b) {
  if (std::isnan(a)) return a;
  if (std::isnan(b)) return b;
  return a > b ? a : b;
}

// ceil(len / block_size) for len >= 0, block_size >= 1.
inline int64_t ceil_div(int64_t len, int64_t block_size) { return (len + block_size - 1) / block_size; }

// The K (and optionally V) tensors of an op.
struct KvSource {
  KvLayout layout;
  const void* k = nullptr;
  ffi::DataType k_type = ffi::DataType::F32;
  float k_scale = 1.0f;
  const void* v = nullptr;  // nullptr: keys only (index branch)
  ffi::DataType v_type = ffi::DataType::F32;
  float v_scale = 1.0f;
};

// Float32 K / V rows of one (sequence, KV head), scales applied, converted
// lazily the first time a token is touched (sparse ops read few blocks).
class KvRows {
 public:
  explicit KvRows(const KvSource& src) : src_(src), d_(src.layout.head_dim) {}

  void bind(const Sequences& s, int64_t b, int64_t g) {
    seq_ = &s;
    b_ = b;
    g_ = g;
    len_ = s.kv_len[b];
    state_.assign(size_t(len_), kUnloaded);
    k_.resize(size_t(len_ * d_));
    if (src_.v) v_.resize(size_t(len_ * d_));
  }

  int64_t len() const { return len_; }

  // K row of token j, or nullptr when j is outside [0, L) or unresolvable.
  const float* key(int64_t j) {
    if (j < 0 || j >= len_) return nullptr;
    if (state_[j] == kUnloaded) load(j);
    return state_[j] == kLoaded ? &k_[size_t(j * d_)] : nullptr;
  }
  // V row of token j; only valid after key(j) returned non-null.
  const float* value(int64_t j) const { return &v_[size_t(j * d_)]; }

 private:
  enum : uint8_t { kUnloaded = 0, kLoaded = 1, kUnresolvable = 2 };

  void load(int64_t j) {
    int64_t off = kv_offset(src_.layout, *seq_, b_, j, g_);
    if (off < 0) {
      state_[j] = kUnresolvable;
      return;
    }
    float* kr = &k_[size_t(j * d_)];
    for (int64_t e = 0; e < d_; ++e) kr[e] = load_as_float(src_.k, src_.k_type, off + e) * src_.k_scale;
    if (src_.v) {
      float* vr = &v_[size_t(j * d_)];
      for (int64_t e = 0; e < d_; ++e) vr[e] = load_as_float(src_.v, src_.v_type, off + e) * src_.v_scale;
    }
    state_[j] = kLoaded;
  }

  const KvSource& src_;
  int64_t d_;
  const Sequences* seq_ = nullptr;
  int64_t b_ = 0, g_ = 0, len_ = 0;
  std::vector<uint8_t> state_;
  std::vector<float> k_, v_;
};

// One query row as float32, scoring keys: scale * q . k.
class QueryRow {
 public:
  explicit QueryRow(int64_t head_dim) : q_(size_t(head_dim)) {}

  void load(const void* q, ffi::DataType t, int64_t off) {
    for (size_t e = 0; e < q_.size(); ++e) q_[e] = load_as_float(q, t, off + int64_t(e));
  }
  double score(const float* k, double scale) const {
    double acc = 0.0;
    for (size_t e = 0; e < q_.size(); ++e) acc += double(q_[e]) * double(k[e]);
    return scale * acc;
  }

 private:
  std::vector<float> q_;
};

// Two-pass softmax of one query row over the tokens added to it.
class RowSoftmax {
 public:
  explicit RowSoftmax(int64_t head_dim) : q_(head_dim), acc_(size_t(head_dim)) {}

  void start(const void* q, ffi::DataType t, int64_t off) {
    q_.load(q, t, off);
    s_.clear();
    tok_.clear();
  }

  // Scores the resolvable tokens of [lo, hi) (the caller passes visible
  // ranges only). With block_max, folds each score into
  // block_max[j / block_size] when that column is < num_blocks.
  void add_range(KvRows& kv, int64_t lo, int64_t hi, double scale, float* block_max = nullptr,
                 int64_t block_size = 1, int64_t num_blocks = 0) {
    for (int64_t j = std::max<int64_t>(lo, 0); j < hi; ++j) {
      const float* k = kv.key(j);
      if (!k) continue;
      double s = q_.score(k, scale);
      s_.push_back(s);
      tok_.push_back(j);
      if (block_max) {
        int64_t c = j / block_size;
        if (c < num_blocks) block_max[c] = nan_max(block_max[c], float(s));
      }
    }
  }

  // Writes the output row (dtype t, elements [off, off + D)) and *lse.
  void finish(const KvRows& kv, void* o, ffi::DataType t, int64_t off, float* lse) {
    const int64_t d = int64_t(acc_.size());
    double m = -std::numeric_limits<double>::infinity();
    bool any_nan = false;
    for (double s : s_) {
      if (std::isnan(s)) any_nan = true;
      else m = std::max(m, s);
    }
    if (any_nan) {  // propagate like a float reference would
      for (int64_t e = 0; e < d; ++e) store_from_float(o, t, off + e, std::numeric_limits<float>::quiet_NaN());
      *lse = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    if (s_.empty() || m == -std::numeric_limits<double>::infinity()) {
      for (int64_t e = 0; e < d; ++e) store_from_float(o, t, off + e, 0.0f);
      *lse = kNegInf;
      return;
    }
    std::fill(acc_.begin(), acc_.end(), 0.0);
    double l = 0.0;
    for (size_t i = 0; i < s_.size(); ++i) {
      double p = std::exp(s_[i] - m);
      l += p;
      const float* v = kv.value(tok_[i]);
      for (int64_t e = 0; e < d; ++e) acc_[size_t(e)] += p * double(v[e]);
    }
    for (int64_t e = 0; e < d; ++e) store_from_float(o, t, off + e, float(acc_[size_t(e)] / l));
    *lse = float(m + std::log(l));
  }

 private:
  QueryRow q_;
  std::vector<double> acc_;
  std::vector<double> s_;
  std::vector<int64_t> tok_;
};

// The distinct ids of ids[0, k) inside [0, num_blocks), ascending: -1,
// out-of-range ids and repeats are skipped.
inline void distinct_blocks(const int32_t* ids, int64_t k, int64_t num_blocks, std::vector<int64_t>* out) {
  out->clear();
  for (int64_t i = 0; i < k; ++i)
    if (ids[i] >= 0 && ids[i] < num_blocks) out->push_back(ids[i]);
  std::sort(out->begin(), out->end());
  out->erase(std::unique(out->begin(), out->end()), out->end());
}

// One attention op: query rows q [T, Hq, D] of the sequences, outputs
// o [T, Hq, D] (o_type) and lse [T, Hq]; dense (every visible token, with
// optional block maxima [T, Hq, num_blocks]) or block-sparse (the visible
// tokens of the distinct valid ids of block_ids[t, g, :], [T, Hkv, topk]).
struct AttendJob {
  const void* q = nullptr;
  ffi::DataType q_type = ffi::DataType::F32;
  int64_t tokens = 0, q_heads = 0, head_dim = 0, group = 1;
  KvSource kv;
  double scale = 1.0;
  bool causal = true;
  int64_t block_size = 1;  // >= 1 when block-sparse or num_blocks > 0
  // Block-sparse when set.
  const int32_t* block_ids = nullptr;
  int64_t topk = 0;
  // Dense only, optional.
  float* block_max = nullptr;
  int64_t num_blocks = 0;
  // Outputs.
  void* o = nullptr;
  ffi::DataType o_type = ffi::DataType::F32;
  float* lse = nullptr;
};

inline void attend_cpu(const AttendJob& job, const Sequences& seq) {
  const int64_t hq = job.q_heads, d = job.head_dim, hkv = job.kv.layout.num_heads;
  // Every output element is written: rows outside every sequence and rows
  // that see nothing keep these values.
  for (int64_t i = 0; i < job.tokens * hq * d; ++i) store_from_float(job.o, job.o_type, i, 0.0f);
  std::fill(job.lse, job.lse + job.tokens * hq, kNegInf);
  float* const block_max = job.num_blocks > 0 ? job.block_max : nullptr;
  if (block_max) std::fill(block_max, block_max + job.tokens * hq * job.num_blocks, kNegInf);

  const bool sparse = job.block_ids != nullptr;
  KvRows kv(job.kv);
  RowSoftmax row(d);
  std::vector<int64_t> blocks;
  for (int64_t b = 0; b < seq.batch; ++b) {
    const int64_t nblk = sparse ? ceil_div(seq.kv_len[b], job.block_size) : 0;
    for (int64_t g = 0; g < hkv; ++g) {
      kv.bind(seq, b, g);
      for (int64_t i = 0; i < seq.q_len[b]; ++i) {
        const int64_t t = seq.q_begin[b] + i;
        const int64_t vend = seq.visible_end(b, i, job.causal);
        if (vend <= 0) continue;
        if (sparse) distinct_blocks(job.block_ids + (t * hkv + g) * job.topk, job.topk, nblk, &blocks);
        for (int64_t h = g * job.group; h < (g + 1) * job.group; ++h) {
          const int64_t row_id = t * hq + h;
          row.start(job.q, job.q_type, row_id * d);
          if (sparse) {
            for (int64_t c : blocks) {
              const int64_t lo = c * job.block_size;
              if (lo >= vend) break;  // ascending ids
              row.add_range(kv, lo, std::min(lo + job.block_size, vend), job.scale);
            }
          } else {
            float* bm = block_max ? block_max + row_id * job.num_blocks : nullptr;
            row.add_range(kv, 0, vend, job.scale, bm, job.block_size, job.num_blocks);
          }
          row.finish(kv, job.o, job.o_type, row_id * d, job.lse + row_id);
        }
      }
    }
  }
}

}  // namespace msa

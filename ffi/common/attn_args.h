// Shape/dtype checks of the attention-family ops (msa_attention,
// msa_block_scores, msa_topk_select, msa_sparse_prefill, msa_decode), shared
// by their handlers: query / K / V tensors, the sequence metadata (q_indptr,
// kv_indptr, kv_lens, page_table), block sizes and outputs. Each failure
// names the op and the argument. Only shapes are checked here; the values of
// the int32 metadata are device data, range-checked in sequences.h.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "ffi/common/checks.h"
#include "ffi/common/dtype.h"
#include "ffi/common/sequences.h"

namespace msa {

template <typename Buf>
inline std::string shape_str(const Buf& b) {
  std::string s = "[";
  auto d = b.dimensions();
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

// Whether dims match `shape` (-1: any extent); `expected` gets the shape text.
template <typename Dims>
inline bool shape_matches(const Dims& d, std::initializer_list<int64_t> shape, std::string* expected) {
  bool ok = d.size() == shape.size();
  *expected = "[";
  size_t i = 0;
  for (int64_t e : shape) {
    *expected += (i ? "," : "") + (e < 0 ? std::string("*") : std::to_string(e));
    if (ok && e >= 0 && d[i] != e) ok = false;
    ++i;
  }
  *expected += "]";
  return ok;
}

// An int32 metadata array must be exactly `shape`.
inline ffi::Error check_meta_shape(const char* op, const char* name, const ffi::Buffer<ffi::S32>& b,
                                   std::initializer_list<int64_t> shape, const char* what) {
  std::string expected;
  if (!shape_matches(b.dimensions(), shape, &expected))
    return invalid(std::string(op) + ": " + name + " must have shape " + what + " = " + expected +
                   ", got " + shape_str(b));
  return ffi::Error::Success();
}

// A query-like tensor [T, H, D] of dtype float32, bfloat16 or float16.
struct QueryDims {
  int64_t tokens = 0, heads = 0, head_dim = 0;
};

inline ffi::Error check_query(const char* op, const char* name, const ffi::AnyBuffer& q,
                              QueryDims* d) {
  MSA_RETURN_IF_ERROR(check_rank(op, name, q, 3));
  MSA_RETURN_IF_ERROR(
      check_dtype(op, name, q, {ffi::DataType::F32, ffi::DataType::BF16, ffi::DataType::F16}));
  auto s = q.dimensions();
  *d = QueryDims{s[0], s[1], s[2]};
  return ffi::Error::Success();
}

// A K / V / index-key tensor: dense [Tk, Hkv, D] (or [Tk, D] when
// `dense_single_head`, the index keys) or paged [num_pages, Hkv, page_size, D];
// dtype `q_type` or float8_e4m3fn; head_dim D must equal `head_dim`. Fills the
// shape part of `kv` (page_table / kv_indptr come from check_seq_meta).
inline ffi::Error check_kv(const char* op, const char* name, const ffi::AnyBuffer& k,
                           ffi::DataType q_type, bool paged, bool dense_single_head,
                           int64_t head_dim, KvLayout* kv) {
  if (k.element_type() != q_type && k.element_type() != ffi::DataType::F8E4M3FN)
    return invalid(std::string(op) + ": " + name + " dtype (code " +
                   std::to_string(static_cast<int>(k.element_type())) +
                   ") must be the query dtype (code " + std::to_string(static_cast<int>(q_type)) +
                   ") or float8_e4m3fn");
  kv->paged = paged;
  if (paged) {
    MSA_RETURN_IF_ERROR(check_rank(op, name, k, 4));
    auto s = k.dimensions();
    kv->num_pages = s[0];
    kv->num_heads = s[1];
    kv->page_size = s[2];
    kv->head_dim = s[3];
    if (kv->page_size < 1)
      return invalid(std::string(op) + ": " + name + " page_size (dim 2) must be >= 1, got shape " +
                     dims_str(k));
    MSA_RETURN_IF_ERROR(check_dim(op, name, k, 3, head_dim, "the query head_dim"));
  } else if (dense_single_head) {
    MSA_RETURN_IF_ERROR(check_rank(op, name, k, 2));
    auto s = k.dimensions();
    kv->dense_rows = s[0];
    kv->num_heads = 1;
    kv->head_dim = s[1];
    MSA_RETURN_IF_ERROR(check_dim(op, name, k, 1, head_dim, "the query head_dim"));
  } else {
    MSA_RETURN_IF_ERROR(check_rank(op, name, k, 3));
    auto s = k.dimensions();
    kv->dense_rows = s[0];
    kv->num_heads = s[1];
    kv->head_dim = s[2];
    MSA_RETURN_IF_ERROR(check_dim(op, name, k, 2, head_dim, "the query head_dim"));
  }
  if (kv->num_heads < 1)
    return invalid(std::string(op) + ": " + name + " must have at least one head, got shape " +
                   dims_str(k));
  return ffi::Error::Success();
}

// V must have K's shape (its dtype is checked like K's by check_kv).
inline ffi::Error check_same_shape(const char* op, const char* name, const ffi::AnyBuffer& v,
                                   const char* ref_name, const ffi::AnyBuffer& ref) {
  auto a = v.dimensions();
  auto b = ref.dimensions();
  bool ok = a.size() == b.size();
  for (size_t i = 0; ok && i < a.size(); ++i) ok = a[i] == b[i];
  if (!ok)
    return invalid(std::string(op) + ": " + name + " shape " + dims_str(v) + " must equal " +
                   ref_name + " shape " + dims_str(ref));
  return ffi::Error::Success();
}

// GQA: Hq must be a multiple of Hkv; *group = Hq / Hkv.
inline ffi::Error check_gqa(const char* op, int64_t q_heads, int64_t kv_heads, int64_t* group) {
  if (kv_heads < 1 || q_heads % kv_heads != 0)
    return invalid(std::string(op) + ": query heads (" + std::to_string(q_heads) +
                   ") must be a multiple of the KV heads (" + std::to_string(kv_heads) + ")");
  *group = q_heads / kv_heads;
  return ffi::Error::Success();
}

// Sequence metadata: kv_lens [B] gives B; q_indptr / kv_indptr [B+1] and
// page_table [B, P] are checked when given (nullptr: the op has none).
// page_table and kv_indptr are only read for the layout that uses them
// (paged / dense); the other one is a dummy and only needs rank 2 / [B+1].
inline ffi::Error check_seq_meta(const char* op, const ffi::Buffer<ffi::S32>* q_indptr,
                                 const ffi::Buffer<ffi::S32>* kv_indptr,
                                 const ffi::Buffer<ffi::S32>& kv_lens,
                                 const ffi::Buffer<ffi::S32>* page_table, KvLayout* kv,
                                 int64_t* batch) {
  if (kv_lens.dimensions().size() != 1)
    return invalid(std::string(op) + ": kv_lens must have shape [B], got " + shape_str(kv_lens));
  int64_t b = kv_lens.dimensions()[0];
  *batch = b;
  if (q_indptr) MSA_RETURN_IF_ERROR(check_meta_shape(op, "q_indptr", *q_indptr, {b + 1}, "[B+1]"));
  if (kv_indptr) {
    MSA_RETURN_IF_ERROR(check_meta_shape(op, "kv_indptr", *kv_indptr, {b + 1}, "[B+1]"));
    kv->kv_indptr = kv_indptr->typed_data();
  }
  if (page_table) {
    auto d = page_table->dimensions();
    if (kv->paged) {
      if (d.size() != 2 || d[0] != b)
        return invalid(std::string(op) + ": page_table must have shape [B, P] with B = " +
                       std::to_string(b) + ", got " + shape_str(*page_table));
      kv->max_pages = d[1];
      kv->page_table = page_table->typed_data();
    } else if (d.size() != 2) {
      return invalid(std::string(op) + ": page_table (a dummy for a dense cache) must have rank 2, got " +
                     shape_str(*page_table));
    }
  }
  if (!kv->paged && !kv->kv_indptr)
    return invalid(std::string(op) + ": a dense cache needs kv_indptr");
  return ffi::Error::Success();
}

// block_size must be >= 1, and equal page_size for a paged cache.
inline ffi::Error check_block_size(const char* op, int64_t block_size, const KvLayout& kv) {
  if (block_size < 1)
    return invalid(std::string(op) + ": block_size must be >= 1, got " + std::to_string(block_size));
  if (kv.paged && block_size != kv.page_size)
    return invalid(std::string(op) + ": block_size (" + std::to_string(block_size) +
                   ") must equal the cache page_size (" + std::to_string(kv.page_size) + ")");
  return ffi::Error::Success();
}

// An output of dtype `dtype` and shape `shape` (-1: any extent).
inline ffi::Error check_output(const char* op, const char* name, const ffi::AnyBuffer& out,
                               ffi::DataType dtype, std::initializer_list<int64_t> shape,
                               const char* what) {
  if (out.element_type() != dtype)
    return invalid(std::string(op) + ": output " + name + " has dtype code " +
                   std::to_string(static_cast<int>(out.element_type())) + ", expected code " +
                   std::to_string(static_cast<int>(dtype)));
  std::string expected;
  if (!shape_matches(out.dimensions(), shape, &expected))
    return invalid(std::string(op) + ": output " + name + " must have shape " + what + " = " +
                   expected + ", got " + dims_str(out));
  return ffi::Error::Success();
}

// Everything the query/KV ops share, checked at once: the query `q` [T,Hq,D]
// (float32 / bfloat16 / float16); K (and V when given) in q's dtype or
// float8_e4m3fn, dense [Tk,Hkv,D] or paged [num_pages,Hkv,page_size,D] with
// D matching q (index keys, `index_keys`: dense [Tk,Di] or paged
// [num_pages,1,page_size,Di]); V of K's shape; Hq % Hkv == 0; and the
// sequence metadata (check_seq_meta).
struct AttnArgs {
  QueryDims q;
  KvLayout kv;
  int64_t group = 1;  // Hq / Hkv
  int64_t batch = 0;  // B
};

inline ffi::Error check_attn_inputs(const char* op, const char* q_name, const ffi::AnyBuffer& q,
                                    const char* k_name, const ffi::AnyBuffer& k,
                                    const char* v_name, const ffi::AnyBuffer* v, bool paged,
                                    bool index_keys, const ffi::Buffer<ffi::S32>* q_indptr,
                                    const ffi::Buffer<ffi::S32>* kv_indptr,
                                    const ffi::Buffer<ffi::S32>& kv_lens,
                                    const ffi::Buffer<ffi::S32>* page_table, AttnArgs* a) {
  MSA_RETURN_IF_ERROR(check_query(op, q_name, q, &a->q));
  MSA_RETURN_IF_ERROR(
      check_kv(op, k_name, k, q.element_type(), paged, index_keys, a->q.head_dim, &a->kv));
  if (index_keys && a->kv.num_heads != 1)
    return invalid(std::string(op) + ": " + k_name + " must have a single head (dim 1 == 1), got shape " +
                   dims_str(k));
  if (v) {
    KvLayout v_layout;
    MSA_RETURN_IF_ERROR(
        check_kv(op, v_name, *v, q.element_type(), paged, index_keys, a->q.head_dim, &v_layout));
    MSA_RETURN_IF_ERROR(check_same_shape(op, v_name, *v, k_name, k));
  }
  if (index_keys) {
    a->group = a->q.heads;  // every index head reads the single key head
  } else {
    MSA_RETURN_IF_ERROR(check_gqa(op, a->q.heads, a->kv.num_heads, &a->group));
  }
  return check_seq_meta(op, q_indptr, kv_indptr, kv_lens, page_table, &a->kv, &a->batch);
}

}  // namespace msa

// Launcher of the block top-k selection kernels (docs/ffi-contract.md,
// msa_topk_select). Independent of the XLA headers.
//
// Work is cut into *segments* of at most kTopkMaxSegment blocks; one warp
// holds one segment in registers and selects from it. A row with one segment
// is finished in one kernel. Otherwise (num_splits > 1) every segment writes
// its local top candidates (order-preserving key + block id, K slots) to the
// scratch buffer, and merge rounds select again from the S*K candidates of a
// row until one segment remains (one merge round unless S*K > 2048). The
// rounds, the grids and the scratch size depend on shapes and attributes
// only: no host sync, no allocation, CUDA-graph safe.
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace msa::cuda {

constexpr int64_t kTopkMaxSegment = 2048;  // blocks one warp holds (64 per lane)
constexpr int kTopkMaxRounds = 32;

struct TopkSelectParams {
  const float* scores;      // [tokens, heads, nb]
  const int32_t* q_indptr;  // [batch + 1]
  const int32_t* kv_lens;   // [batch]
  int32_t* ids;             // [tokens, heads, k]
  void* scratch;            // >= topk_scratch_bytes(...) bytes, 16-byte aligned
  int64_t scratch_bytes;
  int64_t tokens, heads, nb, k, batch;
  int64_t local_blocks, sink_blocks, block_size;
  bool causal;
  int64_t num_splits;  // segments per row in the first round (attribute)
};

namespace topk_detail {
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
}  // namespace topk_detail

// The rounds of one call. Round r reads rows of n[r] elements (r = 0: the
// scores, nb; r >= 1: candidates of round r-1, n[r] = splits[r-1] * k) in
// splits[r] segments of seg[r] elements (a multiple of 4, <= 2048); the last
// round (splits == 1) writes ids. Round r < rounds-1 writes, per row,
// stride[r] = round_up(splits[r]*k, 4) candidate slots to scratch region
// r % 2: keys (uint32) [rows, stride] then ids (int32) [rows, stride].
struct TopkSchedule {
  int rounds = 0;  // 0: unsupported arguments
  int64_t n[kTopkMaxRounds] = {}, seg[kTopkMaxRounds] = {}, splits[kTopkMaxRounds] = {},
          stride[kTopkMaxRounds] = {};
  int64_t region_offset[2] = {0, 0};  // bytes into scratch
  int64_t scratch_bytes = 0;
};

inline TopkSchedule topk_schedule(int64_t rows, int64_t nb, int64_t k, int64_t num_splits) {
  using namespace topk_detail;
  TopkSchedule s;
  if (rows < 0 || nb < 0 || k < 0 || num_splits < 1) return s;
  int64_t region[2] = {0, 0};
  int64_t n = nb, want = num_splits;
  for (int r = 0; r < kTopkMaxRounds; ++r) {
    int64_t seg = n > 0 ? round_up(ceil_div(n, std::min(want, n)), 4) : 4;
    if (seg > kTopkMaxSegment) return TopkSchedule{};  // num_splits < ceil(nb / 2048)
    int64_t splits = n > 0 ? ceil_div(n, seg) : 1;
    s.n[r] = n;
    s.seg[r] = seg;
    s.splits[r] = splits;
    if (splits == 1) {
      s.rounds = r + 1;
      break;
    }
    if (k > kTopkMaxSegment / 2) return TopkSchedule{};  // merging would not shrink the rows
    s.stride[r] = round_up(splits * k, 4);
    region[r & 1] = std::max(region[r & 1], round_up(rows * s.stride[r] * 8, 256));
    n = splits * k;
    want = ceil_div(n, kTopkMaxSegment);
  }
  if (s.rounds == 0) return TopkSchedule{};
  s.region_offset[0] = 0;
  s.region_offset[1] = region[0];
  s.scratch_bytes = region[0] + region[1];
  return s;
}

// The rule the Python wrapper mirrors for the `num_splits` attribute, from
// shapes only (rows = T*H, nb = scores.shape[-1], k = topk):
//   nb <= 2048                     -> 1 (a warp per row, no scratch)
//   s = ceil(nb / 2048)            (segments of <= 2048 blocks)
//   if rows * s < 1024 (few rows: decode), split finer to fill the GPU:
//     s = max(s, min(ceil(1024 / rows), ceil(nb / 512), max(1, 1024 // k)))
inline int64_t topk_num_splits(int64_t rows, int64_t nb, int64_t k) {
  using namespace topk_detail;
  if (nb <= kTopkMaxSegment) return 1;
  int64_t s = ceil_div(nb, kTopkMaxSegment);
  if (rows * s < 1024) {
    int64_t want = ceil_div(1024, std::max<int64_t>(rows, 1));
    int64_t cap = std::min(ceil_div(nb, 512), std::max<int64_t>(1, 1024 / std::max<int64_t>(k, 1)));
    s = std::max(s, std::min(want, cap));
  }
  return s;
}

// Scratch bytes the call needs (the `scratch` output must hold at least this
// many; 0 when num_splits == 1 and nb <= 2048); -1 when unsupported
// (num_splits < ceil(nb / 2048), or k > 1024 with more than one segment).
// Python mirror:
//   def scratch_bytes(rows, nb, k, s):
//     total = [0, 0]; n = nb; want = s; r = 0
//     while True:
//       seg = round_up(ceil(n / min(want, n)), 4) if n > 0 else 4
//       if seg > 2048: return -1
//       splits = ceil(n / seg) if n > 0 else 1
//       if splits == 1: return total[0] + total[1]
//       if k > 1024: return -1
//       total[r % 2] = max(total[r % 2], round_up(rows * round_up(splits * k, 4) * 8, 256))
//       n = splits * k; want = ceil(n / 2048); r += 1
inline int64_t topk_scratch_bytes(int64_t rows, int64_t nb, int64_t k, int64_t num_splits) {
  TopkSchedule s = topk_schedule(rows, nb, k, num_splits);
  return s.rounds == 0 ? -1 : s.scratch_bytes;
}

cudaError_t launch_topk_select(const TopkSelectParams& p, cudaStream_t stream);

}  // namespace msa::cuda

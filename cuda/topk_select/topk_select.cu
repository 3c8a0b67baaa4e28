// Block top-k selection (docs/ffi-contract.md, msa_topk_select).
//
// Persistent warps loop over (row, segment) items; a segment (<= 2048 blocks)
// lives in registers: lane l holds float4 chunks j*32+l (j < V), so every load
// instruction of the warp reads 512 contiguous bytes. With 16-byte aligned
// rows, the next item's segment is prefetched with cp.async into a per-warp
// shared-memory double buffer while the current one is selected (the exact
// path reads back only the lane's own chunks; the fast path reads any lane's,
// after a __syncwarp()).
// Scores become order-preserving uint32 keys (integer ops only: NaN -> 1,
// below every number; -0 -> +0; 0 marks "not eligible"); ties are broken by
// position, and positions are in id order.
//
// Score segments of >= 1024 blocks (V >= 8) with m <= 32 slots (the usual
// case) first try select_fast: threshold, compaction and ranking on the
// staged floats with shared-memory transposes instead of serial shuffle
// chains (see there); it hands anything it cannot decide with at most 32
// candidates (ties, NaN, short rows) to the exact selection below.
//
// Exact selection of the m best keys of a segment:
//  1. a lower bound t of the m-th largest key: the m-th largest lane maximum
//     (m <= 32, bitonic sort across lanes) or of the lane top-2 (m <= 64,
//     bisection); at least m keys are >= t, so the top m are among them;
//  2. if at most 64 keys are >= t: compact them (prefix sum of lane counts)
//     to shared memory, rank each exactly against the others (key, then
//     position), and place the chosen ones in ascending position order with a
//     64-word position bitmap;
//  3. otherwise (ties, adversarial rows): exact bisection of the m-th largest
//     key over the registers, then the lowest positions among equal keys.
// The chosen positions are emitted in ascending order with ballot prefixes.
//
// A row of one segment writes ids directly (forced blocks + chosen, ascending,
// -1 padding). Otherwise each segment writes its local best min(M, E) as
// (key, id) slots to scratch and merge rounds run the same kernel on them.
//
// Files: round.cuh (round arguments, keys, row metadata), select_exact.cuh,
// select_fast.cuh; here the round kernel, its staging copies and the launcher.
#include "cuda/topk_select/topk_select.h"

#include <algorithm>
#include <climits>
#include <utility>

#include "cuda/topk_select/round.cuh"
#include "cuda/topk_select/select_exact.cuh"
#include "cuda/topk_select/select_fast.cuh"

namespace msa::cuda {
namespace {

using namespace topk;  // NOLINT(build/namespaces): this kernel's own pieces

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool ok) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(ok ? 16 : 0)
               : "memory");
}
// Unpredicated copy of 16 bytes at constant byte offsets from both bases.
template <int OFF>
__device__ __forceinline__ void cp_async16_at(uint32_t smem_base, const void* gmem_base) {
  asm volatile("cp.async.cg.shared.global [%0+%2], [%1+%2], 16;\n" ::"r"(smem_base), "l"(gmem_base), "n"(OFF)
               : "memory");
}
// Chunks J*32 + lane of a segment (512 bytes apart).
template <int... J>
__device__ __forceinline__ void cp_async_chunks(uint32_t smem_base, const void* gmem_base,
                                                std::integer_sequence<int, J...>) {
  (cp_async16_at<J * 512>(smem_base, gmem_base), ...);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Dynamic shared memory of the ASYNC kernels: 2 stages x kWarps x V*512 bytes.
template <int V>
constexpr int async_smem_bytes() { return 2 * kWarps * V * 512; }

// SCORES: round 0 (input = scores, ids = positions); else a merge round
// (input = candidate keys/ids). ASYNC: rows are 16-byte aligned (nb % 4 == 0,
// aligned scores; always for merge rounds): segments are prefetched with
// cp.async into shared memory one item ahead. Persistent: warp w of CTA b
// takes items w + kWarps*b, then + kWarps*gridDim.x, ...
template <int V, bool SCORES, bool ASYNC>
constexpr int min_ctas() { return V >= 16 ? 3 : (V >= 8 ? (SCORES ? 5 : 4) : 8); }

template <int V, bool SCORES, bool ASYNC>
__global__ void __launch_bounds__(kWarps * 32, min_ctas<V, SCORES, ASYNC>()) topk_round_kernel(const RoundArgs a) {
  // Score rounds with staged segments of 8 or 16 chunks per lane try
  // select_fast first; it reads other lanes' staged elements (hence the
  // __syncwarp()s). (V = 4 would not fit its 64-register budget.) These
  // instances also take the division constants and the item count from the
  // launcher and keep the row metadata in shared memory: fewer live registers
  // for the exact path in the same kernel (95 at V = 8, 5 CTAs per SM).
  constexpr bool kFast = SCORES && ASYNC && V >= 8;
  __shared__ WarpSmem s_sel[kWarps];
  __shared__ int s_meta[kFast ? kWarps : 1][64];  // kFast: q_indptr[lane], kv_lens[lane]
  extern __shared__ __align__(16) uint8_t s_dyn[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t total = kFast ? a.items : a.rows * a.splits;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  int64_t item = int64_t(blockIdx.x) * kWarps + warp;
  const int K = int(a.k);
  const int sink = int(a.sink), local = int(a.local);
  const int M = K - sink - local;
  constexpr int kStageElems = V * 128;  // 4-byte elements per stage
  uint32_t* stage_base = reinterpret_cast<uint32_t*>(s_dyn) + warp * 2 * kStageElems;

  // Item -> (row, segment index, first element, elements).
  auto split_item = [&](int64_t it, int64_t& row, int64_t& sidx) {
    if constexpr (kFast) row = a.splits == 1 ? it : fdiv(it, a.splits_div);
    else row = div_s64(it, a.splits);
    sidx = it - row * a.splits;
  };
  // Prefetch of item `it` into stage `st` (lane's own chunks j*32+lane).
  auto prefetch = [&](int64_t it, int st) {
    int64_t row, sidx;
    split_item(it, row, sidx);
    const int64_t p0 = sidx * a.seg;
    const int n_seg = int(min(a.seg, a.n - p0));
    const uint32_t* src;
    if constexpr (SCORES) src = reinterpret_cast<const uint32_t*>(a.scores) + row * a.nb + p0;
    else src = a.in_keys + row * a.in_stride + p0;
    uint32_t* dst = stage_base + st * kStageElems;
    if (n_seg == V * 128) {  // whole segment: no predicates, constant offsets
      const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst + lane * 4));
      const uint32_t* s = src + lane * 4;
      cp_async_chunks(d, s, std::make_integer_sequence<int, V>{});
      return;
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int q = j * 32 + lane;
      const bool ok = q * 4 < n_seg;
      cp_async16(dst + q * 4, ok ? src + q * 4 : src, ok);
    }
  };
  if constexpr (ASYNC) {
    if (item < total) prefetch(item, 0);
    cp_async_commit();
  }
  // Few sequences (the usual case): their metadata stays in lane registers
  // (kFast: in the warp's shared memory, read per item; fewer live registers).
  const bool small_batch = a.batch < 32;
  int ind = INT_MIN, len = 0;
  if (small_batch) {
    if (lane <= int(a.batch)) ind = a.q_indptr[lane];
    if (lane < int(a.batch)) len = a.kv_lens[lane];
  }
  if constexpr (kFast) {
    s_meta[warp][lane] = ind;
    s_meta[warp][32 + lane] = len;
    __syncwarp();
  }

#pragma unroll 1
  for (int iter = 0; item < total; ++iter, item += stride) {
    if constexpr (ASYNC) {
      // The stage refilled now was read (by any lane, kFast) in the previous item.
      if constexpr (kFast) __syncwarp();
      if (item + stride < total) prefetch(item + stride, (iter + 1) & 1);
      cp_async_commit();
      // This item's chunks (the lane's own copies) landed; waiting here, also
      // for items skipped below, keeps at most one copy per stage in flight.
      cp_async_wait<1>();
      if constexpr (kFast) __syncwarp();  // ... and every lane's copies are visible
    }
    int64_t row, sidx;
    split_item(item, row, sidx);
    const int64_t t_row = kFast ? fdiv(row, a.heads_div) : div_s64(row, a.heads);
    if constexpr (kFast) {
      ind = s_meta[warp][lane];
      len = s_meta[warp][32 + lane];
    }
    const int64_t nvis = small_batch ? row_nvis_small<kFast>(a, t_row, lane, ind, len)
                                     : row_nvis<kFast>(a, t_row, lane);
    int32_t* out_row = a.final_out ? a.ids + row * a.k : nullptr;

    if (nvis <= a.k) {  // every visible block is chosen
      if (a.final_out)
        for (int x = lane; x < K; x += 32) out_row[x] = x < nvis ? x : -1;
      continue;
    }
    // nvis > K >= local + sink: forced sinks [0, sink) and locals [nvis-local, nvis),
    // eligible [sink, nvis-local), M = K - sink - local slots.
    if (a.final_out) {
      for (int x = lane; x < sink; x += 32) out_row[x] = x;
      for (int x = lane; x < local; x += 32) out_row[K - local + x] = int(nvis - local + x);
    }
    if (M <= 0) continue;

    const int64_t p0 = sidx * a.seg;
    const int n_seg = int(min(a.seg, a.n - p0));
    uint32_t* const stage = stage_base + (iter & 1) * kStageElems;
    if constexpr (kFast) {
      const int elo = int(min(max(int64_t(sink) - p0, int64_t(0)), int64_t(n_seg)));
      const int ehi = int(min(max(nvis - local - p0, int64_t(0)), int64_t(n_seg)));
      const int E = max(ehi - elo, 0);
      const int m = min(M, E);
      if (M <= 32 && m > 0 && m < E) {
        // Ineligible elements -> NaN in the stage (the exact path masks them
        // again by position, so it can still run on this stage).
        nan_outside<V>(stage, elo, ehi, lane);
        __syncwarp();
        float x[V][4];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const uint4 v = *reinterpret_cast<const uint4*>(stage + (j * 32 + lane) * 4);
          x[j][0] = __uint_as_float(v.x); x[j][1] = __uint_as_float(v.y);
          x[j][2] = __uint_as_float(v.z); x[j][3] = __uint_as_float(v.w);
        }
        const int64_t obase = row * a.out_stride + sidx * a.k;
        auto emit_fast = [&](int idx, int pos, uint32_t k) {
          if (a.final_out) {
            out_row[sink + idx] = int32_t(p0 + pos);
          } else {
            a.out_keys[obase + idx] = k;
            a.out_ids[obase + idx] = int32_t(p0 + pos);
          }
        };
        if (select_fast<V>(x, m, lane, stage, s_sel[warp], emit_fast)) {
          // m = M (< E): every id slot is filled; candidate slots [M, K) are empty.
          if (!a.final_out)
            for (int i = m + lane; i < K; i += 32) {
              a.out_keys[obase + i] = 0u;
              a.out_ids[obase + i] = -1;
            }
          continue;
        }
      }
    }
    uint32_t key[V][4];
    int E;
    if constexpr (SCORES) {
      const int elo = int(min(max(int64_t(sink) - p0, int64_t(0)), int64_t(n_seg)));
      const int ehi = int(min(max(nvis - local - p0, int64_t(0)), int64_t(n_seg)));
      E = max(ehi - elo, 0);
      const unsigned span = unsigned(E);
      const float* src = a.scores + row * a.nb + p0;
      uint32_t rmin = 0xffffffffu, rmax = 0u;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int q = j * 32 + lane;
        float x[4];
        if constexpr (ASYNC) {
          const uint4 v = *reinterpret_cast<const uint4*>(stage + q * 4);
          x[0] = __uint_as_float(v.x); x[1] = __uint_as_float(v.y);
          x[2] = __uint_as_float(v.z); x[3] = __uint_as_float(v.w);
        } else {
#pragma unroll
          for (int c = 0; c < 4; ++c) x[c] = q * 4 + c < n_seg ? __ldg(src + q * 4 + c) : 0.f;
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          key[j][c] = number_key(x[c]);
          rmin = min(rmin, key[j][c]);
          rmax = max(rmax, key[j][c]);
        }
        // Mask only the 128-element chunks that straddle [elo, ehi) (warp-uniform).
        if (!(j * 128 >= elo && j * 128 + 128 <= ehi)) {
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (unsigned(q * 4 + c - elo) >= span) key[j][c] = 0u;
        }
      }
      // NaN anywhere in the segment (rare): exact keys (NaN -> 1) for it.
      if (__any_sync(kFull, rmax > 0xff800000u || rmin < 0x00800000u)) {
#pragma unroll
        for (int j = 0; j < V; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (key[j][c] != 0u && key_is_nan(key[j][c])) key[j][c] = 1u;
      }
    } else {
      const uint32_t* src = a.in_keys + row * a.in_stride + p0;
      int cnt = 0;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int q = j * 32 + lane;
        uint4 v;
        if constexpr (ASYNC) {
          v = *reinterpret_cast<const uint4*>(stage + q * 4);
        } else {
          v = make_uint4(0u, 0u, 0u, 0u);
          if (q * 4 < n_seg) v = __ldcs(reinterpret_cast<const uint4*>(src) + q);
        }
        key[j][0] = q * 4 + 0 < n_seg ? v.x : 0u;
        key[j][1] = q * 4 + 1 < n_seg ? v.y : 0u;
        key[j][2] = q * 4 + 2 < n_seg ? v.z : 0u;
        key[j][3] = q * 4 + 3 < n_seg ? v.w : 0u;
#pragma unroll
        for (int c = 0; c < 4; ++c) cnt += key[j][c] != 0u ? 1 : 0;
      }
      E = int(__reduce_add_sync(kFull, unsigned(cnt)));
    }
    const int m = min(M, E);

    // Output slots: ids (final: after the sinks) or the candidate ids, whose
    // keys sit at the same offset in out_keys.
    int32_t* const dst = a.final_out ? out_row + sink : a.out_ids + (row * a.out_stride + sidx * a.k);
    auto emit = [&](int idx, int pos, uint32_t k) {
      int32_t id;
      if constexpr (SCORES) id = int32_t(p0) + pos;  // < nb <= INT_MAX
      else id = a.in_ids[row * a.in_stride + p0 + pos];
      dst[idx] = id;
      if (!a.final_out) a.out_keys[(dst - a.out_ids) + idx] = k;
    };
    if (m > 0) select_top<V>(key, m, E, lane, s_sel[warp], emit);

    // Slots not filled: -1 ids (final: never happens, E >= M there) and empty
    // candidates (key 0) otherwise.
    for (int x = m + lane; x < (a.final_out ? M : K); x += 32) {
      dst[x] = -1;
      if (!a.final_out) a.out_keys[(dst - a.out_ids) + x] = 0u;
    }
  }
  if constexpr (ASYNC) cp_async_wait<0>();  // no copy in flight at exit
}

int device_sms() {
  static int cached = 0;
  if (cached == 0) {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && n > 0)
      cached = n;
    else
      return 132;
  }
  return cached;
}

// Launch of one instance: a persistent grid of at most (resident CTAs per SM)
// x SMs, from the occupancy calculator (shapes and device only).
template <int V, bool SCORES, bool ASYNC>
cudaError_t launch_instance(const RoundArgs& a, cudaStream_t stream) {
  auto kernel = topk_round_kernel<V, SCORES, ASYNC>;
  const int smem = ASYNC ? async_smem_bytes<V>() : 0;
  static int per_sm = 0;  // per instance
  if (per_sm == 0) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    int n = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kWarps * 32, smem);
    if (err != cudaSuccess) return err;
    per_sm = n > 0 ? n : 1;
  }
  const int64_t items = a.items;
  int64_t blocks = (items + kWarps - 1) / kWarps;
  blocks = std::min<int64_t>(blocks, int64_t(per_sm) * device_sms());
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarps * 32);
  kernel<<<grid, block, smem, stream>>>(a);
  return cudaGetLastError();
}

template <bool SCORES, bool ASYNC>
cudaError_t launch_round(int v, const RoundArgs& a, cudaStream_t stream) {
  switch (v) {
    case 1: return launch_instance<1, SCORES, ASYNC>(a, stream);
    case 2: return launch_instance<2, SCORES, ASYNC>(a, stream);
    case 4: return launch_instance<4, SCORES, ASYNC>(a, stream);
    case 8: return launch_instance<8, SCORES, ASYNC>(a, stream);
    case 16: return launch_instance<16, SCORES, ASYNC>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_topk_select(const TopkSelectParams& p, cudaStream_t stream) {
  const int64_t rows = p.tokens * p.heads;
  if (rows == 0 || p.k == 0) return cudaSuccess;
  if (p.block_size < 1 || p.local_blocks < 0 || p.sink_blocks < 0 ||
      p.local_blocks + p.sink_blocks > p.k || p.nb > INT_MAX || p.k > INT_MAX)
    return cudaErrorInvalidValue;
  const TopkSchedule s = topk_schedule(rows, p.nb, p.k, p.num_splits);
  if (s.rounds == 0 || p.scratch_bytes < s.scratch_bytes) return cudaErrorInvalidValue;
  if (s.scratch_bytes > 0 && (reinterpret_cast<uintptr_t>(p.scratch) & 15u) != 0)
    return cudaErrorInvalidValue;

  char* scratch = static_cast<char*>(p.scratch);
  auto keys_of = [&](int r) {
    return reinterpret_cast<uint32_t*>(scratch + s.region_offset[r & 1]);
  };
  auto ids_of = [&](int r) {
    return reinterpret_cast<int32_t*>(scratch + s.region_offset[r & 1] + rows * s.stride[r] * 4);
  };

  for (int r = 0; r < s.rounds; ++r) {
    RoundArgs a{};
    a.scores = p.scores;
    if (r > 0) {
      a.in_keys = keys_of(r - 1);
      a.in_ids = ids_of(r - 1);
      a.in_stride = s.stride[r - 1];
    }
    a.n = s.n[r];
    a.seg = s.seg[r];
    a.splits = s.splits[r];
    a.items = rows * s.splits[r];
    a.final_out = r == s.rounds - 1;
    a.ids = p.ids;
    if (!a.final_out) {
      a.out_keys = keys_of(r);
      a.out_ids = ids_of(r);
      a.out_stride = s.stride[r];
    }
    a.q_indptr = p.q_indptr;
    a.kv_lens = p.kv_lens;
    a.rows = rows;
    a.tokens = p.tokens;
    a.heads = p.heads;
    a.batch = p.batch;
    a.nb = p.nb;
    a.k = p.k;
    a.local = p.local_blocks;
    a.sink = p.sink_blocks;
    a.block_size = p.block_size;
    // Capacity of the scores (as the CPU handler: a paged layout of nb pages of
    // block_size tokens); no clip when nb * block_size would overflow.
    a.kv_cap = (p.nb > 0 && p.block_size > INT64_MAX / p.nb) ? INT64_MAX : p.nb * p.block_size;
    a.causal = p.causal;
    a.heads_div = make_fastdiv(p.heads);
    a.bs_div = make_fastdiv(p.block_size);
    a.splits_div = make_fastdiv(a.splits);
    int v = 1;
    while (v * 128 < a.seg) v *= 2;  // seg <= 2048 -> v <= 16
    cudaError_t err;
    if (r > 0) {
      err = launch_round<false, true>(v, a, stream);
    } else {
      const bool vec = p.nb % 4 == 0 && (reinterpret_cast<uintptr_t>(p.scores) & 15u) == 0;
      err = vec ? launch_round<true, true>(v, a, stream) : launch_round<true, false>(v, a, stream);
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace msa::cuda
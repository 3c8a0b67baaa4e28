// Reverse CSR of the block selections, built on the device (no host sync):
// setup (per call), then per pass mark -> scan_fill. See sparse_prefill.h for
// the whole schedule. Every index read from device data
// (q_indptr, kv_indptr, kv_lens, block ids) is clamped or range-checked.
#include <algorithm>
#include <climits>

#include "cuda/common/int_math.cuh"
#include "cuda/sparse_prefill/internal.h"

namespace msa::cuda::sparse_prefill {

namespace {

constexpr int kScanThreads = 1024;


// Block-wide inclusive scan (sum or max) of one int64 per thread; *total gets
// the block-wide result. blockDim.x == kScanThreads.
template <bool kMax>
__device__ __forceinline__ int64_t block_scan(int64_t v, int64_t* warp_buf, int64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int64_t t = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v = kMax ? (t > v ? t : v) : v + t;
  }
  __syncthreads();  // warp_buf free
  if (lane == 31) warp_buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < kScanThreads / 32 ? warp_buf[lane] : (kMax ? LLONG_MIN : 0);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int64_t t = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w = kMax ? (t > w ? t : w) : w + t;
    }
    warp_buf[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  if (warp > 0) {
    const int64_t before = warp_buf[warp - 1];
    v = kMax ? (before > v ? before : v) : v + before;
  }
  *total = warp_buf[kScanThreads / 32 - 1];
  return v;
}

// Per call: qe, kvb, len, boff.
__global__ void __launch_bounds__(kScanThreads) setup_kernel(const SparsePrefillParams p, const PassView v) {
  __shared__ int64_t warp_buf[32];
  const int tid = threadIdx.x;
  const int64_t B = p.batch, T = p.tokens;
  // qe[k] = min(T, max(0, max(q_indptr[0..k]))).
  int64_t carry = 0;
  for (int64_t base = 0; base <= B; base += kScanThreads) {
    const int64_t i = base + tid;
    int64_t x = i <= B ? int64_t(p.q_indptr[i]) : 0;
    int64_t total;
    int64_t m = block_scan<true>(x, warp_buf, &total);
    m = m > carry ? m : carry;
    if (i <= B) v.qe[i] = int32_t(clamp64(m, 0, T));
    carry = total > carry ? total : carry;
  }
  // Per sequence: kv base, clipped length, blocks; boff = exclusive scan.
  int64_t run = 0;
  const int64_t bs = p.block_size, NB = p.total_blocks;
  for (int64_t base = 0; base < B; base += kScanThreads) {
    const int64_t b = base + tid;
    int64_t nblk = 0;
    if (b < B) {
      int64_t cap, kb = 0;
      if (p.paged) {
        cap = p.max_pages * p.page_size;
      } else {
        kb = clamp64(p.kv_indptr[b], 0, p.dense_rows);
        const int64_t ke = clamp64(p.kv_indptr[b + 1], kb, p.dense_rows);
        cap = ke - kb;
      }
      const int64_t L = clamp64(p.kv_lens[b], 0, cap);
      v.kvb[b] = int32_t(kb);
      v.len[b] = int32_t(L);
      nblk = (L + bs - 1) / bs;
    }
    int64_t total;
    const int64_t incl = block_scan<false>(nblk, warp_buf, &total);
    if (b < B) v.boff[b] = int32_t(clamp64(run + incl - nblk, 0, NB));
    run += total;
    __syncthreads();
  }
  if (tid == 0) v.boff[B] = int32_t(clamp64(run, 0, NB));
}

// Sequence of query row t (-1: outside every sequence). qe is monotone.
__device__ __forceinline__ int seq_of_row(const int32_t* __restrict__ qe, int batch, int64_t t) {
  if (batch <= 0 || t < qe[0] || t >= qe[batch]) return -1;
  int lo = 0, hi = batch;  // qe[lo] <= t < qe[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (qe[mid] <= t) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Sequence owning global block gb (boff monotone, boff[b] <= gb < boff[b+1]).
__device__ __forceinline__ int seq_of_block(const int32_t* __restrict__ boff, int batch, int64_t gb) {
  int lo = 0, hi = batch;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (boff[mid] <= gb) lo = mid;
    else hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------- mark

constexpr int kMarkThreads = 256;

// Whether c occurs in ids[0, s) (repeats: the first slot wins). Unpredicated
// loads (index clamped into the row) in groups of 4, so that their latencies
// overlap; the row is in L1 (the neighbouring lanes read it too).
__device__ __forceinline__ bool occurs_before(const int32_t* __restrict__ ids, int s, int32_t c) {
  for (int s0 = 0; s0 < s; s0 += 4) {
    int32_t x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = __ldg(ids + min(s0 + j, s - 1));
    bool hit = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) hit |= x[j] == c;  // a clamped load re-reads slot s - 1 < s: harmless
    if (hit) return true;
  }
  return false;
}

// A thread per slot (local row, kv head, slot): consecutive threads read
// consecutive ids. Also resets scan_fill's look-back state and num_work
// (scan_fill follows in stream order).
__global__ void __launch_bounds__(kMarkThreads) mark_kernel(const SparsePrefillParams p, const PassView v) {
  const int64_t gtid = int64_t(blockIdx.x) * kMarkThreads + threadIdx.x;
  for (int64_t i = gtid; i < v.n_tiles; i += int64_t(gridDim.x) * kMarkThreads) v.tile_state[i] = 0;
  if (gtid == 0) {
    *v.ticket = 0;
    *v.num_work = 0;  // the last tile of scan_fill writes the real count (none without lists)
  }
  // tc * Hkv * K < 2^31 (launcher): 32-bit index arithmetic.
  const uint32_t K = uint32_t(p.topk), Hkv = uint32_t(p.kv_heads);
  if (gtid >= v.tc * Hkv * K) return;
  const uint32_t i = uint32_t(gtid);
  const uint32_t s = i % K, rg = i / K, g = rg % Hkv, tl = rg / Hkv;
  const int64_t t = v.t0 + tl;
  const int64_t G = p.q_heads / Hkv;
  const int b = seq_of_row(v.qe, int(p.batch), t);
  int64_t vis_blocks = 0, gbase = 0;
  if (b >= 0) {
    const int64_t L = v.len[b];
    const int64_t ql = v.qe[b + 1] - v.qe[b];
    const int64_t pos = L - ql + (t - v.qe[b]);
    const int64_t nb = v.boff[b + 1] - v.boff[b];
    gbase = v.boff[b];
    vis_blocks = !p.causal ? nb : (pos < 0 ? 0 : (pos / p.block_size + 1 < nb ? pos / p.block_size + 1 : nb));
  }
  const int32_t* ids = p.block_ids + (t * Hkv + g) * K;
  const int32_t c = __ldg(ids + s);
  const bool ok = c >= 0 && int64_t(c) < vis_blocks && !occurs_before(ids, int(s), c);
  if (ok) {
    // List (g, r, block) of the row's query range r (32 Wr rows per range; R = 1: r = 0, tr = tl).
    // r < R: tl < tc <= 32 W <= 32 Wr R (host layout); 32 Wr < 2^31 (N Wr < 2^31).
    const uint32_t rows_per_range = uint32_t(v.words) * 32u;
    const uint32_t r = tl / rows_per_range, tr = tl - r * rows_per_range;
    // < N: gbase + c < boff[b + 1] <= total_blocks, g < Hkv, r < R.
    const int64_t l = (int64_t(g) * v.ranges + r) * p.total_blocks + gbase + c;
    atomicOr(v.bitmap + l * v.words + (tr >> 5), 1u << (tr & 31));
  } else {
    float* lse = v.part_lse + (int64_t(tl) * p.q_heads + g * G) * K + s;
    for (int64_t h = 0; h < G; ++h) lse[h * K] = -INFINITY;
  }
}

// ---------------------------------------------------------------- scan_fill
//
// A CTA per tile of lists_per_tile consecutive lists (host: about
// kTileWords bitmap words, at least one list). Lists are (g, r, block) in
// that order, Wr words each (query rows [32 Wr r, 32 Wr (r + 1)) of the pass).
// The tile's bitmap is one contiguous range of words in (list, row) order,
// which is also the order of the entries: an entry's position is the tile's
// entry prefix plus the popcount of the tile's words before it. Steps:
//   1 entries per list (popcounts; shared-memory integer atomics);
//   2 chunks per list, scan over the tile's lists;
//   3 the tile's prefix (entries, chunks) from its predecessors: decoupled
//     look-back; tiles are numbered by a ticket taken at start, so every
//     predecessor is running or done (no deadlock whatever the CTA schedule);
//   4 work items of the tile's lists;
//   5 entries: rounds of kTileWords words, compacted through shared memory so
//     that every thread resolves about the same number of entries; the words
//     are cleared for the next pass once read.

constexpr int kTileThreads = 256;
constexpr int kWordsPerThread = 4;
constexpr int kTileWords = kTileThreads * kWordsPerThread;  // words per round
constexpr int kMaxListsPerTile = kTileThreads;             // one list per thread in step 2
constexpr int kEmitBuf = 4096;                              // entries staged per sub-round
static_assert(kTileWords * 32 <= 65536, "an emit code (word in round, bit) fits 16 bits");

// tile_state: flag (2 bits) | chunks (31 bits) | entries (31 bits). Tile sums
// and prefixes are < 2^31 (launcher: E and WI < 2^31), so packed sums never carry.
constexpr int kEntryBits = 31;
constexpr uint64_t kEntryMask = (uint64_t(1) << kEntryBits) - 1;
constexpr uint64_t kFlagAgg = uint64_t(1) << 62, kFlagIncl = uint64_t(2) << 62;
constexpr uint64_t kPayload = kFlagAgg - 1;

__device__ __forceinline__ uint64_t pack_counts(int64_t entries, int64_t chunks) {
  return (uint64_t(chunks) << kEntryBits) | uint64_t(entries);
}

// Exclusive block-wide sum (kTileThreads threads); *total = the sum of all.
// warp_buf: kTileThreads / 32 elements; reusable right after (leading barrier).
template <class T>
__device__ __forceinline__ T block_excl_sum(T x, T* warp_buf, T* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  __syncthreads();  // warp_buf free
  if (lane == 31) warp_buf[warp] = incl;
  __syncthreads();
  T before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kTileThreads / 32; ++w) {
    const T y = warp_buf[w];
    before += w < warp ? y : T(0);
    all += y;
  }
  *total = all;
  return before + incl - x;
}

__device__ __forceinline__ uint64_t load_state(const uint64_t* p) {
  return *reinterpret_cast<const volatile uint64_t*>(p);
}
__device__ __forceinline__ void store_state(uint64_t* p, uint64_t x) {
  *reinterpret_cast<volatile uint64_t*>(p) = x;
}

// Warp 0: publishes the tile's aggregate, returns its exclusive prefix (packed)
// and publishes the inclusive one. The payload travels in the same 64-bit word
// as its flag, so no fence is needed.
__device__ uint64_t look_back(uint64_t* state, int tile, uint64_t agg) {
  const int lane = threadIdx.x & 31;
  if (tile == 0) {
    if (lane == 0) store_state(state, kFlagIncl | agg);
    return 0;
  }
  if (lane == 0) store_state(state + tile, kFlagAgg | agg);
  uint64_t excl = 0;
  for (int pred = tile - 1;; pred -= 32) {
    const int i = pred - lane;
    uint64_t st = kFlagIncl;  // before tile 0: an inclusive 0 (never reached: tile 0 is inclusive)
    if (i >= 0) {
      while (((st = load_state(state + i)) >> 62) == 0) __nanosleep(32);
    }
    const unsigned incl = __ballot_sync(0xffffffffu, (st >> 62) == 2);
    const int stop = incl ? __ffs(incl) - 1 : 31;  // nearest inclusive predecessor
    uint64_t x = lane <= stop ? (st & kPayload) : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    excl += x;
    if (incl) break;
  }
  if (lane == 0) store_state(state + tile, kFlagIncl | (excl + agg));
  return excl;
}

// First slot of ids[0, K) holding c (mark set the bit for that slot); 0 if
// absent (not reached). The row is in L2 (mark read it), so the cost is the
// round trips: vec4 (K % 4 == 0, 16-byte aligned rows) reads 16 slots per
// round trip with four 16-byte loads; otherwise 8 clamped scalar loads per
// group (unpredicated, so that they can overlap).
__device__ __forceinline__ int first_slot(const int32_t* __restrict__ ids, int K, int32_t c, bool vec4) {
  if (vec4) {
    for (int s0 = 0; s0 < K; s0 += 16) {
      int4 x[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) x[j] = __ldg(reinterpret_cast<const int4*>(ids + min(s0 + 4 * j, K - 4)));
      int best = K;  // the lowest matching slot: scanned downwards (clamped groups repeat slots)
#pragma unroll
      for (int j = 3; j >= 0; --j) {
        const int sj = min(s0 + 4 * j, K - 4);
        best = x[j].w == c ? sj + 3 : best;
        best = x[j].z == c ? sj + 2 : best;
        best = x[j].y == c ? sj + 1 : best;
        best = x[j].x == c ? sj : best;
      }
      if (best < K) return best;
    }
    return 0;
  }
  for (int s0 = 0; s0 < K; s0 += 8) {
    int32_t x[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = __ldg(ids + min(s0 + j, K - 1));
    int best = K;
#pragma unroll
    for (int j = 7; j >= 0; --j) best = x[j] == c ? min(s0 + j, K - 1) : best;
    if (best < K) return best;
  }
  return 0;
}

// (kTileThreads, 1): with a tighter register budget ptxas serialises the
// loads of first_slot (one round trip per 16 bytes instead of per 64).
__global__ void __launch_bounds__(kTileThreads, 1) scan_fill_kernel(const SparsePrefillParams p, const PassView v) {
  __shared__ int s_tile;
  __shared__ int s_n[kMaxListsPerTile];         // entries per list
  __shared__ int s_g[kMaxListsPerTile], s_b[kMaxListsPerTile], s_c[kMaxListsPerTile];
  __shared__ int s_roff[kMaxListsPerTile];       // first query row (local) of the list's range: 32 Wr r
  __shared__ uint64_t s_excl[kMaxListsPerTile];  // packed exclusive prefix of the list in the tile
  __shared__ uint64_t s_prefix;                  // packed exclusive prefix of the tile
  __shared__ uint64_t s_buf64[kTileThreads / 32];
  __shared__ int s_buf32[kTileThreads / 32];
  __shared__ uint16_t s_emit[kEmitBuf];          // (word in round) << 5 | bit

  const int tid = threadIdx.x, warp = tid >> 5;
  // W: words per list (Wr, one query range); N = Hkv * R * total_blocks < 2^31 (N * W < 2^31).
  const int lpt = int(v.lists_per_tile), W = int(v.words), N = int(v.n_lists);
  if (tid == 0) s_tile = atomicAdd(v.ticket, 1);
  if (tid < lpt) s_n[tid] = 0;
  __syncthreads();
  const int tile = s_tile;
  if (tile >= v.n_tiles) return;  // not reached (grid = n_tiles); CTA-uniform
  const int l0 = tile * lpt, nl = min(lpt, N - l0), nw = nl * W;
  uint32_t* bm = v.bitmap + int64_t(l0) * W;

  // 1. Entries per list.
  for (int j0 = tid * kWordsPerThread; j0 < nw; j0 += kTileWords) {
    uint32_t w[kWordsPerThread];
#pragma unroll
    for (int k = 0; k < kWordsPerThread; ++k) w[k] = j0 + k < nw ? bm[j0 + k] : 0u;
#pragma unroll
    for (int k = 0; k < kWordsPerThread; ++k)
      if (w[k]) atomicAdd(&s_n[(j0 + k) / W], __popc(w[k]));
  }
  __syncthreads();

  // 2. Chunks per list and the (g, b, c) of the work items; scan over the tile.
  //    List l = (g * R + r) * NB + gb (NB >= 1: N >= 1 here).
  const int P = int(v.rows_per_item);
  const int64_t NB = p.total_blocks, R = v.ranges;
  uint64_t mine = 0;
  if (tid < nl) {
    const int n = s_n[tid];
    mine = pack_counts(n, (n + P - 1) / P);
    const int64_t l = l0 + tid, gb = l % NB, gr = l / NB;
    const int b = seq_of_block(v.boff, int(p.batch), gb);
    s_g[tid] = int(gr / R);
    s_roff[tid] = int(gr % R) * W * 32;
    s_b[tid] = b;
    s_c[tid] = int(gb - v.boff[b]);
  }
  uint64_t agg;
  const uint64_t excl_list = block_excl_sum(mine, s_buf64, &agg);
  if (tid < nl) s_excl[tid] = excl_list;

  // 3. The tile's prefix.
  if (warp == 0) {
    const uint64_t excl = look_back(v.tile_state, tile, agg);
    if (tid == 0) {
      s_prefix = excl;
      if (tile == v.n_tiles - 1) {
        const int64_t total = int64_t((excl + agg) >> kEntryBits);
        *v.num_work = int32_t(total < v.work_items ? total : v.work_items);
      }
    }
  }
  __syncthreads();
  const int64_t e0 = int64_t(s_prefix & kEntryMask), c0 = int64_t(s_prefix >> kEntryBits);

  // 4. Work items: chunk j of the tile -> its list (last list starting at or before j).
  const int n_chunks = int(agg >> kEntryBits);
  for (int j = tid; j < n_chunks; j += kTileThreads) {
    int lo = 0, hi = nl;
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (int(s_excl[mid] >> kEntryBits) <= j) lo = mid;
      else hi = mid;
    }
    const int k = j - int(s_excl[lo] >> kEntryBits), n = s_n[lo];
    WorkItem w;
    w.g = s_g[lo];
    w.b = s_b[lo];
    w.c = s_c[lo];
    w.e_begin = int32_t(e0 + int64_t(s_excl[lo] & kEntryMask) + int64_t(k) * P);
    w.e_count = n - k * P < P ? n - k * P : P;
    w.pad[0] = w.pad[1] = w.pad[2] = 0;
    if (c0 + j < v.work_items) v.work[c0 + j] = w;
  }

  // 5. Entries (t_local * K + slot) in (list, row) order.
  const int K = int(p.topk), Hkv = int(p.kv_heads), tc = int(v.tc);
  const bool vec4 = K % 4 == 0 && (reinterpret_cast<uintptr_t>(p.block_ids) & 15) == 0;
  int64_t done = 0;  // entries of the tile before this round
  for (int r0 = 0; r0 < nw; r0 += kTileWords) {
    const int j0 = r0 + tid * kWordsPerThread;
    uint32_t w[kWordsPerThread];
    int cnt = 0;
#pragma unroll
    for (int k = 0; k < kWordsPerThread; ++k) {
      w[k] = j0 + k < nw ? bm[j0 + k] : 0u;
      cnt += __popc(w[k]);
    }
    int round_total;
    const int excl = block_excl_sum(cnt, s_buf32, &round_total);
    for (int base = 0; base < round_total; base += kEmitBuf) {
      // Stage this thread's entries of ranks [base, base + kEmitBuf).
      if (cnt > 0 && excl < base + kEmitBuf && excl + cnt > base) {
        int rank = excl;
#pragma unroll
        for (int k = 0; k < kWordsPerThread; ++k) {
          for (uint32_t x = w[k]; x; x &= x - 1, ++rank)
            if (rank >= base && rank < base + kEmitBuf)
              s_emit[rank - base] = uint16_t(((tid * kWordsPerThread + k) << 5) | (__ffs(x) - 1));
        }
      }
      __syncthreads();
      const int m = min(kEmitBuf, round_total - base);
      for (int e = tid; e < m; e += kTileThreads) {
        const int code = s_emit[e];
        const int f = r0 + (code >> 5);  // word of the tile
        const int li = f / W;
        int tl = s_roff[li] + (f - li * W) * 32 + (code & 31);
        tl = tl < tc ? tl : tc - 1;  // bits are set for rows < tc only; clamped all the same
        const int32_t* ids = p.block_ids + ((v.t0 + tl) * Hkv + s_g[li]) * K;
        const int slot = first_slot(ids, K, s_c[li], vec4);
        const int64_t pos = e0 + done + base + e;
        if (pos < v.entry_cap) v.entries[pos] = tl * K + slot;
      }
      __syncthreads();  // s_emit is free again
    }
    // Read for the last time this pass: clear for the next pass's mark.
#pragma unroll
    for (int k = 0; k < kWordsPerThread; ++k)
      if (w[k]) bm[j0 + k] = 0u;
    done += round_total;
  }
}

}  // namespace

int num_sms() {
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

void csr_tiles(int64_t n_lists, int64_t words, int64_t* lists_per_tile, int64_t* n_tiles) {
  const int64_t per = std::min<int64_t>(kMaxListsPerTile, std::max<int64_t>(1, kTileWords / std::max<int64_t>(1, words)));
  *lists_per_tile = per;
  *n_tiles = (n_lists + per - 1) / per;
}

cudaError_t launch_setup(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  setup_kernel<<<1, kScanThreads, 0, stream>>>(p, v);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // The scratch is fresh: clear the bitmaps once (each scan_fill clears what it read).
  return cudaMemsetAsync(v.bitmap, 0, size_t(v.n_lists * v.words) * 4, stream);
}

cudaError_t launch_csr(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  const int64_t threads = v.tc * p.kv_heads * p.topk;  // >= 1
  const int64_t grid = std::max<int64_t>(1, (threads + kMarkThreads - 1) / kMarkThreads);
  mark_kernel<<<unsigned(grid), kMarkThreads, 0, stream>>>(p, v);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (v.n_tiles > 0) {
    scan_fill_kernel<<<unsigned(v.n_tiles), kTileThreads, 0, stream>>>(p, v);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace msa::cuda::sparse_prefill

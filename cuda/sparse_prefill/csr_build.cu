// Reverse CSR of the block selections, built on the device (no host sync):
// setup (per call), then per pass memset -> mark -> scan -> fill. See
// sparse_prefill.h for the whole schedule. Every index read from device data
// (q_indptr, kv_indptr, kv_lens, block ids) is clamped or range-checked.
#include <climits>

#include "cuda/sparse_prefill/internal.h"

namespace msa::cuda::sparse_prefill {

namespace {

constexpr int kScanThreads = 1024;

__device__ __forceinline__ int64_t clamp64(int64_t x, int64_t lo, int64_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

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

// Mark: a thread per (local row, kv head).
__global__ void mark_kernel(const SparsePrefillParams p, const PassView v) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t Hkv = p.kv_heads, K = p.topk;
  if (idx >= v.tc * Hkv) return;
  const int64_t tl = idx / Hkv, g = idx % Hkv;
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
  float* lse = v.part_lse + (tl * p.q_heads + g * G) * K;
  const uint32_t bit = 1u << (tl & 31);
  for (int64_t s = 0; s < K; ++s) {
    const int32_t c = ids[s];
    bool ok = c >= 0 && int64_t(c) < vis_blocks;
    for (int64_t s2 = 0; ok && s2 < s; ++s2) ok = ids[s2] != c;  // repeats: the first slot wins
    if (ok) {
      const int64_t l = g * p.total_blocks + gbase + c;
      atomicOr(v.bitmap + l * v.words + (tl >> 5), bit);
      atomicAdd(v.counts + l, 1);
    } else {
      for (int64_t h = 0; h < G; ++h) lse[h * K + s] = -INFINITY;
    }
  }
}

// Scan (1 CTA): entry offsets, work items, num_work.
__global__ void __launch_bounds__(kScanThreads) scan_kernel(const SparsePrefillParams p, const PassView v) {
  __shared__ int64_t warp_buf[32];
  const int tid = threadIdx.x;
  const int64_t N = v.n_lists, P = v.rows_per_item, NB = p.total_blocks;
  const int64_t per = (N + kScanThreads - 1) / kScanThreads;
  const int64_t lo = tid * per < N ? tid * per : N;
  const int64_t hi = lo + per < N ? lo + per : N;
  int64_t n_ent = 0, n_chunks = 0;
  for (int64_t l = lo; l < hi; ++l) {
    const int64_t n = v.counts[l];
    n_ent += n;
    n_chunks += (n + P - 1) / P;
  }
  // Pack both sums (entries < 2^31, chunks < 2^31): one int64 scan each.
  int64_t tot_e, tot_c;
  const int64_t incl_e = block_scan<false>(n_ent, warp_buf, &tot_e);
  const int64_t incl_c = block_scan<false>(n_chunks, warp_buf, &tot_c);
  int64_t e = incl_e - n_ent, ch = incl_c - n_chunks;
  for (int64_t l = lo; l < hi; ++l) {
    const int64_t n = v.counts[l];
    v.offsets[l] = int32_t(e);
    if (n > 0) {
      const int64_t g = l / NB, gb = l % NB;
      const int b = seq_of_block(v.boff, int(p.batch), gb);
      const int32_t c = int32_t(gb - v.boff[b]);
      for (int64_t k = 0; k * P < n; ++k) {
        WorkItem w;
        w.g = int32_t(g);
        w.b = b;
        w.c = c;
        w.e_begin = int32_t(e + k * P);
        w.e_count = int32_t(n - k * P < P ? n - k * P : P);
        w.pad[0] = w.pad[1] = w.pad[2] = 0;
        v.work[ch + k] = w;
      }
      ch += (n + P - 1) / P;
    }
    e += n;
  }
  if (tid == 0) {
    v.offsets[N] = int32_t(tot_e);
    *v.num_work = int32_t(tot_c);
  }
}

// Fill: a warp per list, bits in ascending row order -> entries.
constexpr int kFillWarps = 8;
__global__ void __launch_bounds__(kFillWarps * 32) fill_kernel(const SparsePrefillParams p, const PassView v) {
  const int lane = threadIdx.x & 31;
  const int64_t l = int64_t(blockIdx.x) * kFillWarps + (threadIdx.x >> 5);
  if (l >= v.n_lists) return;
  const int32_t n = v.counts[l];
  if (n == 0) return;
  const int64_t NB = p.total_blocks, K = p.topk, Hkv = p.kv_heads;
  const int64_t g = l / NB, gb = l % NB;
  const int b = seq_of_block(v.boff, int(p.batch), gb);
  const int32_t c = int32_t(gb - v.boff[b]);
  int32_t* out = v.entries + v.offsets[l];
  const uint32_t* bm = v.bitmap + l * v.words;
  int32_t run = 0;
  for (int64_t w0 = 0; w0 < v.words && run < n; w0 += 32) {
    uint32_t word = w0 + lane < v.words ? bm[w0 + lane] : 0u;
    const int cnt = __popc(word);
    int incl = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int t = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += t;
    }
    int32_t at = run + incl - cnt;
    while (word) {
      const int bit = __ffs(word) - 1;
      word &= word - 1;
      const int64_t tl = (w0 + lane) * 32 + bit;
      const int32_t* ids = p.block_ids + ((v.t0 + tl) * Hkv + g) * K;
      int64_t s = 0;
      while (s + 1 < K && ids[s] != c) ++s;  // the first slot holding c (mark set the bit for it)
      if (at < n) out[at] = int32_t(tl * K + s);
      ++at;
    }
    run += __shfl_sync(0xffffffffu, incl, 31);
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

cudaError_t launch_setup(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  setup_kernel<<<1, kScanThreads, 0, stream>>>(p, v);
  return cudaGetLastError();
}

cudaError_t launch_csr(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(v.counts, 0, size_t(v.n_lists) * 4, stream);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(v.bitmap, 0, size_t(v.n_lists * v.words) * 4, stream);
  if (err != cudaSuccess) return err;
  const int64_t threads = v.tc * p.kv_heads;
  if (threads > 0) {
    mark_kernel<<<unsigned((threads + 255) / 256), 256, 0, stream>>>(p, v);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  scan_kernel<<<1, kScanThreads, 0, stream>>>(p, v);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (v.n_lists > 0) {
    fill_kernel<<<unsigned((v.n_lists + kFillWarps - 1) / kFillWarps), kFillWarps * 32, 0, stream>>>(p, v);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace msa::cuda::sparse_prefill

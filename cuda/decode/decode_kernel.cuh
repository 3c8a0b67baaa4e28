// msa_decode kernels (sm_80+ mma.sync, portable PTX; see decode.h for the
// split schedule).
//
//   decode_split_kernel: CTA = (request b, kv head, head chunk, split s),
//   4 warps. Prologue: the split's page list -> shared memory (physical page
//   and number of valid tokens of each logical page; sparse: dedup of the
//   block_ids slots). The list is a "virtual" token sequence of n * page_size
//   rows; warp w takes the 16-row groups w, w+4, w+8, ... and runs its own
//   flash-decoding loop over them with a private kStages-deep cp.async
//   pipeline (16-byte zero-filling copies, XOR-swizzled rows, no
//   __syncthreads in the main loop):
//     S[16 heads x 16 keys] = Q K^T    (mma m16n8k16, Q fragments in registers,
//                                       K by ldmatrix; the G <= 16 query heads
//                                       of the group are the M rows, padded)
//     online softmax in base 2, P -> bf16/fp16 A fragments (registers)
//     O[16 x D] += P V                 (V by ldmatrix.trans)
//   fp8 caches: raw e4m3 bytes through the pipeline (half the bytes), each
//   warp converts its group to bf16/fp16 in a private shared buffer (exact
//   integer conversion), scales k_scale / v_scale folded into the softmax
//   scale and the epilogue.
//   Epilogue: the 4 warps' (m, l, O) merged through shared memory in warp
//   order; writes o / lse (num_splits == 1) or the f32 partials (scratch).
//
//   decode_combine_kernel: a warp per (b, q head) merges the num_splits
//   partials in split order (log-sum-exp weights).
//
// Every load is bounds-checked against the device data (lengths clipped,
// page ids and block ids range-checked); rows that are not resolvable are
// zero-filled and masked. Deterministic: fixed reduction orders, no atomics.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decode/decode.h"

namespace msa::cuda::decode {

// ----------------------------------------------------------------- traits

template <class Elem_, bool kFp8_, int kD_>
struct Traits {
  using Elem = Elem_;                       // q / MMA operand type (__nv_bfloat16 or __half)
  static constexpr bool kFp8 = kFp8_;       // K/V caches in float8_e4m3fn
  static constexpr int kD = kD_;            // head_dim: 64 or 128
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kKeys = 16;          // keys per warp per pipeline stage
  static constexpr int kHeads = 16;         // M rows (query heads) per CTA
  static constexpr int kCacheBytes = kFp8 ? 1 : 2;
  static constexpr int kRowBytes = kD * kCacheBytes;       // a cache row in a stage
  static constexpr int kChunksPerRow = kRowBytes / 16;     // 16-byte chunks: 4, 8 or 16
  static constexpr int kSwz = kChunksPerRow >= 8 ? 7 : kChunksPerRow - 1;  // stage row swizzle
  static constexpr int kRowsPerPass = 32 / kChunksPerRow;  // rows a warp copies per pass
  static constexpr int kLoadsPerLane = kKeys * kChunksPerRow / 32;  // per tensor per stage
  static constexpr int kStages = kFp8 ? (kD == 64 ? 6 : 4) : (kD == 64 ? 4 : 3);
  static constexpr int kStageBytes = 2 * kKeys * kRowBytes;        // K rows then V rows
  static constexpr int kOpRowBytes = kD * 2;                       // 16-bit operand row
  static constexpr int kConvBytes = kFp8 ? 2 * kKeys * kOpRowBytes : 0;  // converted K, V
  static constexpr int kWarpBytes = kStages * kStageBytes + kConvBytes;
  static constexpr int kPipeBytes = kWarps * kWarpBytes;
  static constexpr int kEpiBytes = kWarps * kHeads * kD * 4;       // per-warp O (f32)
  static constexpr int kIdChunk = 1024;                            // sparse dedup ids per pass
  static constexpr int kRegionBytes = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;
  static_assert(kRegionBytes >= kIdChunk * 4, "dedup buffer");
  static constexpr int kListOffset = kRegionBytes;
  static constexpr int kListBytes = int(kDecodeMaxPagesPerSplit) * 8;
  static constexpr int kMiscOffset = kListOffset + kListBytes;
  // misc: masks [kWarps][kStages] u32, scan [kWarps] i32, m [kWarps][16], l [kWarps][16] f32
  static constexpr int kMiscBytes = (kWarps * kStages + kWarps + 2 * kWarps * kHeads) * 4;
  static constexpr int kSmemBytes = kMiscOffset + kMiscBytes;
  static constexpr int kSlotsPerThread = int(kDecodeMaxPagesPerSplit) / kThreads;
  static constexpr int kMinBlocks = kSmemBytes <= 74 * 1024 ? 3 : 2;
  static_assert(kChunksPerRow >= 4 && 32 % kChunksPerRow == 0, "copy mapping");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

struct KernelArgs {
  DecodeParams p;
  int64_t head_chunks;  // ceil(G / 16)
  float scale_log2;     // scale * k_scale * log2(e)
  float* lse_part;      // [B, Hq, S] (num_splits > 1)
  float* o_part;        // [B, Hq, S, D]
};

// ----------------------------------------------------------------- PTX helpers

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared copy; src_bytes 0 zero-fills (src must still be a valid address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <class Elem>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  // e4m3 bytes in the high byte of each 16-bit lane -> bf16 (exact; NaN -> +-480):
  // magnitude bits to bit 4 gives value * 2^-120, times 2^120 restores it.
  __device__ __forceinline__ static uint32_t fp8x2(uint32_t v) {
    uint32_t bits = ((v >> 4) & 0x07f007f0u) | (v & 0x80008000u);
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&bits);
    h = __hmul2(h, __bfloat162bfloat162(__ushort_as_bfloat16(0x7b80)));  // 2^120
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Mma<__half> {
  __device__ __forceinline__ static void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  // fp16: magnitude bits to bit 7 gives value * 2^-8 (subnormals exact), times 2^8.
  __device__ __forceinline__ static uint32_t fp8x2(uint32_t v) {
    uint32_t bits = ((v >> 1) & 0x3f803f80u) | (v & 0x80008000u);
    __half2 h = *reinterpret_cast<__half2*>(&bits);
    h = __hmul2(h, __half2half2(__ushort_as_half(0x5c00)));  // 256
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
};

// 16 e4m3 bytes -> 16 Elem values (two 16-byte vectors), in order.
template <class Elem>
__device__ __forceinline__ void convert_fp8x16(const uint4& in, uint4& o0, uint4& o1) {
  const uint32_t w[4] = {in.x, in.y, in.z, in.w};
  uint32_t r[8];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    r[2 * i] = Mma<Elem>::fp8x2(__byte_perm(w[i], 0u, 0x1404));      // bytes 0, 1
    r[2 * i + 1] = Mma<Elem>::fp8x2(__byte_perm(w[i], 0u, 0x3424));  // bytes 2, 3
  }
  o0 = make_uint4(r[0], r[1], r[2], r[3]);
  o1 = make_uint4(r[4], r[5], r[6], r[7]);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// ----------------------------------------------------------------- split kernel

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) decode_split_kernel(const KernelArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kD = Tr::kD;
  constexpr int kThreads = Tr::kThreads;
  extern __shared__ __align__(128) uint8_t smem[];
  const DecodeParams& p = a.p;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  int64_t idx = blockIdx.x;
  const int64_t hc = idx % a.head_chunks;
  idx /= a.head_chunks;
  const int64_t S = p.num_splits;
  const int64_t s = idx % S;
  idx /= S;
  const int64_t kvh = idx % p.kv_heads;
  const int64_t b = idx / p.kv_heads;
  const int64_t Hq = p.q_heads, Hkv = p.kv_heads;
  const int64_t G = Hq / Hkv;
  const int64_t h0 = kvh * G + hc * Tr::kHeads;                      // first query head of the CTA
  const int nh = int(G - hc * Tr::kHeads < Tr::kHeads ? G - hc * Tr::kHeads : Tr::kHeads);
  const int ps = int(p.page_size);
  const int64_t P = p.max_pages;
  const int64_t cap = P * ps;
  int64_t L64 = p.kv_lens[b];
  L64 = L64 < 0 ? 0 : (L64 > cap ? cap : L64);
  const int L = int(L64);
  const int nblk = (L + ps - 1) / ps;  // logical pages holding tokens < L

  int2* list = reinterpret_cast<int2*>(smem + Tr::kListOffset);  // {physical page, valid tokens}
  uint32_t* masks = reinterpret_cast<uint32_t*>(smem + Tr::kMiscOffset);
  int* scan = reinterpret_cast<int*>(masks + Tr::kWarps * Tr::kStages);
  float* sm_m = reinterpret_cast<float*>(scan + Tr::kWarps);
  float* sm_l = sm_m + Tr::kWarps * Tr::kHeads;
  const int32_t* pt_row = p.page_table + b * P;

  auto page_entry = [&](int c) {  // 0 <= c < nblk <= P
    const int32_t phys = pt_row[c];
    const bool ok = phys >= 0 && int64_t(phys) < p.num_pages;
    const int rem = L - c * ps;
    return make_int2(ok ? phys : 0, ok ? (rem < ps ? rem : ps) : 0);
  };

  // ---- 1. the split's page list
  int n = 0;
  if (!p.sparse) {
    const int64_t per = (nblk + S - 1) / S;
    const int64_t c0 = s * per;
    const int64_t c1 = c0 + per < nblk ? c0 + per : nblk;
    n = c1 > c0 ? int(c1 - c0) : 0;
    for (int i = tid; i < n; i += kThreads) list[i] = page_entry(int(c0 + i));
  } else {
    const int64_t K = p.topk;
    const int64_t cs = (K + S - 1) / S;
    const int64_t lo = s * cs < K ? s * cs : K;
    const int64_t hi = lo + cs < K ? lo + cs : K;
    const int32_t* ids = p.block_ids + (b * Hkv + kvh) * K;
    int my_id[Tr::kSlotsPerThread];
    uint32_t keep = 0;
    int64_t my_last = -1;  // largest slot index this thread keeps
#pragma unroll
    for (int k = 0; k < Tr::kSlotsPerThread; ++k) {
      const int64_t i = lo + tid + int64_t(k) * kThreads;
      my_id[k] = -1;
      if (i < hi) {
        const int id = ids[i];
        my_id[k] = id;
        if (id >= 0 && id < nblk) {
          keep |= 1u << k;
          my_last = i;
        }
      }
    }
    // Drop ids repeated in an earlier slot of the row (the whole row up to hi).
    int* sid = reinterpret_cast<int*>(smem);
    for (int64_t base = 0; base < hi; base += Tr::kIdChunk) {
      const int cnt = int(hi - base < Tr::kIdChunk ? hi - base : Tr::kIdChunk);
      __syncthreads();
      for (int j = tid; j < cnt; j += kThreads) sid[j] = ids[base + j];
      __syncthreads();
      if (keep != 0) {
        const int jend = int(my_last - base < cnt ? my_last - base : cnt);  // slots j < my_last
        for (int j = 0; j < jend; ++j) {
          const int v = sid[j];
          const int64_t gj = base + j;
#pragma unroll
          for (int k = 0; k < Tr::kSlotsPerThread; ++k)
            if (v == my_id[k] && gj < lo + tid + int64_t(k) * kThreads) keep &= ~(1u << k);
        }
      }
    }
    // Compact in (thread, k) order: exclusive scan of the per-thread counts.
    const int cnt = __popc(keep);
    int incl = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane == 31) scan[warp] = incl;
    __syncthreads();
    int pos = incl - cnt;
    for (int w = 0; w < Tr::kWarps; ++w) {
      if (w < warp) pos += scan[w];
      n += scan[w];
    }
#pragma unroll
    for (int k = 0; k < Tr::kSlotsPerThread; ++k)
      if (keep & (1u << k)) list[pos++] = page_entry(my_id[k]);
  }
  __syncthreads();

  const bool direct = S == 1;  // write o / lse, else the partials
  const int64_t row0 = b * Hq + h0;  // flat (b, h) of M row 0

  if (n == 0) {  // nothing to attend: empty partial / o = 0, lse = -inf
    for (int i = tid; i < nh * kD; i += kThreads) {
      const int r = i / kD, c = i % kD;
      if (direct)
        static_cast<Elem*>(p.o)[(row0 + r) * kD + c] = Mma<Elem>::from_float(0.0f);
      else
        a.o_part[((row0 + r) * S + s) * kD + c] = 0.0f;
    }
    if (tid < nh) {
      if (direct)
        p.lse[row0 + tid] = -INFINITY;
      else
        a.lse_part[(row0 + tid) * S + s] = -INFINITY;
    }
    return;
  }

  // ---- 2. Q fragments (A operand, rows = heads, padded with zeros)
  const int g = lane / 4, t = lane % 4;
  uint32_t qf[kD / 16][4];
  {
    const Elem* q = static_cast<const Elem*>(p.q) + row0 * kD;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = g + (r & 1) * 8;
        const int col = ks * 16 + (r >> 1) * 8 + 2 * t;
        qf[ks][r] = row < nh ? *reinterpret_cast<const uint32_t*>(q + row * kD + col) : 0u;
      }
  }

  // ---- 3. per-warp pipeline over 16-row groups w, w+4, ...
  const int nv = n * ps;                         // virtual rows of the list (< 2^31)
  const int ng = (nv + Tr::kKeys - 1) / Tr::kKeys;
  const int nit = ng > warp ? (ng - warp + Tr::kWarps - 1) / Tr::kWarps : 0;
  uint8_t* wbase = smem + warp * Tr::kWarpBytes;
  const uint8_t* kbase = static_cast<const uint8_t*>(p.k_cache);
  const uint8_t* vbase = static_cast<const uint8_t*>(p.v_cache);

  auto issue = [&](int it, int st) {
    const int gi = warp + Tr::kWarps * it;
    uint32_t mask = 0;
    if (gi < ng) {
      const int v = gi * Tr::kKeys + (lane & 15);
      uint32_t rowidx = 0;  // row of [num_pages * Hkv * page_size] (< 2^32, checked by the handler)
      bool valid = false;
      if (v < nv) {
        const int i = v / ps;
        const int off = v - i * ps;
        const int2 e = list[i];
        if (off < e.y) {
          valid = true;
          rowidx = uint32_t((int64_t(e.x) * Hkv + kvh) * ps + off);
        }
      }
      mask = __ballot_sync(0xffffffffu, valid) & 0xffffu;
      const uint32_t sk = smem_u32(wbase + st * Tr::kStageBytes);
      const uint32_t sv = sk + Tr::kKeys * Tr::kRowBytes;
      const int c = lane % Tr::kChunksPerRow;
#pragma unroll
      for (int j = 0; j < Tr::kLoadsPerLane; ++j) {
        const int row = lane / Tr::kChunksPerRow + j * Tr::kRowsPerPass;
        const uint32_t ri = __shfl_sync(0xffffffffu, rowidx, row);
        const bool ok = (mask >> row) & 1u;
        const uint64_t off = uint64_t(ri) * Tr::kRowBytes + c * 16;
        const uint32_t dst = row * Tr::kRowBytes + ((c ^ (row & Tr::kSwz)) * 16);
        cp_async_16(sk + dst, ok ? kbase + off : kbase, ok ? 16 : 0);
        cp_async_16(sv + dst, ok ? vbase + off : vbase, ok ? 16 : 0);
      }
    }
    if (lane == 0) masks[warp * Tr::kStages + st] = mask;
    cp_async_commit();
  };

  float m_run[2] = {-INFINITY, -INFINITY};  // rows g, g + 8 (log2 units)
  float l_run[2] = {0.0f, 0.0f};            // thread-partial sums
  float oacc[kD / 8][4];
#pragma unroll
  for (int j = 0; j < kD / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) oacc[j][e] = 0.0f;

#pragma unroll
  for (int st = 0; st < Tr::kStages - 1; ++st) issue(st, st);

  int st_read = 0, st_write = Tr::kStages - 1;
  for (int it = 0; it < nit; ++it) {
    issue(it + Tr::kStages - 1, st_write);
    st_write = st_write + 1 == Tr::kStages ? 0 : st_write + 1;
    cp_async_wait<Tr::kStages - 1>();
    __syncwarp();
    const uint32_t mask = masks[warp * Tr::kStages + st_read];
    const uint8_t* stage = wbase + st_read * Tr::kStageBytes;
    st_read = st_read + 1 == Tr::kStages ? 0 : st_read + 1;
    if (mask == 0) {  // warp-uniform: an unresolvable group
      __syncwarp();
      continue;
    }
    const uint8_t* kt = stage;
    const uint8_t* vt = stage + Tr::kKeys * Tr::kRowBytes;
    if constexpr (Tr::kFp8) {
      uint8_t* ck = wbase + Tr::kStages * Tr::kStageBytes;
      uint8_t* cv = ck + Tr::kKeys * Tr::kOpRowBytes;
#pragma unroll
      for (int j = 0; j < Tr::kLoadsPerLane; ++j) {
        const int q = lane + 32 * j;
        const int r = q % Tr::kKeys, c = q / Tr::kKeys;
        const int src = r * Tr::kRowBytes + ((c ^ (r & Tr::kSwz)) * 16);
        const int d0 = r * Tr::kOpRowBytes + (((2 * c) ^ (r & 7)) * 16);
        const int d1 = r * Tr::kOpRowBytes + (((2 * c + 1) ^ (r & 7)) * 16);
        uint4 o0, o1;
        convert_fp8x16<Elem>(*reinterpret_cast<const uint4*>(kt + src), o0, o1);
        *reinterpret_cast<uint4*>(ck + d0) = o0;
        *reinterpret_cast<uint4*>(ck + d1) = o1;
        convert_fp8x16<Elem>(*reinterpret_cast<const uint4*>(vt + src), o0, o1);
        *reinterpret_cast<uint4*>(cv + d0) = o0;
        *reinterpret_cast<uint4*>(cv + d1) = o1;
      }
      __syncwarp();
      kt = ck;
      vt = cv;
    }
    const uint32_t kt_s = smem_u32(kt), vt_s = smem_u32(vt);

    // S = Q K^T: two n8 tiles (keys 0-7, 8-15); even / odd k-steps in separate accumulators.
    float sacc[2][2][4];
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int y = 0; y < 2; ++y)
#pragma unroll
        for (int e = 0; e < 4; ++e) sacc[x][y][e] = 0.0f;
    {
      const int row = (lane & 7) + ((lane >> 4) << 3);
      const int csel = (lane >> 3) & 1;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t kb[4];
        const int c = 2 * ks + csel;
        ldmatrix_x4(kb, kt_s + row * Tr::kOpRowBytes + ((c ^ (row & 7)) * 16));
        Mma<Elem>::run(sacc[ks & 1][0], qf[ks], kb[0], kb[1]);
        Mma<Elem>::run(sacc[ks & 1][1], qf[ks], kb[2], kb[3]);
      }
    }
    // Online softmax (base 2). sacc[.][nt][e]: row g + 8*(e>>1), key nt*8 + 2t + (e&1).
    float sc[2][4];
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = nt * 8 + 2 * t + (e & 1);
        const float x = (sacc[0][nt][e] + sacc[1][nt][e]) * a.scale_log2;
        sc[nt][e] = (mask >> key) & 1u ? x : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
      }
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m_run[r] - m_use[r]);
      m_run[r] = m_new;
      l_run[r] *= alpha;
#pragma unroll
      for (int j = 0; j < kD / 8; ++j) {
        oacc[j][2 * r] *= alpha;
        oacc[j][2 * r + 1] *= alpha;
      }
    }
    uint32_t pa[4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      float pv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pv[e] = exp2f(sc[nt][e] - m_use[e >> 1]);
        l_run[e >> 1] += pv[e];
      }
      pa[2 * nt] = Mma<Elem>::pack(pv[0], pv[1]);      // row g
      pa[2 * nt + 1] = Mma<Elem>::pack(pv[2], pv[3]);  // row g + 8
    }
    // O += P V: pairs of n8 d-tiles per ldmatrix.x4.trans.
    {
      const int row = (lane & 7) + (((lane >> 3) & 1) << 3);
      const int csel = lane >> 4;
#pragma unroll
      for (int jp = 0; jp < kD / 16; ++jp) {
        uint32_t vb[4];
        const int c = 2 * jp + csel;
        ldmatrix_x4_trans(vb, vt_s + row * Tr::kOpRowBytes + ((c ^ (row & 7)) * 16));
        Mma<Elem>::run(oacc[2 * jp], pa, vb[0], vb[1]);
        Mma<Elem>::run(oacc[2 * jp + 1], pa, vb[2], vb[3]);
      }
    }
    __syncwarp();
  }
  cp_async_wait<0>();

  // ---- 4. merge the 4 warps (warp order), write
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
  __syncthreads();  // every warp is done with its pipeline buffers
  if (t == 0) {
    sm_m[warp * Tr::kHeads + g] = m_run[0];
    sm_m[warp * Tr::kHeads + g + 8] = m_run[1];
    sm_l[warp * Tr::kHeads + g] = l_run[0];
    sm_l[warp * Tr::kHeads + g + 8] = l_run[1];
  }
  __syncthreads();
  auto row_stats = [&](int row, float& M, float& Ltot) {
    M = -INFINITY;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) M = fmaxf(M, sm_m[w * Tr::kHeads + row]);
    const float mu = M == -INFINITY ? 0.0f : M;
    Ltot = 0.0f;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) Ltot += sm_l[w * Tr::kHeads + row] * exp2f(sm_m[w * Tr::kHeads + row] - mu);
  };
  float* epi = reinterpret_cast<float*>(smem);  // [kWarps][16][kD]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    float M, Ltot;
    row_stats(row, M, Ltot);
    const float mu = M == -INFINITY ? 0.0f : M;
    const float f = Ltot > 0.0f ? exp2f(m_run[r] - mu) * p.v_scale / Ltot : 0.0f;
    float* dst = epi + (warp * Tr::kHeads + row) * kD;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j)
      *reinterpret_cast<float2*>(dst + j * 8 + 2 * t) = make_float2(oacc[j][2 * r] * f, oacc[j][2 * r + 1] * f);
  }
  __syncthreads();
  for (int i = tid; i < Tr::kHeads * kD / 4; i += kThreads) {
    const int row = (i * 4) / kD, col = (i * 4) % kD;
    if (row >= nh) continue;
    float4 acc = *reinterpret_cast<const float4*>(epi + row * kD + col);
#pragma unroll
    for (int w = 1; w < Tr::kWarps; ++w) {
      const float4 x = *reinterpret_cast<const float4*>(epi + (w * Tr::kHeads + row) * kD + col);
      acc.x += x.x;
      acc.y += x.y;
      acc.z += x.z;
      acc.w += x.w;
    }
    if (direct) {
      Elem* o = static_cast<Elem*>(p.o) + (row0 + row) * kD + col;
      o[0] = Mma<Elem>::from_float(acc.x);
      o[1] = Mma<Elem>::from_float(acc.y);
      o[2] = Mma<Elem>::from_float(acc.z);
      o[3] = Mma<Elem>::from_float(acc.w);
    } else {
      *reinterpret_cast<float4*>(a.o_part + ((row0 + row) * S + s) * kD + col) = acc;
    }
  }
  if (tid < nh) {
    float M, Ltot;
    row_stats(tid, M, Ltot);
    const float lse = Ltot > 0.0f ? (M + log2f(Ltot)) * 0.69314718055994531f : -INFINITY;
    if (direct)
      p.lse[row0 + tid] = lse;
    else
      a.lse_part[(row0 + tid) * S + s] = lse;
  }
}

// ----------------------------------------------------------------- combine kernel

// A warp per (b, q head) row: o = sum_s w_s o_s / sum_s w_s, w_s = exp(lse_s - max),
// lse = max + log(sum w_s); rows whose splits are all empty get o = 0, lse = -inf.
template <class Elem>
__global__ void __launch_bounds__(128) decode_combine_kernel(const float* __restrict__ lse_part,
                                                             const float* __restrict__ o_part,
                                                             Elem* __restrict__ o, float* __restrict__ lse,
                                                             int64_t rows, int64_t S, int D) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (row >= rows) return;
  const float* lp = lse_part + row * S;
  float M = -INFINITY;
  for (int64_t s = lane; s < S; s += 32) M = fmaxf(M, lp[s]);
  M = warp_max(M);
  Elem* out = o + row * D;
  if (M == -INFINITY) {
    for (int d = lane; d < D; d += 32) out[d] = Mma<Elem>::from_float(0.0f);
    if (lane == 0) lse[row] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (int64_t s = lane; s < S; s += 32) sum += __expf(lp[s] - M);
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
  const float* op = o_part + row * S * D;
  for (int d0 = lane * 4; d0 < D; d0 += 128) {
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int64_t s = 0; s < S; ++s) {
      const float ls = lp[s];
      if (ls == -INFINITY) continue;
      const float w = __expf(ls - M);
      const float4 x = *reinterpret_cast<const float4*>(op + s * D + d0);
      acc.x += w * x.x;
      acc.y += w * x.y;
      acc.z += w * x.z;
      acc.w += w * x.w;
    }
    out[d0] = Mma<Elem>::from_float(acc.x * inv);
    out[d0 + 1] = Mma<Elem>::from_float(acc.y * inv);
    out[d0 + 2] = Mma<Elem>::from_float(acc.z * inv);
    out[d0 + 3] = Mma<Elem>::from_float(acc.w * inv);
  }
  if (lane == 0) lse[row] = M + __logf(sum);
}

}  // namespace msa::cuda::decode

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
//   fp8 caches: raw e4m3 bytes through the pipeline (half the bytes) and
//   straight into the mma operand registers (no converted copy in shared
//   memory): each lane reads its fragments' bytes with 16-byte (K) / 16- or
//   8-byte (V) shared loads and converts them with integer bit moves (exact,
//   see fp8x4). The fragment layouts are permuted to make that possible:
//   K's head_dim order (the same permutation on Q's fragments: Q K^T is
//   invariant), V's head_dim order (undone when the epilogue writes O).
//   k_scale / v_scale are folded into the softmax scale and the epilogue.
//   sm_89+ (the sm_90a build) converts fp8 with the hardware instead
//   (cvt.rn.f16x2.e4m3x2, one instruction per two values) and runs both mmas in
//   fp16 (kCvtK / kCvtV below): Q in fp16 (bf16 q: each row scaled by a power of
//   two, undone in its softmax scale), P in fp16 scaled by 2^kPLog2 (undone in lse).
//   The compute_80 PTX keeps the integer conversion (exact, NaN -> +-480).
//   Epilogue: the 4 warps' (m, l, O) merged through shared memory in warp
//   order; writes o / lse (num_splits == 1) or the f32 partials (scratch).
//
//   decode_combine_kernel: a warp per (b, q head) merges the num_splits
//   partials in split order (log-sum-exp weights).
//
// Every load is bounds-checked against the device data (lengths clipped,
// page ids and block ids range-checked); rows that are not resolvable are
// zero-filled and masked. Deterministic: fixed reduction orders, no atomics.
//
// Files: traits.cuh (configuration, arguments), ptx_helpers.cuh (copies, mma,
// fp8 conversion), combine_kernel.cuh; this file: the split kernel.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decode/combine_kernel.cuh"
#include "cuda/decode/decode.h"
#include "cuda/decode/ptx_helpers.cuh"
#include "cuda/decode/traits.cuh"

// sm_89+ fp8: K through the hardware conversion too (Q in fp16); 0: only V, Q K^T in
// q's type with the integer K conversion (benchmarks/NOTES-decode.md, session 3).
#ifndef MSA_DECODE_FP8_CVT_K
#define MSA_DECODE_FP8_CVT_K 1
#endif

namespace msa::cuda::decode {

// bf16 Q fragments of the fp8 cvt path (k-step ks: [0] / [2] row g, [1] / [3] row
// g + 8) -> fp16 for the fp16 Q K^T. Each row is scaled by 2^e, e chosen so that the
// row's max |q| lands in [2^14, 2^15): every element >= 2^-28 of that max converts
// exactly (bf16's 8 significant bits fit fp16's 11, no overflow); smaller ones become
// fp16 subnormals or 0, a change of at most 2^-28 max|q| each (2^-24.5 |q_row| in norm
// at D = 128: below f32 round-off of q). sl2[r] *= 2^-e undoes the scale in the scores.
// e <= 100 (a zero row, e.g. padding, stays 0; only |q| < 2^-114 is lost then).
template <int kKS>
__device__ __forceinline__ void to_f16_rows(uint32_t (&qf)[kKS][4], float (&sl2)[2]) {
  float mx[2] = {0.0f, 0.0f};
#pragma unroll
  for (int ks = 0; ks < kKS; ++ks)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float lo = __uint_as_float(qf[ks][r] << 16), hi = __uint_as_float(qf[ks][r] & 0xffff0000u);
      mx[r & 1] = fmaxf(mx[r & 1], fmaxf(fabsf(lo), fabsf(hi)));  // (fmaxf drops NaN)
    }
  float up[2];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 1));  // the lane quad holds the row
    mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 2));
    const int ex = int(__float_as_uint(mx[rr]) >> 23);  // mx in [2^(ex-127), 2^(ex-126)), ex <= 255
    const int e = min(141 - max(ex, 1), 100);           // in [-114, 100]
    up[rr] = __uint_as_float(uint32_t(127 + e) << 23);  // 2^e
    sl2[rr] *= __uint_as_float(uint32_t(127 - e) << 23);
  }
#pragma unroll
  for (int ks = 0; ks < kKS; ++ks)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float lo = __uint_as_float(qf[ks][r] << 16), hi = __uint_as_float(qf[ks][r] & 0xffff0000u);
      qf[ks][r] = Mma<__half>::pack(lo * up[r & 1], hi * up[r & 1]);
    }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) decode_split_kernel(const KernelArgs a) {
  using Elem = typename Tr::Elem;
  constexpr int kD = Tr::kD;
  // fp8 with the sm_89+ cvt: V (and K) become fp16 operands, P V (and Q K^T) fp16 mmas.
  // P is packed as p * 2^kPLog2 (<= 2^15 < 65504, a normal fp16 down to p = 2^-29);
  // l sums the same scaled p, so O / l is unchanged and only lse subtracts kPLog2.
  constexpr bool kCvtV = Tr::kFp8 && kHasFp8Cvt;
  constexpr bool kCvtK = kCvtV && MSA_DECODE_FP8_CVT_K;
  using PElem = std::conditional_t<kCvtV, __half, Elem>;  // P / V operand type
  constexpr float kPLog2 = kCvtV ? 15.0f : 0.0f;
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

  // {first cache row of the page (row of [num_pages * Hkv * page_size]), valid tokens}
  uint2* list = reinterpret_cast<uint2*>(smem + Tr::kListOffset);
  uint32_t* masks = reinterpret_cast<uint32_t*>(smem + Tr::kMiscOffset);
  int* scan = reinterpret_cast<int*>(masks + Tr::kWarps * Tr::kStages);
  float* sm_m = reinterpret_cast<float*>(scan + Tr::kWarps);
  float* sm_l = sm_m + Tr::kWarps * Tr::kHeads;
  const int32_t* pt_row = p.page_table + b * P;

  auto page_entry = [&](int c) {  // 0 <= c < nblk <= P
    const int32_t phys = pt_row[c];
    const bool ok = phys >= 0 && int64_t(phys) < p.num_pages;
    const int rem = L - c * ps;
    // < 2^32 rows: checked by the handler (num_pages * Hkv * page_size <= 2^32 - 1)
    const uint32_t row0 = ok ? uint32_t((int64_t(phys) * Hkv + kvh) * ps) : 0u;
    return make_uint2(row0, ok ? uint32_t(rem < ps ? rem : ps) : 0u);
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
  float sl2[2] = {a.scale_log2, a.scale_log2};  // softmax scale (log2 units) of rows g, g + 8
  {
    const Elem* q = static_cast<const Elem*>(p.q) + row0 * kD;
    if constexpr (!Tr::kFp8) {
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int row = g + (r & 1) * 8;
          const int col = ks * 16 + (r >> 1) * 8 + 2 * t;
          qf[ks][r] = row < nh ? *reinterpret_cast<const uint32_t*>(q + row * kD + col) : 0u;
        }
    } else {
      // fp8: head_dim permuted to match the K fragments built from 16 contiguous fp8
      // bytes (see the Q K^T loop): k-step ks = 4j + s takes, for lane quad t, the columns
      // d0 = 64j + 16t + 4s .. d0 + 3 as a0 = {d0, d0 + 1}, a2 = {d0 + 2, d0 + 3} (cvt path,
      // kCvtK) or a0 = {d0, d0 + 2}, a2 = {d0 + 1, d0 + 3} (integer conversion).
#pragma unroll
      for (int j = 0; j < kD / 64; ++j)
#pragma unroll
        for (int s4 = 0; s4 < 4; ++s4)
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int row = g + rr * 8;
            const int d0 = 64 * j + 16 * t + 4 * s4;
            const uint2 w = row < nh ? *reinterpret_cast<const uint2*>(q + row * kD + d0) : make_uint2(0u, 0u);
            qf[4 * j + s4][rr] = kCvtK ? w.x : __byte_perm(w.x, w.y, 0x5410);
            qf[4 * j + s4][2 + rr] = kCvtK ? w.y : __byte_perm(w.x, w.y, 0x7632);
          }
      if constexpr (kCvtK && std::is_same_v<Elem, __nv_bfloat16>) to_f16_rows(qf, sl2);
    }
  }

  // ---- 3. per-warp pipeline over 16-row groups w, w+4, ...
  const int nv = n * ps;                         // virtual rows of the list (<= 2^30)
  const int ng = (nv + Tr::kKeys - 1) / Tr::kKeys;
  const int nit = ng > warp ? (ng - warp + Tr::kWarps - 1) / Tr::kWarps : 0;
  uint8_t* wbase = smem + warp * Tr::kWarpBytes;

  // Copies: lane copies chunk cc of rows rsub + j * kRowsPerPass (whole rows per
  // instruction: coalesced). Each lane resolves row (lane & 15) of the group and
  // the copying lanes fetch its cache row index by shuffle.
  const int cc = lane % Tr::kChunksPerRow;
  const int rsub = lane / Tr::kChunksPerRow;
  // (opaque to the compiler, which would otherwise re-add the cache base to every address)
  const uint8_t* kl = opaque(static_cast<const uint8_t*>(p.k_cache) + cc * 16);
  const uint8_t* vl = opaque(static_cast<const uint8_t*>(p.v_cache) + cc * 16);
  uint32_t dof[Tr::kLoadsPerLane];  // stage offsets of this lane's K chunks (V: + kKeys rows)
#pragma unroll
  for (int j = 0; j < Tr::kLoadsPerLane; ++j) {
    const int row = rsub + j * Tr::kRowsPerPass;
    dof[j] = uint32_t(row * Tr::kRowBytes + ((cc ^ Tr::swz(row)) * 16));
  }

  // base + ri * kRowBytes as one IMAD.WIDE (a compile-time kRowBytes becomes shifts + 64-bit adds)
  auto row_addr = [&](const uint8_t* base, uint32_t ri) {
    return base + uint64_t(ri) * a.row_bytes;
  };

  auto issue = [&](int it, int st) {
    const int gi = warp + Tr::kWarps * it;
    uint32_t mask = 0;
    if (gi < ng) {
      const int v = gi * Tr::kKeys + (lane & 15);
      uint32_t rowidx = 0;  // row of [num_pages * Hkv * page_size] (< 2^32, checked by the handler)
      bool valid = false;
      if (v < nv) {
        const int i = int((uint64_t(uint32_t(v)) * a.ps_mul) >> a.ps_shift);  // v / ps
        const int off = v - i * ps;
        const uint2 e = list[i];
        if (off < int(e.y)) {
          valid = true;
          rowidx = e.x + uint32_t(off);
        }
      }
      mask = __ballot_sync(0xffffffffu, valid) & 0xffffu;
      // An all-invalid group is never read: no copy (and no address into a cache that
      // may have no page at all). Otherwise invalid rows zero-fill from row 0's
      // address (a valid row exists, so the cache has one).
      if (mask != 0) {
        const uint32_t sk = smem_u32(wbase + st * Tr::kStageBytes);
        const uint32_t mrow = mask >> rsub;  // bit j * kRowsPerPass: row j of this lane valid
#pragma unroll
        for (int j = 0; j < Tr::kLoadsPerLane; ++j) {
          const uint32_t ri = __shfl_sync(0xffffffffu, rowidx, rsub + j * Tr::kRowsPerPass);
          const bool zero = !((mrow >> (j * Tr::kRowsPerPass)) & 1u);
          cp_async_16_zfill(sk + dof[j], row_addr(kl, ri), zero);
          cp_async_16_zfill(sk + dof[j] + Tr::kKeys * Tr::kRowBytes, row_addr(vl, ri), zero);
        }
      }
    }
    if (lane == 0) masks[warp * Tr::kStages + st] = mask;
    cp_async_commit();
  };

  // fp8 fragment loads (stage offsets): K rows g (+8), chunks 4j + t; V rows
  // 2t + x (+8), bytes [g * kD / 8, +kD / 8). Rows r and r + 8 swizzle alike.
  [[maybe_unused]] uint32_t koff[kD / 64];
  [[maybe_unused]] uint32_t voff[2];
  if constexpr (Tr::kFp8) {
#pragma unroll
    for (int j = 0; j < kD / 64; ++j) koff[j] = uint32_t(g * Tr::kRowBytes + (((4 * j + t) ^ Tr::swz(g)) * 16));
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      const int r = 2 * t + x;
      const int byte = g * (kD / 8);
      voff[x] = uint32_t(Tr::kKeys * Tr::kRowBytes + r * Tr::kRowBytes + (((byte / 16) ^ Tr::swz(r)) * 16) + byte % 16);
    }
  }

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

    // S = Q K^T: two n8 tiles (keys 0-7, 8-15); even / odd k-steps in separate accumulators.
    float sacc[2][2][4];
#pragma unroll
    for (int x = 0; x < 2; ++x)
#pragma unroll
      for (int y = 0; y < 2; ++y)
#pragma unroll
        for (int e = 0; e < 4; ++e) sacc[x][y][e] = 0.0f;
    if constexpr (!Tr::kFp8) {
      const uint32_t kt_s = smem_u32(stage);
      const int row = (lane & 7) + ((lane >> 4) << 3);
      const int csel = (lane >> 3) & 1;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t kb[4];
        const int c = 2 * ks + csel;
        ldmatrix_x4(kb, kt_s + row * Tr::kRowBytes + ((c ^ Tr::swz(row)) * 16));
        Mma<Elem>::run(sacc[ks & 1][0], qf[ks], kb[0], kb[1]);
        Mma<Elem>::run(sacc[ks & 1][1], qf[ks], kb[2], kb[3]);
      }
    } else {
      // B fragment of n-tile nt (key n = 8 nt + g): one 16-byte load of the key's fp8
      // bytes [64j + 16t, +16) holds b0 / b1 of 4 k-steps. Word s: with kCvtK (fp16
      // MMA) b0 = bytes 0, 1, b1 = bytes 2, 3 = columns d0 + {0, 1} / d0 + {2, 3} of
      // Q's fragments; with the integer conversion (Elem MMA) b0 = bytes 0, 2,
      // b1 = bytes 1, 3 = columns d0 + {0, 2} / d0 + {1, 3} (the Q load pairs alike).
      using KElem = std::conditional_t<kCvtK, __half, Elem>;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int j = 0; j < kD / 64; ++j) {
          const uint4 kr = *reinterpret_cast<const uint4*>(stage + koff[j] + nt * 8 * Tr::kRowBytes);
          const uint32_t w[4] = {kr.x, kr.y, kr.z, kr.w};
#pragma unroll
          for (int s4 = 0; s4 < 4; ++s4) {
            uint32_t b0, b1;
            if constexpr (kCvtK) {
              fp8x4_f16_pairs(w[s4], b0, b1);
            } else {
              fp8x4<Elem>(w[s4], b0, b1);
            }
            Mma<KElem>::run(sacc[s4 & 1][nt], qf[4 * j + s4], b0, b1);
          }
        }
    }
    // Online softmax (base 2). sacc[.][nt][e]: row g + 8*(e>>1), key nt*8 + 2t + (e&1).
    float sc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[nt][e] = (sacc[0][nt][e] + sacc[1][nt][e]) * sl2[e >> 1];
    if (mask != 0xffffu) {  // warp-uniform: a partial group (page or sequence end)
      const uint32_t mk = mask >> (2 * t);  // bits 0, 1, 8, 9: this lane's keys
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (!((mk >> (nt * 8 + (e & 1))) & 1u)) sc[nt][e] = -INFINITY;
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
    float m_use[2], alpha[2];
    bool grew = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.0f : m_new;
      grew |= m_new != m_run[r];
      alpha[r] = exp2f(m_run[r] - m_use[r]);
      m_run[r] = m_new;
    }
    // Rescale only when some row's max moved (else alpha == exp2(0) == 1): after the
    // first groups of a long sequence this skips 2 * kD / 8 multiplies per lane.
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        l_run[r] *= alpha[r];
#pragma unroll
        for (int j = 0; j < kD / 8; ++j) {
          oacc[j][2 * r] *= alpha[r];
          oacc[j][2 * r + 1] *= alpha[r];
        }
      }
    }
    // p * 2^kPLog2 = exp2(sc - (m_use - kPLog2)): the rounding of m_use - kPLog2 is at
    // most half an ulp of m_use, below the f32 error the logits near m_use already carry.
    float m_p[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) m_p[r] = m_use[r] - kPLog2;
    uint32_t pa[4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      float pv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pv[e] = exp2f(sc[nt][e] - m_p[e >> 1]);
        l_run[e >> 1] += pv[e];
      }
      pa[2 * nt] = Mma<PElem>::pack(pv[0], pv[1]);      // row g
      pa[2 * nt + 1] = Mma<PElem>::pack(pv[2], pv[3]);  // row g + 8
    }
    // O += P V
    if constexpr (!Tr::kFp8) {
      // pairs of n8 d-tiles per ldmatrix.x4.trans
      const uint32_t vt_s = smem_u32(stage + Tr::kKeys * Tr::kRowBytes);
      const int row = (lane & 7) + (((lane >> 3) & 1) << 3);
      const int csel = lane >> 4;
#pragma unroll
      for (int jp = 0; jp < kD / 16; ++jp) {
        uint32_t vb[4];
        const int c = 2 * jp + csel;
        ldmatrix_x4_trans(vb, vt_s + row * Tr::kRowBytes + ((c ^ Tr::swz(row)) * 16));
        Mma<Elem>::run(oacc[2 * jp], pa, vb[0], vb[1]);
        Mma<Elem>::run(oacc[2 * jp + 1], pa, vb[2], vb[3]);
      }
    } else {
      // B fragment (k = key, n = d): lane (g, t) needs keys 2t, 2t+1 (b0) and 2t+8, 2t+9
      // (b1) at its column n = g of every n8 tile. It loads bytes [g * kD/8, +kD/8) of
      // those 4 keys: tile i = 4q + e, column g is d = g * kD/8 + i (the epilogue undoes
      // it). Word q of keys (a, b) -> {a.0, a.1, b.0, b.1} / {a.2, a.3, b.2, b.3}, whose
      // even / odd pairs are the b registers of tiles 4q + 0 / 1 and 4q + 2 / 3.
      constexpr int kW = kD / 32;  // words per key
      uint32_t vw[4][kW];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const uint8_t* src = stage + voff[x & 1] + (x >> 1) * 8 * Tr::kRowBytes;
        if constexpr (kW == 4) {
          const uint4 r4 = *reinterpret_cast<const uint4*>(src);
          vw[x][0] = r4.x, vw[x][1] = r4.y, vw[x][2] = r4.z, vw[x][3] = r4.w;
        } else {
          const uint2 r2 = *reinterpret_cast<const uint2*>(src);
          vw[x][0] = r2.x, vw[x][1] = r2.y;
        }
      }
      if constexpr (kCvtV) {
        // {a.i, b.i} byte pairs (keys 2t, 2t + 1 / 2t + 8, 2t + 9 at one d) for the cvt:
        // PRMT 0x5140 -> {a.0, b.0, a.1, b.1}, 0x7362 -> {a.2, b.2, a.3, b.3}; the low /
        // high halves are b0 (b1) of tiles 4q + 0 / 1 and 4q + 2 / 3.
#pragma unroll
        for (int q = 0; q < kW; ++q) {
          uint32_t t0a, t1a, t2a, t3a, t0b, t1b, t2b, t3b;
          fp8x4_f16_pairs(__byte_perm(vw[0][q], vw[1][q], 0x5140), t0a, t1a);
          fp8x4_f16_pairs(__byte_perm(vw[0][q], vw[1][q], 0x7362), t2a, t3a);
          fp8x4_f16_pairs(__byte_perm(vw[2][q], vw[3][q], 0x5140), t0b, t1b);
          fp8x4_f16_pairs(__byte_perm(vw[2][q], vw[3][q], 0x7362), t2b, t3b);
          Mma<__half>::run(oacc[4 * q + 0], pa, t0a, t0b);
          Mma<__half>::run(oacc[4 * q + 1], pa, t1a, t1b);
          Mma<__half>::run(oacc[4 * q + 2], pa, t2a, t2b);
          Mma<__half>::run(oacc[4 * q + 3], pa, t3a, t3b);
        }
      } else {
#pragma unroll
        for (int q = 0; q < kW; ++q) {
          uint32_t e01a, o01a, e01b, o01b, e23a, o23a, e23b, o23b;
          fp8x4<Elem>(__byte_perm(vw[0][q], vw[1][q], 0x5410), e01a, o01a);
          fp8x4<Elem>(__byte_perm(vw[0][q], vw[1][q], 0x7632), e01b, o01b);
          fp8x4<Elem>(__byte_perm(vw[2][q], vw[3][q], 0x5410), e23a, o23a);
          fp8x4<Elem>(__byte_perm(vw[2][q], vw[3][q], 0x7632), e23b, o23b);
          Mma<Elem>::run(oacc[4 * q + 0], pa, e01a, e23a);
          Mma<Elem>::run(oacc[4 * q + 1], pa, o01a, o23a);
          Mma<Elem>::run(oacc[4 * q + 2], pa, e01b, e23b);
          Mma<Elem>::run(oacc[4 * q + 3], pa, o01b, o23b);
        }
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
  // epi column c of a warp's row is tile c / 8, C-fragment column c % 8: d = c (16-bit
  // caches) or (c % 8) * kD/8 + c / 8 (fp8's permuted V columns).
  auto out_col = [](int c) { return Tr::kFp8 ? (c % 8) * (kD / 8) + c / 8 : c; };
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
    const float v4[4] = {acc.x, acc.y, acc.z, acc.w};
    if (direct) {
      Elem* o = static_cast<Elem*>(p.o) + (row0 + row) * kD;
#pragma unroll
      for (int k = 0; k < 4; ++k) o[out_col(col + k)] = Mma<Elem>::from_float(v4[k]);
    } else if constexpr (!Tr::kFp8) {
      *reinterpret_cast<float4*>(a.o_part + ((row0 + row) * S + s) * kD + col) = acc;
    } else {
      float* op = a.o_part + ((row0 + row) * S + s) * kD;
#pragma unroll
      for (int k = 0; k < 4; ++k) op[out_col(col + k)] = v4[k];
    }
  }
  if (tid < nh) {
    float M, Ltot;
    row_stats(tid, M, Ltot);
    const float lse = Ltot > 0.0f ? (M + log2f(Ltot) - kPLog2) * 0.69314718055994531f : -INFINITY;
    if (direct)
      p.lse[row0 + tid] = lse;
    else
      a.lse_part[(row0 + tid) * S + s] = lse;
  }
}

}  // namespace msa::cuda::decode

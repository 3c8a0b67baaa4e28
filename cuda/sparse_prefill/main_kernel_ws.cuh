// The warp-specialized, double-buffered KV-outer main kernel of
// msa_sparse_prefill (sm_90a, bf16 / fp16 K/V; FlashAttention-3 hopper/
// style): the same work items and outputs as main_kernel<Tr, true>
// (main_kernel.cuh; the same math with Traits<...>, one key tile per item with
// Traits<..., 128>), organised so that the loads of item i + 1 overlap the
// compute of item i inside one CTA. Each CTA walks segments of consecutive
// work items (ItemOrder), which mostly share their K/V block (one list), so
// the block is copied once per segment instead of once per item.
//
//   1 CTA per SM, 384 threads:
//   * warpgroup 0 = producer (setmaxnreg.dec to kProducerRegs). Per item: the
//     row setup (row_setup of main_kernel.cuh, into RowSetup i % 3, before the
//     Q slot is free), then the copies: the gathered Q rows into Q slot i % 2
//     by cp.async (16-byte, L2 only, zero-fill for padding rows); where the
//     item's block differs from the previous item's, the block into the next
//     K/V slot: a full 128-key block by the TMA (kv_tma, WsArgs; thread 0
//     issues it and arrive_and_expect_tx's its bytes), any other block by
//     cp.async with zero-fill past nvalid. The producer never waits for its
//     copies: each thread's cp.async.mbarrier.arrive.noinc makes full_q[s],
//     full_k[ks] and full_v[ks] complete when its copies land (plus one plain
//     arrive on full_q[s] for the RowSetup stores), so it sets up and issues item
//     i + 1 while item i's copies are in flight. The next item's metadata
//     (fetch_meta's 4-byte cp.asyncs, into a producer-only double buffer) is
//     fetched one item ahead and the descriptor of the item after it two
//     ahead (cp.async into a per-warp slot), so that the producer's chain
//     work -> meta -> row setup -> Q gather is off the consumers' path.
//   * warpgroups 1, 2 = consumers (setmaxnreg.inc to kConsumerRegs), MMA rows
//     [0, 64) and [64, 128) of the item (the wgmma path of main_kernel, with
//     the consumer thread index ct = threadIdx.x - 128 in place of
//     threadIdx.x): wait full_q[s], read the K/V slot ks from the RowSetup,
//     wait full_k[ks]; S(0) + softmax(0); wait full_v[ks]; the tile loop; the
//     epilogue (O staged through the warpgroup's own Q rows of the slot);
//     each consumer thread arrives on empty_q[s], and on empty_kv[ks] at the
//     last item of the block.
//   * 2 Q slots and 2 K/V slots (Traits::kSmemBytes each pair: 96 KB at
//     D = 128, 48 KB at D = 64), 3 RowSetups, 2 ItemMetas, 10 mbarriers:
//     ~201 KB at D = 128.
//
//   The softmax (softmax.cuh) is main_kernel's, called with the consumer
//   thread index; the epilogue is epilogue_ws.cuh's (the values and places of
//   main_kernel's epilogue.cuh, with fewer instructions). Key tiles:
//   Traits<..., 128> (kernel "ws", the default) runs each item as one 128-key
//   tile: one m64n128 S GEMM, one softmax pass, one P V per warpgroup.
//   Traits<...> (kernel "ws_tiled") runs main_kernel<Tr, true>'s key tiles
//   and k-steps: its outputs are meant to be bit-identical to the wg kernel
//   (and to the mma.sync one as far as the wg kernel is).
//
//   Proxies: cp.async writes are generic-proxy writes; wgmma reads through the
//   async proxy. The copying thread does not wait for its copies, so the
//   reader fences: each consumer thread executes fence.proxy.async.shared::cta
//   after its full_k / full_v wait (acquire) and before its wgmmas. The
//   epilogue's st.shared into the Q rows comes after the wgmmas reading them
//   completed, as in main_kernel.
//
//   Synchronisation (item i of the CTA: Q slot s = i % 2, parity (i / 2) % 2;
//   the j-th K/V load of the CTA: slot ks = j % 2, parity (j / 2) % 2):
//     producer:  wait_group 2 (this item's metadata) -> row setup (st.shared
//                into rows[i % 3], with ks and the release flag) -> bar.sync
//                1, 128 -> wait empty_q[s] (parity ^ 1: the first two pass)
//                -> arrive full_q[s] -> [new block: wait empty_kv[ks], a TMA
//                block issued here] -> next item's metadata copies -> [group]
//                -> Q copies -> arrive.noinc full_q[s] -> [new cp.async
//                block: K copies] -> [group] -> [arrive.noinc full_k[ks] ->
//                V copies] -> [group] -> [arrive.noinc full_v[ks]] (full_q:
//                256 arrivals, full_k / full_v: 128). A TMA block: thread 0's
//                arrives on full_k[ks] and full_v[ks] carry the expected
//                bytes, the other threads arrive plainly.
//     consumer:  wait full_q[s] -> wait full_k[ks], proxy fence -> ... ->
//                wait full_v[ks], proxy fence -> ... -> epilogue -> every
//                consumer thread arrives on empty_q[s], and on empty_kv[ks]
//                when the RowSetup's release flag is set (256 arrivals each).
//   Producer-only data (ItemMeta[2], the descriptor slots) never needs a
//   consumer barrier.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cute/arch/copy_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "cuda/sparse_prefill/epilogue_ws.cuh"
#include "cuda/sparse_prefill/main_kernel.cuh"

namespace msa::cuda::sparse_prefill {

// The warp-specialized kernel's arguments: main_kernel's, plus the TMA
// descriptors of K and V (encoded on the host per launch, main_kernel_ws.cu)
// when kv_tma: 128-key blocks, copied as kD / 64 boxes of 64 columns x 128
// keys in the 128-byte swizzle of Traits' K/V layout. Dense K [Tk, Hkv, D]:
// a 3-d map (D, Hkv, Tk), box (64, 1, 128); paged [pages, Hkv, 128, D]: a
// 4-d map (D, 128, Hkv, pages), box (64, 128, 1, 1). (Q stays a cp.async
// gather: a TMA box of G rows per query measured slower, NOTES, session 6.)
struct WsArgs {
  CUtensorMap k_map, v_map;
  MainArgs a;
  int kv_tma;  // 1: full 128-key blocks through the maps, 0: all cp.async
  int seg;     // items per segment of the CTA's item order (ItemOrder), >= 1
};

template <class Tr>
struct WsTraits {
  static_assert(!Tr::kFp8, "the warp-specialized kernel copies K/V with cp.async (no fp8 conversion)");
  static constexpr int kStages = 2;
  static constexpr int kProducerThreads = 128;        // warpgroup 0
  static constexpr int kConsumerThreads = Tr::kThreads;  // warpgroups 1, 2: the 256 threads of main_kernel
  static_assert(kConsumerThreads == 2 * kProducerThreads, "each producer thread does two threads' copies");
  static constexpr int kThreads = kProducerThreads + kConsumerThreads;
  // setmaxnreg: 128 x kProducerRegs + 256 x kConsumerRegs <= 64K registers.
  static constexpr int kProducerRegs = 56;
  static constexpr int kConsumerRegs = 224;
  static_assert(kProducerThreads * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536, "register file");

  // Dynamic shared memory: the stages (Q, K, V as in main_kernel, each region
  // a multiple of 1024 bytes from a 1024-aligned base), then the RowSetups,
  // the ItemMetas and the mbarriers.
  static constexpr int kStageBytes = Tr::kSmemBytes;
  static_assert(kStageBytes % 1024 == 0 && Tr::kSmemQBytes % 1024 == 0 && Tr::kSmemKVBytes % 1024 == 0,
                "stages and regions keep the 1024-byte alignment of the wgmma descriptors");
  // RowSetups: one more than the stages, so that the producer sets up item
  // i (into rows[i % 3]) before stage i % 2 is released: the consumers still
  // read rows[(i - 2) % 3] (and rows[(i - 1) % 3]); rows[(i - 3) % 3] was
  // released with item i - 3, before the producer's empty wait of item i - 1.
  static constexpr int kRowBufs = kStages + 1;
  static constexpr int kRowsOff = kStages * kStageBytes;
  static constexpr int kMetaOff = kRowsOff + kRowBufs * int(sizeof(RowSetup));
  // The work-item descriptor of item i + 2, one copy per producer warp, in
  // slot i % 2 (see the producer).
  static constexpr int kDescOff = kMetaOff + kStages * int(sizeof(ItemMeta));
  static constexpr int kBarOff = kDescOff + 2 * (kProducerThreads / 32) * int(sizeof(WorkItem));
  static_assert(sizeof(RowSetup) % 16 == 0 && sizeof(ItemMeta) % 16 == 0, "16-byte alignment of the metadata");
  // Q slots (Q rows + RowSetup; slot i % 2 for the CTA's item i) and K/V
  // slots (slot = the CTA's K/V loads so far, mod 2: an item whose block is
  // the previous item's reuses it) have barriers of their own.
  enum {
    kFullQ = 0,
    kFullK = kStages,
    kFullV = 2 * kStages,
    kEmptyQ = 3 * kStages,
    kEmptyKV = 4 * kStages,
    kBars = 5 * kStages
  };
  static constexpr int kSmemBytes = kBarOff + kBars * 8;
  static_assert(kSmemBytes <= 227 * 1024, "the opt-in shared-memory limit of sm_90");
  // Arrivals. full_q: each producer thread twice, once plainly after its
  // row setup (releasing the RowSetup stores) and once through
  // cp.async.mbarrier.arrive.noinc when its Q copies land; full_k / full_v
  // (per K/V load): each producer thread once, through the noinc arrive when
  // its K (V) copies land, or for a TMA block thread 0's
  // arrive_and_expect_tx and the others' plain arrives; empty_q: each
  // consumer thread per item; empty_kv: each consumer thread at the last
  // item that reads the slot's block.
  static constexpr int kFullQArrivals = 2 * kProducerThreads;
  static constexpr int kFullKVArrivals = kProducerThreads;
  static constexpr int kEmptyArrivals = kConsumerThreads;
};

#if MSA_SP_WGMMA
namespace ws_detail {

using Bar = cutlass::arch::ClusterBarrier;

template <class Tr>
struct Smem {
  uint8_t* base;
  __device__ __forceinline__ uint8_t* stage(int s) const { return base + s * WsTraits<Tr>::kStageBytes; }
  __device__ __forceinline__ typename Tr::Elem* q(int s) const {
    return reinterpret_cast<typename Tr::Elem*>(stage(s));
  }
  __device__ __forceinline__ typename Tr::Elem* k(int s) const {
    return reinterpret_cast<typename Tr::Elem*>(stage(s) + Tr::kSmemQBytes);
  }
  __device__ __forceinline__ typename Tr::Elem* v(int s) const {
    return reinterpret_cast<typename Tr::Elem*>(stage(s) + Tr::kSmemQBytes + Tr::kSmemKVBytes);
  }
  __device__ __forceinline__ RowSetup& rows(int s) const {
    return reinterpret_cast<RowSetup*>(base + WsTraits<Tr>::kRowsOff)[s];
  }
  __device__ __forceinline__ ItemMeta& meta(int s) const {
    return reinterpret_cast<ItemMeta*>(base + WsTraits<Tr>::kMetaOff)[s];
  }
  __device__ __forceinline__ WorkItem& desc(int slot, int warp) const {
    return reinterpret_cast<WorkItem*>(base + WsTraits<Tr>::kDescOff)[slot * (WsTraits<Tr>::kProducerThreads / 32) + warp];
  }
  __device__ __forceinline__ uint64_t* bar(int i) const {
    return reinterpret_cast<uint64_t*>(base + WsTraits<Tr>::kBarOff) + i;
  }
};

// ---- The producer's metadata and row setup, one MMA row per producer
// thread (row r = pt): the same values as main_kernel's fetch_meta /
// row_setup, which split the 128 rows over 8 warps of 16 working lanes (the
// producer used to call each twice, for threads pt and pt + 128, with half of
// its lanes idle in both). Producer warp w owns rows [32 w, 32 w + 32) and
// its copy of the header, hdr[w] (lanes 0-3 copy it).
__device__ __forceinline__ void fetch_meta_row(const MainArgs& a, const WorkItem& it, ItemMeta& m, int pt) {
  const int w = pt >> 5, l = pt & 31;
  int pidx, hh;
  a.div_group(pidx, hh, pt);
  if (pidx < it.e_count) cp_async_4(&m.ent[pt], a.v.entries + it.e_begin + pidx);
  if (l < 4) fetch_hdr_word(a, it, m.hdr[w], l);
}

// rows.{qoff, out, vis}[pt] and the reductions of vis over the row's
// 16-row group (rows.vis_max / vis_min[pt / 16]), from the metadata of
// fetch_meta_row (waited for and __syncwarp'ed by the caller).
template <class Tr>
__device__ __forceinline__ void row_setup_row(const MainArgs& a, const WorkItem& it, const ItemMeta& m,
                                              const ItemKV& kv, RowSetup& rows, int pt) {
  const int w = pt >> 5, l = pt & 31;
  const int32_t(&hdr)[4] = m.hdr[w];
  int vis = -1;
  int64_t qoff = -1, out = -1;
  row_values<Tr>(a, it, m, hdr, kv, pt, qoff, out, vis);
  // (q and the pass's partial O are < 2^35 bytes, checked on the host: 31 bits of 16-byte units.)
  rows.qsrc[pt] = units16(qoff);
  rows.osrc[pt] = units16(out * int64_t(sizeof(typename Tr::Elem)));
  rows.vis[pt] = vis;
  // Per 16-row half of the warp: the other half contributes the neutral
  // value (0 for the max, 128 for the min; padding rows: -1 -> 0 and 128).
  const uint32_t vmax = uint32_t(max(vis, 0)), vmin = min(uint32_t(vis), 128u);
  const bool lo = l < 16;
  const uint32_t max_lo = __reduce_max_sync(0xffffffffu, lo ? vmax : 0u);
  const uint32_t max_hi = __reduce_max_sync(0xffffffffu, lo ? 0u : vmax);
  const uint32_t min_lo = __reduce_min_sync(0xffffffffu, lo ? vmin : 128u);
  const uint32_t min_hi = __reduce_min_sync(0xffffffffu, lo ? 128u : vmin);
  if (l == 0) {
    rows.vis_max[2 * w] = max_lo;
    rows.vis_max[2 * w + 1] = max_hi;
    rows.vis_min[2 * w] = min_lo;
    rows.vis_min[2 * w + 1] = min_hi;
  }
}

// The item's 128 Q rows -> shared memory (SmemLayoutQ), for the producer's
// "threads" t = pt and pt + 128: gather_q_t's copies, from RowSetup::qsrc
// (one 32-bit load, a mask, a wide multiply-add and the sign test per copy,
// against a 64-bit load, a 64-bit add and two selects from qoff; a padding
// row's offset is 0, a valid address, and its sign bit zero-fills).
template <class Tr>
__device__ __forceinline__ void gather_q_ws(const void* q, const uint32_t* s_qsrc, typename Tr::Elem* q_smem,
                                            uint32_t t) {
  constexpr int kCpr = Tr::kCpr, kStep = Tr::kRowStep;
  static_assert(kStep % 8 == 0, "row step must keep the swizzle phase");
  const uint32_t cc = t % kCpr, r0 = t / kCpr;
  typename Tr::Elem* d = q_smem + swz_off<Tr::kM>(r0, cc * 8);
  const uint8_t* s = static_cast<const uint8_t*>(q) + cc * 16;
  constexpr int kRows = Tr::kM / kStep;
  // Q rows evict-last in L2: each is gathered again by the other items of the
  // pass's query range that selected another block, while the K/V blocks and
  // the partial O stream through.
  uint64_t pol;
  asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  uint32_t src[kRows];  // all first: the copies then issue back to back
#pragma unroll
  for (int i = 0; i < kRows; ++i) src[i] = s_qsrc[r0 + i * kStep];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    cp_async_16_policy(d + i * kStep * 64, reinterpret_cast<const void*>(units16_addr(s, src[i])), int(src[i]), pol);
  }
}

// The CTA's items (producer and consumers walk the same sequence): rounds of
// ncta segments of `seg` consecutive items (segment c of round r = items
// [(r ncta + c) seg, + seg)), so that a CTA's consecutive items share their
// K/V block wherever a list goes on (the producer then copies only their Q
// rows); the items past the last whole round go one per CTA (grid stride),
// so the tail stays one item deep. seg = the largest power of two <=
// min(WsArgs::seg, num_work / ncta), at least 1 (seg = 1: the plain grid
// stride). Shifts, not divisions: item() runs twice per item in the
// producer. (32-bit: num_work < 2^31 - 2^16, checked on the host.)
struct ItemOrder {
  int log_seg, per_cta;  // per_cta: each CTA's items in whole rounds
  __device__ __forceinline__ ItemOrder(int num_work, int seg_max) {
    const int ncta = int(gridDim.x), cap = max(1, min(seg_max, num_work / ncta));
    log_seg = 31 - __clz(cap);  // the largest power of two <= cap
    per_cta = (num_work / (ncta << log_seg)) << log_seg;
  }
  // The CTA's item j (>= num_work: past its last).
  __device__ __forceinline__ int item(int j) const {
    const int c = int(blockIdx.x), ncta = int(gridDim.x);
    if (j < per_cta) return ((((j >> log_seg) * ncta + c) << log_seg) | (j & ((1 << log_seg) - 1)));
    return per_cta * ncta + c + (j - per_cta) * ncta;
  }
};

// (work_count, main_kernel.cuh: each role reads it after its setmaxnreg; a
// value kept across the register reconfiguration was spilled.)

// Whether two work items read the same K/V block.
__device__ __forceinline__ bool same_block(const WorkItem& x, const WorkItem& y) {
  return x.g == y.g && x.b == y.b && x.c == y.c;
}

// bar.sync among the producer warpgroup only (id 1; 0 is __syncthreads).
__device__ __forceinline__ void producer_sync() { asm volatile("bar.sync 1, 128;\n" ::: "memory"); }

// The item's K and V blocks through the TMA (kv_tma and a full 128-key
// block): one thread issues kD / 64 boxes per tensor, each completing
// transaction bytes on the stage's full barrier (the caller's
// arrive_and_expect_tx announced them). Dense: coordinates (column, KV head,
// row of key 0); paged: (column, 0, KV head, page). The maps bound every box:
// a coordinate outside the tensor reads zeros, never other memory.
template <class Tr>
__device__ __forceinline__ void tma_kv_block(const CUtensorMap* map, uint64_t* bar, typename Tr::Elem* dst, bool paged,
                                             int g, int32_t row_or_page) {
  constexpr uint64_t kHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
#pragma unroll
  for (int c = 0; c < Tr::kD / 64; ++c) {
    void* d = dst + c * (128 * 64);  // panel c of the swizzled layout (kv_off)
    if (paged) {
      cute::SM90_TMA_LOAD_4D::copy(map, bar, kHint, d, 64 * c, 0, g, row_or_page);
    } else {
      cute::SM90_TMA_LOAD_3D::copy(map, bar, kHint, d, 64 * c, g, row_or_page);
    }
  }
}

// Ping-pong of the two consumer warpgroups (FA3 hopper/'s warp scheduler
// barriers): GEMM issue turns alternate S(wg 0), S(wg 1), P V(wg 0), P V(wg 1),
// ... so that one warpgroup's softmax and epilogue run while the other's GEMMs
// keep the tensor cores busy, instead of both warpgroups computing and then
// both waiting in lockstep. Turn barrier of warpgroup cg: user named barrier
// cg (CUTLASS offsets user ids past its reserved ones; the producer's bar.sync
// uses hardware id 1, below them), 256 threads: cg's 128 sync, the other
// warpgroup's 128 arrive when they pass the turn on.
__device__ __forceinline__ void wait_turn(uint32_t cg) {
  cutlass::arch::NamedBarrier::sync(2 * 128, cg);
}
__device__ __forceinline__ void pass_turn(uint32_t cg) {
  cutlass::arch::NamedBarrier::arrive(2 * 128, cg ^ 1u);
}

// ---- Producer (warpgroup 0, pt = threadIdx.x in [0, 128)). Each producer
// thread does the copies of main_kernel's threads pt and pt + 128 (load_kv_cp,
// gather_q_t: their index maps, checked on the host for 256 threads), and the
// metadata / row setup of main_kernel's warps pt / 32 and pt / 32 + 4
// (fetch_meta, row_setup: warp-local, so a producer warp fetches exactly what
// it later sets up).
//
// K / V: with kv_tma (one-tile kernel, 128-key blocks), a block whose 128
// keys are all real goes through the TMA (thread 0: arrive_and_expect_tx on
// full_kq[s] in place of its plain arrive, on full_v[s] in place of its
// noinc arrive; the other threads arrive plainly on full_v[s]); a partial
// block (a sequence's last, an unresolvable page) through cp.async with
// its zero fill, as without kv_tma. Same bytes in shared memory either way.
//
// Descriptors: item i + 1's descriptor is read from shared memory at the top
// of iteration i (slot (i + 1) % 2 of the warp, copied there by cp.async in
// iteration i - 1's metadata group, two items ahead): a global load of it
// one item ahead stalled the producer on its latency (ptxas moves the
// descriptor into uniform registers right after the load).
template <class Tr>
__device__ __forceinline__ void producer(const WsArgs& wa, const Smem<Tr>& sm) {
  using W = WsTraits<Tr>;
  using Elem = typename Tr::Elem;
  const MainArgs& a = wa.a;
  const SparsePrefillParams& p = a.p;
  const PassView& v = a.v;
  const int pt = int(threadIdx.x), lane = pt & 31, warp = pt >> 5;
  const int num_work = work_count(a.v);
  const ItemOrder ord(num_work, wa.seg);
  int w = ord.item(0);
  if (w >= num_work) return;
  constexpr int kKvBytes = int(sizeof(Elem));
  // One 128-key tile (kN = 128): the S GEMM reads all 128 K rows and P V all
  // 128 V rows even for 64-key blocks, so rows past nvalid are always
  // zero-filled (stale shared memory could hold NaN bit patterns: 0 * NaN).
  const bool full128 = Tr::kN == 128 || p.block_size > 64;
  const bool kv_tma = Tr::kN == 128 && wa.kv_tma != 0;
  constexpr uint32_t kKvTileBytes = 128 * Tr::kD * uint32_t(sizeof(Elem));
  // Lanes 20, 21 of each warp: the 32-byte descriptor of item i + 2 (two
  // 16-byte copies into the warp's slot).
  auto fetch_desc = [&](int item, int slot) {
    if (lane == 20 || lane == 21) {
      const int half = lane - 20;
      cp_async_16(reinterpret_cast<uint8_t*>(&sm.desc(slot, warp)) + 16 * half,
                  reinterpret_cast<const uint8_t*>(v.work + item) + 16 * half, 0);
    }
  };

  // Prologue: the first item's descriptor and metadata, the second item's
  // descriptor (global loads, once; iteration 0 copies the third's).
  WorkItem it = v.work[w];
  WorkItem nx{};
  if (ord.item(1) < num_work) nx = v.work[ord.item(1)];
  fetch_meta_row(a, it, sm.meta(0), pt);
  cute::cp_async_fence();
  cute::cp_async_wait<0>();
  int prev_g = -1, prev_b = 0, prev_c = 0;  // the previous item's block (none yet)
  uint32_t kv_loads = 0;  // K/V loads so far (slot = kv_loads % 2)
  int ks = 0;             // this item's K/V slot
  for (int i = 0; w < num_work; ++i) {
    const int s = i & 1;
    const uint32_t parity = uint32_t(i >> 1) & 1u;
    const int w_next = ord.item(i + 1);
    const bool has_next = w_next < num_work;
    // This item's metadata and the next item's descriptor landed: every
    // group but the newest two (item i - 1's Q + K and V; the prologue waited
    // for everything). Each lane waits for its own copies, __syncwarp shares
    // them.
    cute::cp_async_wait<2>();
    __syncwarp();
    if (i > 0 && has_next) nx = sm.desc(s ^ 1, warp);  // item i + 1 (copied in iteration i - 1)
    // K/V: a new block goes into the next slot; the same block as the
    // previous item's stays where it is. The slot is released after the
    // last item that reads it (the next item reads another block, or none).
    // (same_block(it, prev) with a WorkItem prev says the same, but compiled
    // to different SASS with more instructions per item: kept spelled out.)
    const bool kv_new = it.g != prev_g || it.b != prev_b || it.c != prev_c;
    uint32_t kv_par = 0;
    if (kv_new) {
      ks = int(kv_loads & 1u);
      kv_par = ((kv_loads >> 1) & 1u) ^ 1u;  // empty_kv: the first two loads pass
      ++kv_loads;
    }
    const bool kv_release = !has_next || !same_block(nx, it);
    // The row setup, before the stage is free (rows[i % 3]: see kRowBufs).
    const ItemMeta& m = sm.meta(s);
    RowSetup& rows = sm.rows(i % W::kRowBufs);
    const ItemKV kv = item_kv<Tr>(p, it, m.hdr[warp]);
    row_setup_row<Tr>(a, it, m, kv, rows, pt);
    if (pt == 0) {
      rows.kv[0] = ks;
      rows.kv[1] = kv_release ? 1 : 0;
    }
    const bool tma_item = kv_tma && kv.nvalid == 128;  // the same in every producer thread
    producer_sync();  // every row's qoff written (read across warps by the gather)
    // The consumers are done with Q slot s (item i - 2: its Q rows; its
    // RowSetup's readers are done too), so full_q[s] is in item i's phase.
    Bar::wait(sm.bar(W::kEmptyQ + s), parity ^ 1u);
    Bar::arrive(sm.bar(W::kFullQ + s));  // the RowSetup stores (release)
    if (kv_new) {
      // The consumers are done with the slot's previous block (its last item,
      // at most item i - 2, released it right after releasing its Q slot, so
      // this wait is over by now), so full_k[ks] / full_v[ks] are in this
      // load's phase. A TMA block is issued first, before the Q gather.
      Bar::wait(sm.bar(W::kEmptyKV + ks), kv_par);
      if (tma_item) {
        if (pt == 0) {
          const int32_t crd = p.paged ? m.hdr[0][kHdrKv] : int32_t(m.hdr[0][kHdrKv] + kv.key0);
          cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(sm.bar(W::kFullK + ks), kKvTileBytes);
          tma_kv_block<Tr>(&wa.k_map, sm.bar(W::kFullK + ks), sm.k(ks), p.paged, it.g, crd);
          cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(sm.bar(W::kFullV + ks), kKvTileBytes);
          tma_kv_block<Tr>(&wa.v_map, sm.bar(W::kFullV + ks), sm.v(ks), p.paged, it.g, crd);
        } else {
          Bar::arrive(sm.bar(W::kFullK + ks));
          Bar::arrive(sm.bar(W::kFullV + ks));
        }
      }
    }
    // The next item's metadata (into the other ItemMeta: its last readers, the
    // row setup and item_kv of item i - 1, ran in this warp in the previous
    // iteration; fetch_meta, row_setup and item_kv touch only the warp's own
    // parts) and the descriptor of item i + 2 (into slot s: its last reader
    // was iteration i - 1, before this iteration's __syncwarp), in a group of
    // their own: the next iteration waits for this group alone, never for
    // the Q / K / V copies.
    if (has_next) {
      fetch_meta_row(a, nx, sm.meta(s ^ 1), pt);
      const int w_next2 = ord.item(i + 2);
      if (w_next2 < num_work) fetch_desc(w_next2, s);
    }
    cute::cp_async_fence();  // group: metadata
    // Q (the gathers are the copies most likely to miss L2), then K by
    // cp.async where the block is new and not a TMA one.
    gather_q_ws<Tr>(p.q, rows.qsrc, sm.q(s), uint32_t(pt));
    gather_q_ws<Tr>(p.q, rows.qsrc, sm.q(s), uint32_t(pt + 128));
    // Arrives on full_q[s] once this thread's copies so far (Q and the
    // metadata) have landed; the producer goes on without waiting.
    cutlass::arch::cpasync_barrier_arrive_noinc(sm.bar(W::kFullQ + s));
    if (kv_new && !tma_item) {
      const uint8_t* ksrc = static_cast<const uint8_t*>(p.k) + kv.kv_base * kKvBytes;
      load_kv_cp<Tr>(ksrc, kv.row_bytes, kv.nvalid, full128, sm.k(ks), uint32_t(pt));
      load_kv_cp<Tr>(ksrc, kv.row_bytes, kv.nvalid, full128, sm.k(ks), uint32_t(pt + 128));
    }
    cute::cp_async_fence();  // group: Q, K
    if (kv_new && !tma_item) {
      cutlass::arch::cpasync_barrier_arrive_noinc(sm.bar(W::kFullK + ks));
      const uint8_t* vsrc = static_cast<const uint8_t*>(p.v) + kv.kv_base * kKvBytes;
      load_kv_cp<Tr>(vsrc, kv.row_bytes, kv.nvalid, full128, sm.v(ks), uint32_t(pt));
      load_kv_cp<Tr>(vsrc, kv.row_bytes, kv.nvalid, full128, sm.v(ks), uint32_t(pt + 128));
    }
    cute::cp_async_fence();  // group: V (empty for a TMA or reused block: the group count stays 3 per item)
    if (kv_new && !tma_item) cutlass::arch::cpasync_barrier_arrive_noinc(sm.bar(W::kFullV + ks));
    prev_g = it.g, prev_b = it.b, prev_c = it.c;
    it = nx;
    w = w_next;
  }
  cute::cp_async_wait<0>();
}

// ---- Consumer (warpgroups 1, 2): ct = threadIdx.x - 128 plays main_kernel's
// threadIdx.x (warp ct / 32 owns MMA rows [16 (ct / 32), + 16), warpgroup
// cg = ct / 128 rows [64 cg, 64 cg + 64)). The tile loop is main_kernel's
// wgmma path; the softmax is main_kernel's (softmax.cuh), the epilogue
// epilogue_ws.cuh's, both passed ct.
//
// kPingPong (one-tile kernel only: every item is exactly one S turn and one
// P V turn per warpgroup, whatever its rows, so the turns stay paired):
// wait_turn before issuing a GEMM, pass_turn right after issuing it.
template <class Tr, bool kPingPong>
__device__ __forceinline__ void consumer(const MainArgs& a, const Smem<Tr>& sm, int seg, uint32_t cg) {
  using W = WsTraits<Tr>;
  using Elem = typename Tr::Elem;
  constexpr int kN = Tr::kN, kD = Tr::kD;
  static_assert(!kPingPong || kN == 128, "ping-pong pairs one S and one P V turn per item");
  const PassView& v = a.v;
  // Warpgroup 0 takes the first turn.
  if constexpr (kPingPong) {
    if (cg == 1) pass_turn(cg);
  }

  const int num_work = work_count(a.v);
  const ItemOrder ord(num_work, seg);
  uint32_t kv_par = 0;  // bit ks: the phase of K/V slot ks's current block
  int i = 0;
  for (int w = ord.item(0); w < num_work; w = ord.item(++i)) {
    const int s = i & 1;
    const uint32_t parity = uint32_t(i >> 1) & 1u;
    Elem* const q_smem = sm.q(s);
    const RowSetup& rows = sm.rows(i % W::kRowBufs);
    int ks = 0;        // the item's K/V slot (from the RowSetup, below)
    uint32_t kvp = 0;  // its phase

    // Accumulators in the m16n8 C order of main_kernel (value 2 h + vv of
    // n-atom j at index 4 j + 2 h + vv: row 16 w + lane / 4 + 8 h, column
    // 8 j + 2 (lane % 4) + vv), which is the register order of the wgmma
    // m64nN accumulators.
    Tensor acc_o = make_tensor<float>(Shape<Int<kD / 2>>{});
    Tensor acc_s = make_tensor<float>(Shape<Int<kN / 2>>{});
    Tensor rP = make_tensor<Elem>(Shape<Int<kN / 2>>{});
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

    // The GEMMs of main_kernel's wgmma path (main_kernel.cuh), on stage s.
    auto s_gemm = [&](int n) {
      if constexpr (kPingPong) wait_turn(cg);
      wg_issue_s<Tr>(cast_smem_ptr_to_uint(q_smem) + wg_rows_off(cg),
                     cast_smem_ptr_to_uint(sm.k(ks)) + wg_tile_off<Tr>(n), acc_s);
      if constexpr (kPingPong) pass_turn(cg);
      cute::warpgroup_wait<0>();  // S(n) and P V(n - 1), as wg_s_gemm
      wg_fence_regs(acc_s);
      wg_fence_regs(acc_o);
    };

    // The softmax of main_kernel (softmax.cuh), with the consumer thread index.
    auto softmax = [&](int n, auto first, bool masked) {
      online_softmax_step<kN>(acc_s, rP, acc_o, row_max, row_sum, first, masked, a.scale_log2, rows.vis,
                              int(threadIdx.x) - 128, n, a.zero);
    };

    auto pv = [&](int n, bool accumulate) {
      if constexpr (kPingPong) wait_turn(cg);
      wg_issue_pv<Tr>(rP, cast_smem_ptr_to_uint(sm.v(ks)) + wg_tile_off<Tr>(n), acc_o, accumulate);
      if constexpr (kPingPong) pass_turn(cg);
    };

    // Q and the RowSetup of the item, then its K (a reused block's phase has
    // completed already: the wait returns at once).
    Bar::wait(sm.bar(W::kFullQ + s), parity);
    ks = rows.kv[0];
    const bool kv_release = rows.kv[1] != 0;
    kvp = (kv_par >> ks) & 1u;
    Bar::wait(sm.bar(W::kFullK + ks), kvp);
    fence_proxy_async_smem();  // the producer's cp.async writes -> the async proxy (wgmma)
    // Tile counts of the warpgroup (as main_kernel's wgmma path).
    uint32_t vis_max, vis_min;
    wg_vis_range(rows, cg, vis_max, vis_min);
    const int tiles = int((vis_max + kN - 1) / kN), full_tiles = int(vis_min / kN);

    // (main_kernel.cuh's driver; a warpgroup without a tile: P = 0, O = +0.)
    item_tiles(
        tiles, full_tiles, s_gemm, softmax, pv,
        [&] {
          clear(rP);
          if constexpr (kPingPong) {  // the S turn, without a GEMM
            wait_turn(cg);
            pass_turn(cg);
          }
        },
        [&] {
          Bar::wait(sm.bar(W::kFullV + ks), kvp);
          fence_proxy_async_smem();
        });
    cute::warpgroup_wait<0>();  // the last P V
    wg_fence_regs(acc_o);

    // ---- Epilogue (epilogue_ws.cuh), on the stage's Q rows of
    // this warp, with the consumer thread index.
    // (row_lse is the caller's: an array local to the inlined epilogue
    // reordered NVVM's phis and so the SASS.)
    float row_lse[2];
    softmax_finalize(row_max, row_sum, a.out_scale, row_lse);  // row_sum: now the O scale
    epilogue_ws<Tr>(acc_o, row_sum, row_lse, q_smem, rows.osrc, v, int(threadIdx.x) - 128);
    // This thread is done with Q slot s (its Q rows, the RowSetup) and, at
    // the block's last item, with K/V slot ks: each consumer thread arrives
    // (its own reads released by its own arrive; one arrive per warp after
    // __syncwarp left racecheck reporting the other lanes' epilogue reads
    // against the next copies, session 6).
    Bar::arrive(sm.bar(W::kEmptyQ + s));
    if (kv_release) {
      Bar::arrive(sm.bar(W::kEmptyKV + ks));
      kv_par ^= 1u << ks;
    }
  }
}

}  // namespace ws_detail
#endif  // MSA_SP_WGMMA

// Launched only where it was compiled for sm_90a (the host checks the
// function's PTX / binary version): every other target compiles a trap.
template <class Tr, bool kPingPong>
__global__ void __launch_bounds__(WsTraits<Tr>::kThreads, 1) main_kernel_ws(const __grid_constant__ WsArgs wa) {
#if MSA_SP_WGMMA
  using W = WsTraits<Tr>;
  const MainArgs& a = wa.a;
  extern __shared__ __align__(1024) uint8_t smem_[];
  if (cast_smem_ptr_to_uint(smem_) & 1023u) __trap();  // (folded: the wgmma descriptors need it)
  const ws_detail::Smem<Tr> sm{smem_};
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < W::kStages; ++s) {
      ws_detail::Bar::init(sm.bar(W::kFullQ + s), W::kFullQArrivals);
      ws_detail::Bar::init(sm.bar(W::kFullK + s), W::kFullKVArrivals);
      ws_detail::Bar::init(sm.bar(W::kFullV + s), W::kFullKVArrivals);
      ws_detail::Bar::init(sm.bar(W::kEmptyQ + s), W::kEmptyArrivals);
      ws_detail::Bar::init(sm.bar(W::kEmptyKV + s), W::kEmptyArrivals);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  // The warpgroup, uniform (REDUX).
  const uint32_t wg = __reduce_max_sync(0xffffffffu, uint32_t(threadIdx.x >> 7));
  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<W::kProducerRegs>();
    if (Tr::kN == 128 && wa.kv_tma != 0 && threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(&wa.k_map);
      cute::prefetch_tma_descriptor(&wa.v_map);
    }
    ws_detail::producer<Tr>(wa, sm);
  } else {
    cutlass::arch::warpgroup_reg_alloc<W::kConsumerRegs>();
    ws_detail::consumer<Tr, kPingPong>(a, sm, wa.seg, wg - 1);
  }
#else
  __trap();
#endif
}

}  // namespace msa::cuda::sparse_prefill

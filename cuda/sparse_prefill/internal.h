// Pieces shared by the sparse-prefill translation units (CSR build, main
// kernel, combine): the per-pass view of the scratch buffer and the launch
// functions each .cu file provides.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/sparse_prefill/sparse_prefill.h"

namespace msa::cuda::sparse_prefill {

// One work item of the main kernel: a chunk of one list.
struct alignas(16) WorkItem {
  int32_t g;        // KV head
  int32_t b;        // sequence
  int32_t c;        // block inside the sequence
  int32_t e_begin;  // first entry (into entries)
  int32_t e_count;  // entries (query rows) of the chunk, 1..P
  int32_t pad[3];
};
static_assert(sizeof(WorkItem) == 32, "work item is 32 bytes");

// Device pointers of one call / pass.
struct PassView {
  // Per call (setup kernel).
  int32_t* qe;    // [B+1] clamped monotone query indptr
  int32_t* kvb;   // [B] dense KV row base (0 when paged)
  int32_t* len;   // [B] clipped kv length
  int32_t* boff;  // [B+1] global block offsets (clipped to total_blocks)
  // Per pass.
  uint64_t* tile_state;  // [n_tiles] look-back state of scan_fill (reset by mark)
  int32_t* ticket;       // [1] scan_fill tile order (reset by mark)
  uint32_t* bitmap;      // [N, Wr] (zero between passes); N = Hkv * R * total_blocks lists (g, r, block)
  int32_t* entries;      // [E]
  int32_t* num_work;     // [1]
  WorkItem* work;        // [WI]
  float* part_lse;       // [Tc, Hq, K]
  void* part_o;          // [Tc, Hq, K, D]
  int64_t n_lists, words, work_items, rows_per_item;  // words: Wr bitmap words per list
  int64_t lists_per_tile, n_tiles;  // scan_fill tiles: consecutive lists
  int64_t entry_cap;                // E of the scratch (bound of entries)
  int64_t t0, tc;  // this pass: rows [t0, t0 + tc)
  int64_t ranges;  // R query ranges per pass: list (g, r, block) holds rows [32 Wr r, 32 Wr (r + 1))
};

int num_sms();

// Scan_fill tiling of the lists (host side, shapes only): lists_per_tile, n_tiles.
void csr_tiles(int64_t n_lists, int64_t words, int64_t* lists_per_tile, int64_t* n_tiles);

// setup kernel + bitmap memset (once per call).
cudaError_t launch_setup(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream);
// mark + scan_fill of one pass.
cudaError_t launch_csr(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream);
cudaError_t launch_main(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream);
// The main kernel's three instance sets (launch_main picks one): mma.sync tile
// loop (main_kernel.cu), wgmma tile loop on sm_90a (main_kernel_wg.cu), and
// the warp-specialized double-buffered wgmma kernel on sm_90a
// (main_kernel_ws.cu; it calls launch_main_wg where it does not apply).
cudaError_t launch_main_sync(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream);
cudaError_t launch_main_wg(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream);
// kOneTile (kernel "ws"): each item's keys as one 128-key tile;
// kOneTilePingPong ("ws_pingpong"): the same with the consumer warpgroups
// taking turns to issue GEMMs (same bits); kTiled ("ws_tiled"): the wg kernel's
// key tiles, bit-identical to it.
enum class WsVariant { kTiled, kOneTile, kOneTilePingPong };
cudaError_t launch_main_ws(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream, WsVariant variant);
cudaError_t launch_combine(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream);

}  // namespace msa::cuda::sparse_prefill

// Device-side tile scheduler for a ragged batch: maps a CTA's tile slot to
// (sequence, row range) from q_indptr, with the contract's clamping
// (effective indptr e[k] = min(T, max(0, q_indptr[0..k])): monotone, in
// [0, T]), so no device data can send a CTA out of bounds.
//
// Rows are the flattened (token, head) rows of q_idx [T, H, D]. Tile slots, in
// order: the rows before the first sequence ([0, e[0]*H), "pseudo" rows that
// see no key), then each sequence's rows in kBlockM-row tiles, then the rows
// after the last one ([e[B]*H, T*H), pseudo as well). The number of tiles is
// at most ceil(T*H / kBlockM) + B + 2, the grid's bound.
#pragma once

#include <cstdint>

namespace msa::cuda::block_scores {

struct TileInfo {
  int64_t row_begin;  // flattened rows [row_begin, row_end)
  int64_t row_end;
  int64_t seq_token_begin;  // e[b] (first token of the sequence)
  int64_t q_len;            // e[b+1] - e[b]
  int seq;                  // sequence id, -1 for pseudo rows (no visible key)
  int found;                // 0: the slot is past the last tile
};

// Block-wide; every thread returns the same TileInfo. `buf` is scratch shared
// memory for `cap` int32 (>= 32), reused afterwards by the caller.
template <int kBlockM>
__device__ __forceinline__ TileInfo find_tile(const int32_t* __restrict__ q_indptr, int batch,
                                              int64_t total_q, int heads, int64_t slot, int32_t* buf,
                                              int cap, TileInfo* s_info) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  // Warp-0 running state.
  int run_max = 0;       // max(0, q_indptr[0..k-1])
  int64_t prev_e = 0;    // e[k-1] (0 before the first entry)
  int64_t tiles_before = 0;
  bool hit_any = false;  // warp 0: some lane found the slot
  if (tid == 0) s_info->found = 0;
  for (int base = 0; base <= batch; base += cap) {
    const int cnt = min(cap, batch + 1 - base);
    __syncthreads();  // previous round consumed; s_info->found initialised
    if (s_info->found) break;
    for (int i = tid; i < cnt; i += blockDim.x) buf[i] = q_indptr[base + i];
    __syncthreads();
    if (tid < 32) {
      for (int g = 0; g < cnt; g += 32) {
        // Entry k = base + g + lane closes the row range [e[k-1], e[k]): the
        // leading pseudo rows for k = 0, sequence k-1 otherwise.
        const bool in = g + lane < cnt;
        int v = in ? buf[g + lane] : 0;
        int m = max(v, run_max);
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          int t = __shfl_up_sync(0xffffffffu, m, o);
          if (lane >= o) m = max(m, t);
        }
        const int64_t e = total_q < int64_t(m) ? total_q : int64_t(m);
        int64_t e_prev = __shfl_up_sync(0xffffffffu, e, 1);
        if (lane == 0) e_prev = prev_e;
        const int64_t rows = in ? (e - e_prev) * heads : 0;
        const int64_t n = (rows + kBlockM - 1) / kBlockM;
        int64_t incl = n;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          int64_t t = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += t;
        }
        const int64_t first = tiles_before + incl - n;
        const bool mine = in && slot >= first && slot < first + n;
        const unsigned hit = __ballot_sync(0xffffffffu, mine);
        if (mine) {
          const int64_t local = slot - first;
          s_info->row_begin = e_prev * heads + local * kBlockM;
          s_info->row_end = s_info->row_begin + kBlockM < e * heads ? s_info->row_begin + kBlockM : e * heads;
          s_info->seq_token_begin = e_prev;
          s_info->q_len = e - e_prev;
          s_info->seq = base + g + lane - 1;
          s_info->found = 1;
        }
        run_max = __shfl_sync(0xffffffffu, m, 31);
        prev_e = __shfl_sync(0xffffffffu, e, 31);
        tiles_before += __shfl_sync(0xffffffffu, incl, 31);
        if (hit) {
          hit_any = true;
          break;
        }
      }
      // Trailing pseudo rows [e[B]*H, T*H).
      if (lane == 0 && !hit_any && base + cnt == batch + 1) {
        const int64_t n = ((total_q - prev_e) * heads + kBlockM - 1) / kBlockM;
        if (slot >= tiles_before && slot < tiles_before + n) {
          const int64_t local = slot - tiles_before;
          s_info->row_begin = prev_e * heads + local * kBlockM;
          s_info->row_end = s_info->row_begin + kBlockM < total_q * heads ? s_info->row_begin + kBlockM
                                                                         : total_q * heads;
          s_info->seq_token_begin = prev_e;
          s_info->q_len = total_q - prev_e;
          s_info->seq = -1;
          s_info->found = 1;
        }
      }
    }
  }
  __syncthreads();
  return *s_info;
}

}  // namespace msa::cuda::block_scores

// Launch of the sparse-prefill main kernel ({bf16, fp16} q x {same dtype,
// fp8 e4m3} K/V x head_dim {64, 128}); grid from shapes only. Included by
// main_kernel.cu (mma.sync instances) and main_kernel_wg.cu (wgmma
// instances), so that the two sets compile in parallel.
#pragma once

#include <algorithm>
#include <cmath>

#include "cuda/sparse_prefill/main_kernel.cuh"

namespace msa::cuda::sparse_prefill {
namespace main_launch {

// The kernel arguments (shared with the warp-specialized kernel's launch).
inline MainArgs make_args(const SparsePrefillParams& p, const PassView& v) {
  MainArgs a{};
  a.p = p;
  a.v = v;
  a.scale_log2 = p.scale * p.k_scale * 1.4426950408889634f;
  a.out_scale = p.v_scale;
  a.group = int(p.q_heads / p.kv_heads);
  a.div_group = cutlass::FastDivmod(a.group);
  a.div_topk = cutlass::FastDivmod(int(p.topk));
  a.zero = 0;
  return a;
}

template <class Tr, bool kWg>
cudaError_t launch(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  const MainArgs a = make_args(p, v);
  if (v.work_items == 0) return cudaSuccess;
  auto kernel = main_kernel<Tr, kWg>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  // Grid-stride over the device-side work list (its length is read by the
  // kernel): an upper bound from shapes, capped at 16 CTAs per SM.
  const int64_t grid = std::min<int64_t>(v.work_items, int64_t(num_sms()) * 16);
  kernel<<<unsigned(grid), Tr::kThreads, Tr::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <class Elem, bool kFp8, bool kWg>
cudaError_t launch_d(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return launch<Traits<Elem, kFp8, 64>, kWg>(p, v, stream);
    case 128: return launch<Traits<Elem, kFp8, 128>, kWg>(p, v, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <class Elem, bool kWg>
cudaError_t launch_kv(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  if (p.kv_type == ElemType::kFP8E4M3) return launch_d<Elem, true, kWg>(p, v, stream);
  return launch_d<Elem, false, kWg>(p, v, stream);
}

template <bool kWg>
cudaError_t launch_all(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  if (p.q_type == ElemType::kBF16) return launch_kv<cute::bfloat16_t, kWg>(p, v, stream);
  return launch_kv<cute::half_t, kWg>(p, v, stream);
}

}  // namespace main_launch
}  // namespace msa::cuda::sparse_prefill

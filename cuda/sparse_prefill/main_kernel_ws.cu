// The sparse-prefill main kernel's warp-specialized instances
// (main_kernel_ws.cuh: sm_90a, bf16 / fp16 q with K/V of the same dtype,
// D = 64 / 128) and their launch. launch_main_ws falls back to the wgmma
// instances (launch_main_wg, which run mma.sync elsewhere) for fp8 K/V, on
// devices other than sm_90 and where this TU's code for the device is not
// sm_90a SASS (e.g. compute_80 PTX JIT-compiled for a newer GPU: the kernel
// body is a trap there).
#include <atomic>

#include "cuda/sparse_prefill/main_kernel_ws.cuh"
#include "cuda/sparse_prefill/main_launch.cuh"

namespace msa::cuda::sparse_prefill {
namespace {

template <class Tr, bool kPingPong>
cudaError_t launch_ws(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  using W = WsTraits<Tr>;
  const MainArgs a = main_launch::make_args(p, v);
  if (v.work_items == 0) return cudaSuccess;
  auto kernel = main_kernel_ws<Tr, kPingPong>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, W::kSmemBytes);
  if (err != cudaSuccess) return err;
  // One CTA per SM (~199 KB of shared memory at D = 128), grid-stride over
  // the device-side work list.
  const int64_t grid = std::min<int64_t>(v.work_items, int64_t(num_sms()));
  kernel<<<unsigned(grid), W::kThreads, W::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

// kKeysPerTile: 128 = one key tile per item (the default kernel); 0 = the
// 256-thread kernels' key tiles (bit-identical to the wg kernel).
// kPingPong: the consumer warpgroups take turns issuing GEMMs (one-tile only).
template <class Elem, int kKeysPerTile, bool kPingPong>
cudaError_t launch_ws_d(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return launch_ws<Traits<Elem, false, 64, kKeysPerTile>, kPingPong>(p, v, stream);
    case 128: return launch_ws<Traits<Elem, false, 128, kKeysPerTile>, kPingPong>(p, v, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <class Elem>
cudaError_t launch_ws_e(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream, WsVariant variant) {
  switch (variant) {
    case WsVariant::kTiled: return launch_ws_d<Elem, 0, false>(p, v, stream);
    case WsVariant::kOneTile: return launch_ws_d<Elem, 128, false>(p, v, stream);
    default: return launch_ws_d<Elem, 128, true>(p, v, stream);
  }
}

// Whether the current device runs sm_90a code of this TU (cached per device).
bool ws_runnable() {
  static std::atomic<int8_t> cache[64];  // 0: unknown, 1: yes, 2: no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev >= 0 && dev < 64) {
    const int8_t c = cache[dev].load(std::memory_order_relaxed);
    if (c != 0) return c == 1;
  }
  int major = 0, minor = 0;
  bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
            minor == 0;
  if (ok) {
    cudaFuncAttributes attr{};
    ok = cudaFuncGetAttributes(&attr, main_kernel_ws<Traits<cute::bfloat16_t, false, 128>, false>) == cudaSuccess &&
         attr.ptxVersion == 90 && attr.binaryVersion == 90;
  }
  if (dev >= 0 && dev < 64) cache[dev].store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok;
}

}  // namespace

cudaError_t launch_main_ws(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream, WsVariant variant) {
  if (p.kv_type == ElemType::kFP8E4M3 || !ws_runnable()) return launch_main_wg(p, v, stream);
  if (p.q_type == ElemType::kBF16) return launch_ws_e<cute::bfloat16_t>(p, v, stream, variant);
  return launch_ws_e<cute::half_t>(p, v, stream, variant);
}

}  // namespace msa::cuda::sparse_prefill

// The sparse-prefill main kernel's mma.sync instances (main_kernel.cuh,
// kWg = false) and the launch entry point, which picks one of three instance
// sets by MSA_JAX_SPARSE_PREFILL_KERNEL (read once per process):
//   ws    (default) the warp-specialized, double-buffered kernel
//         (main_kernel_ws.cu: sm_90a, bf16 / fp16 K/V; it falls back to wg
//         for fp8 K/V, on other GPUs and where its sm_90a code is absent),
//         each item's keys as one 128-key tile;
//   ws_pingpong  the same with the two consumer warpgroups taking turns to
//         issue their GEMMs (FA3's ping-pong; same bits as ws; slower where
//         measured: NOTES-sparse-prefill.md, session 6);
//   ws_tiled  the same kernel with wg's key tiles (32 keys at D = 128, 64
//         at D = 64): bit-identical to wg;
//   wg    the wgmma instances (main_kernel_wg.cu; the mma.sync tile loop on
//         every target other than sm_90a);
//   sync  the mma.sync instances below.
// MSA_JAX_SPARSE_PREFILL_MMA_SYNC set to a value other than "" / "0" (the
// older switch) means sync when MSA_JAX_SPARSE_PREFILL_KERNEL is unset or
// empty. Every choice is safe on any GPU; the variables are for A/B timing
// and bit comparisons of the kernels.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda/sparse_prefill/main_launch.cuh"

namespace msa::cuda::sparse_prefill {

cudaError_t launch_main_sync(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  return main_launch::launch_all<false>(p, v, stream);
}

namespace {
enum class MainKernel { kWs, kWsPingPong, kWsTiled, kWg, kSync };

MainKernel main_kernel_choice() {
  const char* k = std::getenv("MSA_JAX_SPARSE_PREFILL_KERNEL");
  if (k != nullptr && k[0] != '\0') {
    if (std::strcmp(k, "ws") == 0) return MainKernel::kWs;
    if (std::strcmp(k, "ws_pingpong") == 0) return MainKernel::kWsPingPong;
    if (std::strcmp(k, "ws_tiled") == 0) return MainKernel::kWsTiled;
    if (std::strcmp(k, "wg") == 0) return MainKernel::kWg;
    if (std::strcmp(k, "sync") == 0) return MainKernel::kSync;
    std::fprintf(stderr, "msa_jax: MSA_JAX_SPARSE_PREFILL_KERNEL=%s is not ws, ws_pingpong, ws_tiled, wg or sync; using ws\n", k);
    return MainKernel::kWs;
  }
  const char* e = std::getenv("MSA_JAX_SPARSE_PREFILL_MMA_SYNC");
  if (e != nullptr && e[0] != '\0' && !(e[0] == '0' && e[1] == '\0')) return MainKernel::kSync;
  return MainKernel::kWs;
}
}  // namespace

cudaError_t launch_main(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  static const MainKernel choice = main_kernel_choice();
  switch (choice) {
    case MainKernel::kSync: return launch_main_sync(p, v, stream);
    case MainKernel::kWg: return launch_main_wg(p, v, stream);
    case MainKernel::kWsTiled: return launch_main_ws(p, v, stream, WsVariant::kTiled);
    case MainKernel::kWsPingPong: return launch_main_ws(p, v, stream, WsVariant::kOneTilePingPong);
    default: return launch_main_ws(p, v, stream, WsVariant::kOneTile);
  }
}

}  // namespace msa::cuda::sparse_prefill

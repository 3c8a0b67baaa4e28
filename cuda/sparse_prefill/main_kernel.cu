// The sparse-prefill main kernel's mma.sync instances (main_kernel.cuh,
// kWg = false) and the launch entry point, which picks the wgmma instances
// (main_kernel_wg.cu) unless MSA_JAX_SPARSE_PREFILL_MMA_SYNC is set to a
// value other than "" / "0". The wgmma instances run the mma.sync code on
// every target other than sm_90a, so the choice is safe on any GPU; the
// variable is for A/B timing and bit comparisons of the two tile loops.
#include <cstdlib>

#include "cuda/sparse_prefill/main_launch.cuh"

namespace msa::cuda::sparse_prefill {

cudaError_t launch_main_sync(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  return main_launch::launch_all<false>(p, v, stream);
}

cudaError_t launch_main(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  static const bool mma_sync = [] {
    const char* e = std::getenv("MSA_JAX_SPARSE_PREFILL_MMA_SYNC");
    return e != nullptr && e[0] != '\0' && !(e[0] == '0' && e[1] == '\0');
  }();
  return mma_sync ? launch_main_sync(p, v, stream) : launch_main_wg(p, v, stream);
}

}  // namespace msa::cuda::sparse_prefill

// The sparse-prefill main kernel's wgmma instances (main_kernel.cuh,
// kWg = true: wgmma tile loop on sm_90a, the mma.sync one elsewhere).
#include "cuda/sparse_prefill/main_launch.cuh"

namespace msa::cuda::sparse_prefill {

cudaError_t launch_main_wg(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  return main_launch::launch_all<true>(p, v, stream);
}

}  // namespace msa::cuda::sparse_prefill

// Element types the kernels understand, independent of the XLA headers so the
// launchers under cuda/ compile on their own.
#pragma once

namespace msa::cuda {

enum class ElemType : int { kF32 = 0, kBF16 = 1, kF16 = 2, kFP8E4M3 = 3 };

}  // namespace msa::cuda

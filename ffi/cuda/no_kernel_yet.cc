// CUDA registrations of the ops whose GPU kernels have not landed yet. They
// fail with a clear message instead of silently running on the CPU; each is
// replaced by a real handler when its kernel lands.
#include <string>

#include "ffi/handlers.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error no_kernel(const char* op) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    std::string(op) +
                        " has no CUDA kernel in this build of msa_jax yet; run it on the CPU "
                        "(e.g. inside `with jax.default_device(jax.devices('cpu')[0])`) or "
                        "use a build whose msa_jax.cuda_kernels() lists it");
}

ffi::Error AttentionNoKernel(ffi::RemainingArgs, ffi::RemainingRets, ffi::Dictionary) { return no_kernel("msa_attention"); }

}  // namespace

#define MSA_NO_KERNEL(sym, fn) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(sym, fn, ffi::Ffi::Bind().RemainingArgs().RemainingRets().Attrs<ffi::Dictionary>())

MSA_NO_KERNEL(MsaAttentionCuda, AttentionNoKernel);

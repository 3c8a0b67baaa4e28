// Every XLA FFI handler symbol the extension exports (ffi/module.cc).
#pragma once

#include "xla/ffi/api/ffi.h"

// CPU handlers (ffi/cpu/), always built.
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaAppendPagedCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaAttentionCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaBlockScoresCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaTopkSelectCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaSparsePrefillCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaDecodeCpu);

#ifdef MSA_JAX_WITH_CUDA
// CUDA handlers (ffi/cuda/), built when nvcc is found.
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaAppendPagedCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaTopkSelectCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaBlockScoresCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaDecodeCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaSparsePrefillCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(MsaAttentionCuda);
#endif

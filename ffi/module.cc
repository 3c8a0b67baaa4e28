// The nanobind extension: a dict {target name: {platform: capsule}} that
// msa_jax/_ffi.py registers with jax.ffi.register_ffi_target.
#include <nanobind/nanobind.h>

#include "ffi/handlers.h"

namespace nb = nanobind;

namespace {

template <typename T>
nb::capsule capsule(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "an XLA FFI handler must take an XLA_FFI_CallFrame*");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

nb::dict registrations() {
  nb::dict d;
  auto add = [&](const char* name, nb::capsule cpu, nb::object cuda) {
    nb::dict per_platform;
    per_platform["cpu"] = cpu;
    if (!cuda.is_none()) per_platform["CUDA"] = cuda;
    d[name] = per_platform;
  };
#ifdef MSA_JAX_WITH_CUDA
#define MSA_CUDA(sym) nb::object(capsule(sym))
#else
#define MSA_CUDA(sym) nb::none()
#endif
  add("msa_append_paged", capsule(MsaAppendPagedCpu), MSA_CUDA(MsaAppendPagedCuda));
  add("msa_attention", capsule(MsaAttentionCpu), MSA_CUDA(MsaAttentionCuda));
  add("msa_block_scores", capsule(MsaBlockScoresCpu), MSA_CUDA(MsaBlockScoresCuda));
  add("msa_topk_select", capsule(MsaTopkSelectCpu), MSA_CUDA(MsaTopkSelectCuda));
  add("msa_sparse_prefill", capsule(MsaSparsePrefillCpu), MSA_CUDA(MsaSparsePrefillCuda));
  add("msa_decode", capsule(MsaDecodeCpu), MSA_CUDA(MsaDecodeCuda));
#undef MSA_CUDA
  return d;
}

// Ops with a real CUDA kernel in this build (the rest raise a clear error).
nb::list cuda_kernels() {
  nb::list l;
#ifdef MSA_JAX_WITH_CUDA
  l.append("msa_append_paged");
  l.append("msa_topk_select");
  l.append("msa_block_scores");
  l.append("msa_decode");
  l.append("msa_sparse_prefill");
  l.append("msa_attention");
#endif
  return l;
}

}  // namespace

NB_MODULE(_msa_jax_ffi, m) {
  m.def("registrations", &registrations);
  m.def("cuda_kernels", &cuda_kernels);
#ifdef MSA_JAX_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}

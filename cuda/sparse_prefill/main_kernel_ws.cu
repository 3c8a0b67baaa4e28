// The sparse-prefill main kernel's warp-specialized instances
// (main_kernel_ws.cuh: sm_90a, bf16 / fp16 q with K/V of the same dtype,
// D = 64 / 128) and their launch. launch_main_ws falls back to the wgmma
// instances (launch_main_wg, which run mma.sync elsewhere) for fp8 K/V, on
// devices other than sm_90 and where this TU's code for the device is not
// sm_90a SASS (e.g. compute_80 PTX JIT-compiled for a newer GPU: the kernel
// body is a trap there).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include "cuda/sparse_prefill/main_kernel_ws.cuh"
#include "cuda/sparse_prefill/main_launch.cuh"

namespace msa::cuda::sparse_prefill {
namespace {

// cuTensorMapEncodeTiled of the driver, through the runtime's entry-point
// query (the library does not link libcuda); null where unavailable.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// MSA_JAX_SPARSE_PREFILL_KV_TMA=0: K/V through cp.async only (A/B runs; the
// same bytes land in shared memory, so the outputs are the same bits).
bool kv_tma_enabled() {
  const char* e = std::getenv("MSA_JAX_SPARSE_PREFILL_KV_TMA");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

// The TMA maps of K and V for 128-key blocks (WsArgs' layout comment), in
// the swizzle of Traits' K/V layout (128-byte rows of 64 columns, 16-byte
// chunks XOR row % 8). False (no TMA: cp.async for every block) where the
// shapes or the driver do not allow it.
template <class Tr>
bool encode_kv_maps(const SparsePrefillParams& p, WsArgs& wa) {
  static_assert(Tr::kD % 64 == 0, "64-column boxes");
  if (Tr::kN != 128 || p.block_size != 128 || !kv_tma_enabled()) return false;
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const uint64_t es = sizeof(typename Tr::Elem), D = uint64_t(Tr::kD), Hkv = uint64_t(p.kv_heads);
  const CUtensorMapDataType dtype =
      std::is_same_v<typename Tr::Elem, cute::bfloat16_t> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  cuuint64_t dims[4], strides[3];
  cuuint32_t box[4], estr[4] = {1, 1, 1, 1};
  cuuint32_t rank;
  if (p.paged) {
    if (p.page_size != 128 || p.num_pages <= 0) return false;
    rank = 4;
    dims[0] = D, dims[1] = 128, dims[2] = Hkv, dims[3] = uint64_t(p.num_pages);
    strides[0] = D * es, strides[1] = 128 * D * es, strides[2] = Hkv * 128 * D * es;
    box[0] = 64, box[1] = 128, box[2] = 1, box[3] = 1;
  } else {
    if (p.dense_rows <= 0 || p.dense_rows >= (int64_t(1) << 31)) return false;  // int32 row coordinates
    rank = 3;
    dims[0] = D, dims[1] = Hkv, dims[2] = uint64_t(p.dense_rows);
    strides[0] = D * es, strides[1] = Hkv * D * es;
    box[0] = 64, box[1] = 1, box[2] = 128;
  }
  for (int t = 0; t < 2; ++t) {
    void* base = const_cast<void*>(t == 0 ? p.k : p.v);
    CUtensorMap* map = t == 0 ? &wa.k_map : &wa.v_map;
    if (encode(map, dtype, rank, base, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
      return false;
    }
  }
  return true;
}

// Items per segment of each CTA's item order (ItemOrder in
// main_kernel_ws.cuh): MSA_JAX_SPARSE_PREFILL_SEGMENT (read per launch, for
// A/B runs; 1 = the plain grid stride), else kDefaultSegment. The same bits
// for every value (only which CTA runs an item, and whether its K/V block is
// copied again, change).
constexpr int kDefaultSegment = 8;
int segment_items() {
  const char* e = std::getenv("MSA_JAX_SPARSE_PREFILL_SEGMENT");
  if (e == nullptr || e[0] == '\0') return kDefaultSegment;
  return std::max(1, std::min(1 << 16, std::atoi(e)));
}

template <class Tr, bool kPingPong>
cudaError_t launch_ws(const SparsePrefillParams& p, const PassView& v, cudaStream_t stream) {
  using W = WsTraits<Tr>;
  if (v.work_items == 0) return cudaSuccess;
  // ItemOrder's 32-bit item indices run up to num_work + 2 gridDim.x: a pass
  // with more items runs the wg kernel (64-bit grid stride).
  if (v.work_items >= (int64_t(1) << 31) - (int64_t(1) << 16)) return launch_main_wg(p, v, stream);
  WsArgs wa{};
  wa.a = main_launch::make_args(p, v);
  wa.kv_tma = encode_kv_maps<Tr>(p, wa) ? 1 : 0;
  wa.seg = segment_items();
  auto kernel = main_kernel_ws<Tr, kPingPong>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, W::kSmemBytes);
  if (err != cudaSuccess) return err;
  // One CTA per SM (~199 KB of shared memory at D = 128), grid-stride over
  // the device-side work list.
  const int64_t grid = std::min<int64_t>(v.work_items, int64_t(num_sms()));
  kernel<<<unsigned(grid), W::kThreads, W::kSmemBytes, stream>>>(wa);
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
  // (The producer's Q offsets and the epilogue's partial-O offsets are 31-bit
  // counts of 16-byte units: q and the pass's partial O < 2^35 bytes.)
  const bool q_fits = p.tokens * p.q_heads * p.head_dim * 2 < (int64_t(1) << 35);
  const bool o_fits = v.tc * p.q_heads * p.topk * p.head_dim * 2 < (int64_t(1) << 35);
  if (p.kv_type == ElemType::kFP8E4M3 || !q_fits || !o_fits || !ws_runnable()) return launch_main_wg(p, v, stream);
  if (p.q_type == ElemType::kBF16) return launch_ws_e<cute::bfloat16_t>(p, v, stream, variant);
  return launch_ws_e<cute::half_t>(p, v, stream, variant);
}

}  // namespace msa::cuda::sparse_prefill

#!/usr/bin/env bash
# One device call: build with CUDA, run the GPU tests (optionally under
# compute-sanitizer), then the GPU benchmarks. Logs go to $OUT.
#   bash benchmarks/device_session.sh [build|tests|sanitize|bench|all] [pytest -k filter]
# ("build" only builds and installs; ncu needs XLA_PYTHON_CLIENT_PREALLOCATE=false, or its
# kernel replay backs up most of the GPU's memory and crawls.)
set -uo pipefail
what="${1:-all}"
filter="${2:-}"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
REPO=$(pwd)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The image lacks nvidia-cutlass (and maybe pytest): carried wheels in .whl/.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
t0=$(date +%s)
MSA_JAX_CUDA=ON MSA_JAX_CUDA_ARCHS="${MSA_JAX_CUDA_ARCHS:-90a-real}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1 \
  || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
grep -E "ptxas|registers|spill" "$OUT/build.log" | head -5
cd /tmp  # import the installed package, not the source tree
python3 -c "import msa_jax; print('cuda kernels:', msa_jax.cuda_kernels())"
T="$REPO/tests"
kargs=(); [ -n "$filter" ] && kargs=(-k "$filter")
if [[ "$what" == tests || "$what" == all ]]; then
  python3 -m pytest "$T" -m gpu -q --maxfail=25 --rootdir "$REPO" -p no:cacheprovider "${kargs[@]}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if [[ "$what" == sanitize || "$what" == all ]]; then
  # No autotuning under the sanitizer (it ran out of configs there: RESOURCE_EXHAUSTED), no
  # preallocation (the tools back up device memory).
  XLA_FLAGS="--xla_gpu_autotune_level=0" XLA_PYTHON_CLIENT_PREALLOCATE=false \
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest "$T" -m gpu -q --maxfail=25 --rootdir "$REPO" \
    -p no:cacheprovider "${kargs[@]}" > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -3
fi
if [[ "$what" == bench || "$what" == all ]]; then
  python3 "$REPO/benchmarks/bench_sparse_attention_ops.py" --sections topk,index --seqs 32768,131072 \
    --dtype bf16 -o "$OUT/bench_bf16.tsv" 2> "$OUT/bench_bf16.err"; cat "$OUT/bench_bf16.err" | grep "^#" | tail -12
  python3 "$REPO/benchmarks/bench_sparse_attention_ops.py" --sections index --seqs 32768,131072 \
    --dtype fp8 -o "$OUT/bench_fp8.tsv" 2> "$OUT/bench_fp8.err"; cat "$OUT/bench_fp8.err" | grep "^#" | tail -6
fi

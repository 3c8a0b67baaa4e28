#!/usr/bin/env bash
# Three builds (AB = the tree: ws epilogue diet + softmax exp2 on the FMA pipe; A = epilogue diet;
# head), timed alternately in separate processes; test_tile_loops_bitwise on AB.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
R=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
build() {
  local t0=$(date +%s)
  MSA_JAX_CUDA=ON MSA_JAX_CUDA_ARCHS=90a-real CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) PYTHONPATH=/tmp/site \
    python3 -m pip install --no-build-isolation --no-deps --no-compile --target /tmp/v_$1 . > $OUT/build_$1.log 2>&1 \
    || { tail -30 $OUT/build_$1.log; exit 1; }
  echo "build $1: $(( $(date +%s) - t0 )) s"
}
touch cuda/sparse_prefill/*
build AB
(patch -R -p1 < probe/s14_B.patch || git apply -R probe/s14_B.patch) > /dev/null || exit 1
build A
(patch -R -p1 < probe/s14_A.patch || git apply -R probe/s14_A.patch) > /dev/null || exit 1
rm -f cuda/sparse_prefill/epilogue_ws.cuh
build head
cd /tmp
for r in 0 1; do
  for v in head A AB; do
    PYTHONPATH=/tmp/v_$v:/tmp/site REPEAT_MS=1500 timeout 100 python3 $R/probe/sp_ab.py 32768,131072 $v: 2>&1 | grep "^n=" | tee -a $OUT/ab.txt
  done
done
PYTHONPATH=/tmp/v_AB:/tmp/site MSA_JAX_POISON_OUTPUTS=1 timeout 150 python3 -m pytest $R/tests/test_gpu_sparse_prefill.py -q -m gpu -p no:cacheprovider --rootdir $R -k "tile_loops_bitwise or ws_one_tile" 2>&1 | tail -4

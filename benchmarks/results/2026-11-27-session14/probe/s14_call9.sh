#!/usr/bin/env bash
# H100: main vs wip/item-start (probe/s14_item_start.patch), alternated in separate processes; tile_loops_bitwise on the variant.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
R=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
build() {
  local t0=$(date +%s)
  MSA_JAX_CUDA=ON MSA_JAX_CUDA_ARCHS=90a-real CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) PYTHONPATH=/tmp/site \
    python3 -m pip install --no-build-isolation --no-deps --no-compile --target /tmp/v_$1 . > $OUT/build_$1.log 2>&1 \
    || { tail -30 $OUT/build_$1.log; exit 1; }
  echo "build $1: $(( $(date +%s) - t0 )) s"
}
touch cuda/sparse_prefill/*
build main
(patch -p1 < probe/s14_item_start.patch || git apply probe/s14_item_start.patch) > /dev/null || exit 1
build is
cd /tmp
for r in 0 1; do
  for v in main is; do
    PYTHONPATH=/tmp/v_$v:/tmp/site REPEAT_MS=1000 timeout 60 python3 $R/probe/sp_ab.py 32768,131072 $v: 2>&1 | grep "^n=" | tee -a $OUT/ab.txt
  done
done
PYTHONPATH=/tmp/v_is:/tmp/site MSA_JAX_POISON_OUTPUTS=1 timeout 60 python3 -m pytest $R/tests/test_gpu_sparse_prefill.py -q -m gpu -p no:cacheprovider --rootdir $R -k "tile_loops_bitwise" 2>&1 | tail -2

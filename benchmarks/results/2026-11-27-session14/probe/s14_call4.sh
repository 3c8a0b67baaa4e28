#!/usr/bin/env bash
# The tree (ws epilogue diet): the sparse file + chunked tests (poisoned), racecheck subset, ncu of main at 128K.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
MSA_JAX_POISON_OUTPUTS=1 timeout 300 python3 -m pytest $R/tests/test_gpu_sparse_prefill.py $R/tests/test_sparse_attention_chunked.py -q -m gpu -p no:cacheprovider --rootdir $R 2>&1 | tail -4
XLA_FLAGS="--xla_gpu_autotune_level=0" XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 \
  python3 -m pytest $R/tests/test_gpu_sparse_prefill.py -q -m gpu -p no:cacheprovider --rootdir $R -k "hot or empty or rerun or block_size_64" > $OUT/racecheck.log 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|hazard|passed|failed" $OUT/racecheck.log | tail -3
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 150 ncu --kernel-name regex:main_kernel_ws --launch-skip 20 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight -o $OUT/a128k -f \
  python3 $R/probe/s14_prof.py 131072 2 2>&1 | grep -v -i warn | tail -1
ncu --import $OUT/a128k.ncu-rep --page details --csv > $OUT/a128k_details.csv 2>&1
ncu --import $OUT/a128k.ncu-rep --page source --csv --print-source sass > $OUT/a128k_sass.csv 2>&1
rm -f $OUT/a128k.ncu-rep

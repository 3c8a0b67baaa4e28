#!/usr/bin/env bash
# Issue #4's end-to-end curve (sparse_attention vs cuDNN dense, 8K .. 512K) and the whole GPU
# test suite with poisoned outputs (HEAD of main; the build is the warm machine's if it has one).
set -uo pipefail
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING | tail -3 || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
t0=$(date +%s)
timeout ${E2E_T:-240} python3 $R/benchmarks/bench_sparse_attention_ops.py --sections e2e --heads 64/4 --seqs ${E2E_SEQS:-8192,32768,131072,262144,524288} --repeat-ms 200 --dry-run-ms 50 -o $OUT/e2e.tsv 2>&1 | grep "^#" | tail -8
echo "e2e part: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
cut -f1-12 $OUT/e2e.tsv | cut -c1-220
MSA_JAX_POISON_OUTPUTS=1 timeout ${TEST_T:-300} python3 -m pytest $R/tests -m gpu -q -p no:cacheprovider --rootdir $R --durations=8 > $OUT/gpu_tests.log 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s"; tail -22 $OUT/gpu_tests.log

#!/usr/bin/env bash
# e2e at 1M (index branch in 64K-token chunks) with a spot check of its outputs, plus the check at 512K.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING | tail -3 || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
timeout 120 python3 $R/probe/long_check.py 1048576 65536 2>&1 | grep "^#"; echo "check 1M rc=${PIPESTATUS[0]}"
t0=$(date +%s)
timeout ${E2E_T:-330} python3 $R/benchmarks/bench_sparse_attention_ops.py --sections e2e --heads 64/4 --seqs 1048576 --index-chunk 65536 --repeat-ms 200 --dry-run-ms 50 -o $OUT/e2e_1m.tsv 2>&1 | grep "^#" | tail -4
echo "e2e 1M: $(( $(date +%s) - t0 )) s"
cut -f1-12 $OUT/e2e_1m.tsv
timeout 100 python3 $R/probe/long_check.py 524288 2>&1 | grep "^#"; echo "check 512K rc=${PIPESTATUS[0]}"

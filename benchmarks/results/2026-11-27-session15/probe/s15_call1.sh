#!/usr/bin/env bash
# Issue #4's benchmark rows on one card, one call (HEAD of main): dense + paged prefill vs cuDNN
# (64q/4kv and 32q/8kv at 4K / 16K / 64K) and sparse_prefill vs our dense kernel at the same length
# (32K / 128K / 512K).
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
git log --oneline -1 2>/dev/null || true
cd /tmp
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv -lms 500 > $OUT/smi.csv &
SMI=$!
t0=$(date +%s)
timeout 170 python3 $R/benchmarks/bench_sparse_attention_ops.py --sections prefill,paged_prefill --seqs 4096,16384,65536 --repeat-ms 200 --dry-run-ms 50 -o $OUT/prefill.tsv 2>&1 | grep "^#" | tail -20
echo "prefill part: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
timeout ${SP_T:-330} python3 $R/benchmarks/bench_sparse_attention_ops.py --sections sparse_prefill --seqs ${SEQS:-32768,131072,524288} --sparse-vs-dense --sparse-baseline-max-seq 1 --repeat-ms 1000 -o $OUT/sparse_prefill.tsv 2>&1 | grep "^# sparse"
echo "sparse part: $(( $(date +%s) - t0 )) s"
kill $SMI
cut -f1-12 $OUT/prefill.tsv $OUT/sparse_prefill.tsv | cut -c1-220

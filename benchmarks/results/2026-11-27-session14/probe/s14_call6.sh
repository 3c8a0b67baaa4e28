#!/usr/bin/env bash
# main (9cf5f0e, the ws epilogue): the bench's sparse rows with --sparse-vs-dense (32K/128K/512K), dense vs cuDNN.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv -lms 500 > $OUT/smi.csv &
SMI=$!
timeout 330 python3 $R/benchmarks/bench_sparse_attention_ops.py --sections sparse_prefill --seqs ${SEQS:-32768,131072,524288} --sparse-vs-dense --sparse-baseline-max-seq 1 --repeat-ms 1000 -o $OUT/sp.tsv 2>&1 | grep "^# sparse"
timeout 150 python3 $R/benchmarks/bench_sparse_attention_ops.py --sections prefill --heads 64/4 --seqs 16384,65536 -o $OUT/pf.tsv 2>&1 | grep "^# prefill"
kill $SMI
cut -f1-12 $OUT/sp.tsv $OUT/pf.tsv | cut -c1-200

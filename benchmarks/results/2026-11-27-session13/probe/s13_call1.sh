#!/usr/bin/env bash
# Build; sparse 32K/128K/512K and our dense kernel at the same lengths (+64K), one card.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > $OUT/smi.csv &
SMI=$!
date +"mark sparse %T"
REPEAT_MS=2000 timeout 200 python3 $R/probe/sp_ab.py 32768,131072,524288 base: 2>&1 | grep -v -i warn | tee $OUT/sparse.txt
date +"mark dense %T"
timeout 300 python3 $R/probe/dense_len.py 32768,65536,131072,524288 131072 2>&1 | grep -v -i warn | tee $OUT/dense.txt
date +"mark end %T"
kill $SMI

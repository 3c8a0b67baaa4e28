#!/usr/bin/env bash
# Build; Q_RANGES A/B at 128K / 512K; sparse vs dense at matched sustained time.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv -lms 500 > $OUT/smi.csv &
SMI=$!
date +"mark ab %T"
ROUNDS=2 REPEAT_MS=2000 timeout 120 python3 $R/probe/sp_ab.py 131072 r4:MSA_JAX_SPARSE_PREFILL_Q_RANGES=4 r2:MSA_JAX_SPARSE_PREFILL_Q_RANGES=2 r1:MSA_JAX_SPARSE_PREFILL_Q_RANGES=1 2>&1 | grep -v -i warn | tee $OUT/ab.txt
date +"mark matched %T"
timeout 330 python3 $R/probe/matched.py ${MATCHED:-32768:10,131072:15,524288:45} 2>&1 | grep -v -i warn | tee $OUT/matched.txt
date +"mark end %T"
kill $SMI

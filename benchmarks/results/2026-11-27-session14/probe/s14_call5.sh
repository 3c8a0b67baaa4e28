#!/usr/bin/env bash
# The tree (A2: partial O by TMA, deferred Q release): A/B O_TMA=0 / default / ping-pong; the o_tma and tile-loop bitwise tests.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
ROUNDS=2 REPEAT_MS=1500 timeout 200 python3 $R/probe/sp_ab.py 32768,131072 st:MSA_JAX_SPARSE_PREFILL_O_TMA=0 tma: pp:MSA_JAX_SPARSE_PREFILL_KERNEL=ws_pingpong 2>&1 | grep "^n=" | tee $OUT/ab.txt
MSA_JAX_POISON_OUTPUTS=1 timeout 300 python3 -m pytest $R/tests/test_gpu_sparse_prefill.py -q -m gpu -p no:cacheprovider --rootdir $R -k "o_tma or tile_loops_bitwise or ping_pong" 2>&1 | tail -4

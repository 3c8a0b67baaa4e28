#!/usr/bin/env bash
# Build main; A/B ws vs ws_pingpong at 32K/128K (2 rounds); ncu stall sampling of ws_pingpong at 128K.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
ROUNDS=2 REPEAT_MS=2000 timeout 200 python3 $R/probe/sp_ab.py 32768,131072 ws:MSA_JAX_SPARSE_PREFILL_KERNEL=ws pp:MSA_JAX_SPARSE_PREFILL_KERNEL=ws_pingpong 2>&1 | grep -v -i warn | tee $OUT/ab.txt
MSA_JAX_SPARSE_PREFILL_KERNEL=ws_pingpong XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 240 ncu --kernel-name regex:main_kernel_ws --launch-skip 20 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight -o $OUT/pp128k -f \
  python3 $R/probe/s14_prof.py 131072 2 2>&1 | grep -v -i warn | tail -2
ncu --import $OUT/pp128k.ncu-rep --page details --csv > $OUT/pp128k_details.csv 2>&1
ncu --import $OUT/pp128k.ncu-rep --page source --csv --print-source sass > $OUT/pp128k_sass.csv 2>&1
rm -f $OUT/pp128k.ncu-rep
grep -E "Elapsed Cycles|Duration|SM Frequency" $OUT/pp128k_details.csv | cut -d, -f13-15

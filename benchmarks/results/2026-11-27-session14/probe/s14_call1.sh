#!/usr/bin/env bash
# Build; O_TMA bitwise test (poisoned); A/B O_TMA at 32K/128K; ncu stall sampling of main at 128K.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
MSA_JAX_POISON_OUTPUTS=1 timeout 300 python3 -m pytest $R/tests/test_gpu_sparse_prefill.py -q -m gpu -p no:cacheprovider --rootdir $R -k "o_tma or kv_tma" 2>&1 | tail -4
ROUNDS=2 REPEAT_MS=2000 timeout 200 python3 $R/probe/sp_ab.py 32768,131072 st:MSA_JAX_SPARSE_PREFILL_O_TMA=0 tma:MSA_JAX_SPARSE_PREFILL_O_TMA=1 2>&1 | grep -v -i warn | tee $OUT/ab.txt
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 240 ncu --kernel-name regex:main_kernel_ws --launch-skip 20 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight -o $OUT/main128k -f \
  python3 $R/probe/s14_prof.py 131072 2 2>&1 | grep -v -i warn | tail -3
ncu --import $OUT/main128k.ncu-rep --page details --csv > $OUT/main128k_details.csv 2>&1
grep -E "Stall|Warp Cycles|Issued|Duration|Throughput" $OUT/main128k_details.csv | cut -c1-200 | head -40
ncu --import $OUT/main128k.ncu-rep --page source --csv --print-source sass > $OUT/main128k_sass.csv 2>&1
python3 $R/probe/s14_stalls.py $OUT/main128k_sass.csv 2>&1 | head -110
rm -f $OUT/main128k.ncu-rep

#!/usr/bin/env bash
# Build the local-combine v2 branch; A/B on / off / 1-row merge; tests only if it pays.
set -uo pipefail
touch cuda/sparse_prefill/*
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build || exit 1
grep -A2 "local_combine_kernel" $OUT/build.log | grep -E "registers|spill" | head -4
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
ROUNDS=2 timeout 200 python3 $R/probe/sp_ab.py 32768,131072 on: off:MSA_JAX_SPARSE_PREFILL_LOCAL=0 row1:MSA_JAX_SPARSE_PREFILL_LOCAL_DIAG=4 2>&1 | grep -v -i warn | tee $OUT/ab.txt
ROUNDS=1 timeout 150 python3 $R/probe/sp_ab.py 524288 on: off:MSA_JAX_SPARSE_PREFILL_LOCAL=0 2>&1 | grep -v -i warn | tee -a $OUT/ab.txt
python3 - $OUT/ab.txt <<'PY' && GO=1 || GO=0
import re, sys, collections
d = collections.defaultdict(list)
for l in open(sys.argv[1]):
    m = re.match(r"n=(\d+) cfg=(\w+) round=\d+ ([\d.]+)", l)
    if m: d[(m[1], m[2])].append(float(m[3]))
g = [sum(d[(n, "on")]) / sum(d[(n, "off")]) for n in ("32768", "131072") if d[(n, "off")]]
print("on/off:", [f"{x:.3f}" for x in g])
sys.exit(0 if g and min(g) > 1.015 else 1)
PY
if [ "$GO" = 1 ]; then
  MSA_JAX_POISON_OUTPUTS=1 timeout 300 python3 -m pytest $R/tests/test_gpu_sparse_prefill.py $R/tests/test_sparse_attention_chunked.py -m gpu -q -x --rootdir $R -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -8
fi

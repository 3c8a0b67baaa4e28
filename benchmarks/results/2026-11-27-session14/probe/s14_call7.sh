#!/usr/bin/env bash
# memcheck (poisoned) of the sparse file on main (9cf5f0e); the build is the warm machine's.
set -uo pipefail
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING | tail -2 || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
MSA_JAX_POISON_OUTPUTS=1 XLA_FLAGS="--xla_gpu_autotune_level=0" XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 420 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest $R/tests/test_gpu_sparse_prefill.py -q -m gpu -p no:cacheprovider --rootdir $R -k "not bitwise and not one_tile" > $OUT/memcheck.log 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|passed|failed" $OUT/memcheck.log | tail -3; tail -c 300 $OUT/memcheck.log

#!/usr/bin/env bash
# The GPU test suite (poisoned outputs) file by file, one summary line each, within the call's time.
set -uo pipefail
OUT=${OUT:-/tmp/out} bash benchmarks/device_session.sh build 2>&1 | grep -v WARNING | tail -2 || exit 1
export PYTHONPATH=/tmp/site
R=$PWD
cd /tmp
end=$(( $(date +%s) + ${BUDGET:-540} ))
for f in ${FILES:-test_gpu_sparse_prefill test_sparse_attention_chunked test_gpu_topk_select test_nn test_parallel test_sparse_prefill test_sparse_prefill_schedule test_topk_select test_transforms test_validation test_append_kv test_attention test_block_scores test_decode test_decode_step test_demo_and_bench test_generate test_gpu_attention test_gpu_block_scores test_gpu_block_scores_decode test_gpu_decode test_gpu_parallel}; do
  left=$(( end - $(date +%s) )); [ $left -lt 10 ] && { echo "$f: not run (time)"; continue; }
  t0=$(date +%s)
  MSA_JAX_POISON_OUTPUTS=1 timeout $left python3 -m pytest $R/tests/$f.py -m gpu -q -p no:cacheprovider --rootdir $R > $OUT/$f.log 2>&1
  echo "$f: rc=$? $(( $(date +%s) - t0 )) s: $(tail -1 $OUT/$f.log)"
done

#!/usr/bin/env bash
# The full benchmark sweep behind benchmarks/RESULTS.md: every section, baselines in the same
# process. Writes one TSV per command into OUTDIR, the e2e/decode plot, and a markdown summary
#   bash benchmarks/full_sweep.sh OUTDIR [prefill|e2e|sparse|decode|all|parallel]
# Parts exist so the sweep can be split over calls of limited length; "all" runs them one after
# another on one GPU; "parallel" runs the four parts at once, part i on GPU i (needs 4 GPUs of
# one kind; each part still has its GPU to itself, baselines included).
set -uo pipefail
out="${1:?OUTDIR}"; part="${2:-all}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
if [[ $part == parallel ]]; then
  i=0
  for p in prefill e2e sparse decode; do
    CUDA_VISIBLE_DEVICES=$i bash "$0" "$out" "$p" 2> "$out/part_$p.err" & i=$((i + 1))
  done
  wait
  cat "$out"/part_*.err >&2
  python3 "$here/tsv_to_md.py" --plot "$out/sweep.png" "$out"/*.tsv > "$out/summary.md"
  exit 0
fi
B="python3 $here/bench_sparse_attention_ops.py --repeat-ms 200 --dry-run-ms 50"
run() { local name=$1; shift; echo "## $name: bench_sparse_attention_ops.py $*" | tee -a "$out/commands.txt"
        $B "$@" -o "$out/$name.tsv" 2> >(grep "^#" | tee "$out/$name.log" >&2) > /dev/null; }
if [[ $part == prefill || $part == all ]]; then
  run prefill --sections prefill,paged_prefill --seqs 4096,16384,65536
fi
if [[ $part == e2e || $part == all ]]; then
  run e2e --sections e2e --heads 64/4 --seqs 8192,32768,131072,262144,524288
fi
if [[ $part == sparse || $part == all ]]; then
  run sparse_prefill --sections sparse_prefill --seqs 32768,131072,524288
  run index_bf16 --sections index,topk --seqs 32768,131072
  run index_fp8 --dtype fp8 --sections index --seqs 32768,131072
fi
if [[ $part == decode || $part == all ]]; then
  run decode_bf16 --sections decode,sparse_decode --decode-b 32,8 --decode-k 32768,131072
  run decode_fp8 --dtype fp8 --sections decode --decode-b 32,8 --decode-k 32768,131072
  run sparse_decode_1m --sections sparse_decode --decode-b 8 --decode-k 1048576
fi
if [[ $part == all ]]; then
  python3 "$here/tsv_to_md.py" --plot "$out/sweep.png" "$out"/*.tsv > "$out/summary.md"
fi

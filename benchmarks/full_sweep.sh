#!/usr/bin/env bash
# The full benchmark sweep behind benchmarks/RESULTS.md: every section, baselines in the same
# process. Writes one TSV per command into OUTDIR, the e2e/decode plot, and a markdown summary
#   bash benchmarks/full_sweep.sh OUTDIR [prefill|e2e|sparse_prefill|index|decode|all]
# Parts exist so the sweep can be split over calls of limited length; "all" runs them one after
# another. Run parts one at a time, alone on the host: parts run at once on the GPUs of one host
# (each on its own GPU) measured kernels under ~2 ms up to 1.7x slower (host contention in the
# dispatch loop); the long e2e and sparse_prefill rows agreed within 2%.
set -uo pipefail
out="${1:?OUTDIR}"; part="${2:-all}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
B="python3 $here/bench_sparse_attention_ops.py --repeat-ms 200 --dry-run-ms 50"
run() { local name=$1; shift; echo "## $name: bench_sparse_attention_ops.py $*" | tee -a "$out/commands.txt"
        $B "$@" -o "$out/$name.tsv" 2> >(grep "^#" | tee "$out/$name.log" >&2) > /dev/null; }
if [[ $part == prefill || $part == all ]]; then
  run prefill --sections prefill,paged_prefill --seqs 4096,16384,65536
fi
if [[ $part == e2e || $part == all ]]; then
  run e2e --sections e2e --heads 64/4 --seqs 8192,32768,131072,262144,524288
  # 1M: the index branch in 64K-token chunks (one pass would need 128 GiB of block scores); ~4 min
  run e2e_1m --sections e2e --heads 64/4 --seqs 1048576 --index-chunk 65536
fi
if [[ $part == sparse_prefill || $part == all ]]; then
  run sparse_prefill --sections sparse_prefill --seqs 32768,131072,524288
fi
if [[ $part == index || $part == all ]]; then
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

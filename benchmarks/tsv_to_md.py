"""Markdown tables from bench_sparse_attention_ops.py TSVs (one table per section), for RESULTS.md.

    python benchmarks/tsv_to_md.py out/*.tsv > summary.md
"""

import csv
import sys


def main(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            rows += list(csv.DictReader(f, delimiter="\t"))
    devices = sorted({r["device"] for r in rows})
    print(f"Device(s): {', '.join(devices)}\n")
    sections = list(dict.fromkeys(r["section"] for r in rows))
    for sec in sections:
        print(f"### {sec}\n")
        print("| shape | dtype | median ms (min-max) | rate | baseline | baseline ms | ours vs baseline |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            if r["section"] != sec:
                continue
            speed = f"{float(r['speedup']):.2f}x" if r["speedup"] else "-"
            print(f"| {r['shape']} | {r['dtype']} | {float(r['median_ms']):.3f} ({float(r['min_ms']):.3f}-"
                  f"{float(r['max_ms']):.3f}) | {float(r['rate']):.0f} {r['unit']} | {r['baseline']} | "
                  f"{r['baseline_ms'] or '-'} | {speed} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])

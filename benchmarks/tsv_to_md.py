"""Markdown tables from bench_sparse_attention_ops.py TSVs (one table per section), for RESULTS.md;
with --plot, also the script's plot of the same rows.

    python benchmarks/tsv_to_md.py [--plot sweep.png] out/*.tsv > summary.md
"""

import argparse
import csv
import pathlib
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tsv", nargs="+")
    ap.add_argument("--plot", default=None, help="PNG path (bench_sparse_attention_ops.plot)")
    args = ap.parse_args(argv)
    rows = []
    for p in args.tsv:
        with open(p) as f:
            rows += list(csv.DictReader(f, delimiter="\t"))
    if args.plot:
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
        from bench_sparse_attention_ops import Writer, plot
        plot([tuple(r[c] for c in Writer.COLUMNS) for r in rows], args.plot)
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
    main()

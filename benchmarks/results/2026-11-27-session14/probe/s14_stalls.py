"""Summarise an ncu source page (csv, SASS): the top instructions by stall samples, and the
samples per stall reason, split into producer / consumer by a crude rule (instruction index
ranges are not known, so the whole kernel is summed and the top lines printed with their text)."""
import csv
import sys

rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr_i = next(i for i, r in enumerate(rows) if any("Source" == c or c.startswith("Source") for c in r))
hdr = rows[hdr_i]
data = [r for r in rows[hdr_i + 1:] if len(r) == len(hdr)]
print("columns:", [h for h in hdr][:60])
def col(name):
    for i, h in enumerate(hdr):
        if h == name:
            return i
    return None
src = col("Source")
samp = col("Warp Stall Sampling (All Samples)")
if samp is None:
    samp = next(i for i, h in enumerate(hdr) if "Sampling" in h and "All" in h)
def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0
tot = sum(num(r[samp]) for r in data)
print(f"total samples {tot:.0f}, instructions {len(data)}")
stall_cols = [i for i, h in enumerate(hdr) if h.startswith("stall_") or "Stall" in h and "Sampling" not in h]
agg = {hdr[i]: sum(num(r[i]) for r in data) for i in stall_cols}
for k, v in sorted(agg.items(), key=lambda x: -x[1])[:25]:
    print(f"  {k:60s} {v:12.0f}")
print("top instructions:")
for idx, r in sorted(enumerate(data), key=lambda x: -num(x[1][samp]))[:60]:
    print(f"{idx:6d} {num(r[samp]) / tot * 100:5.1f}%  {r[src][:110]}")

"""Work items per pass (one kv head) of sparse_prefill at the bench's shape (64q/4kv, d128, k16,
block 128) for the bench's selection distribution: each query t selects its local block t // 128
plus 15 distinct blocks uniform among the earlier ones (all of them when fewer exist). An item
holds up to P = 128 / G = 8 queries of one list (kv head, query range, block), so a list of n
entries takes ceil(n / 8) items; items / (entries / 8) is the fill of the MMA rows.
Run from the repository root: python3 benchmarks/results/2026-11-26-session10/fragmentation_model.py 131072 524288"""
import numpy as np, sys
sys.path.insert(0, ".")
from msa_jax.sparse_prefill import sparse_prefill_q_chunk, sparse_prefill_q_ranges, sparse_prefill_total_blocks
rng = np.random.default_rng(0)
HQ, HKV, D, K, BS = 64, 4, 128, 16, 128
P = 128 // (HQ // HKV)
def run(n):
    tc = sparse_prefill_q_chunk(n, HQ, D, K)
    nb_tot = sparse_prefill_total_blocks(False, 1, BS, n, 0)
    r = sparse_prefill_q_ranges(n, HQ, HKV, D, K, tc, nb_tot, BS)
    W = -(-tc // 32); Wr = -(-W // min(r, W)); rows = 32 * Wr
    out = []
    for p in range(-(-n // tc)):
        t = np.arange(p * tc, min(n, (p + 1) * tc))
        items = 0; ent = 0
        for rr in range(-(-len(t) // rows)):
            tt = t[rr * rows:(rr + 1) * rows]; ll = tt // BS
            # 15 distinct uniform picks from [0, ll): redraw the rows with a repeat
            m = ll
            picks = np.floor(rng.random((len(tt), K - 1)) * np.maximum(m, 1)[:, None]).astype(np.int64)
            small = m <= K - 1
            while True:
                srt = np.sort(picks, 1); dup = (srt[:, 1:] == srt[:, :-1]).any(1) & ~small
                if not dup.any(): break
                picks[dup] = np.floor(rng.random((dup.sum(), K - 1)) * m[dup][:, None]).astype(np.int64)
            ar = np.arange(K - 1)[None, :]
            picks = np.where(small[:, None], np.where(ar < m[:, None], ar, -1), picks)
            b = np.concatenate([ll[:, None], picks], 1).ravel(); b = b[b >= 0]
            cnt = np.bincount(b)
            cnt = cnt[cnt > 0]
            items += int((-(-cnt // P)).sum()); ent += int(cnt.sum())
        out.append((p, items, ent))
    print(f"n={n} tc={tc} ranges={r} rows/range={rows}: passes {len(out)}")
    for p, it, e in out:
        if p in (0, 1, 2, 3, 4, 8, 12, 15, 16, 32, 48, 63):
            print(f"  pass {p:2d}: items {it:6d}  entries/P {e / P:8.0f}  fill {e / P / it:5.3f}  items/items(pass1) {it / out[min(1, len(out)-1)][1]:5.3f}")
    return out
for n in [int(x) for x in sys.argv[1:]]:
    run(n)

"""Sparse prefill and our dense kernel at the same length, timed for the same sustained time,
in the order sparse, dense, sparse (so that one sparse run follows a hot dense run).
python3 probe/matched.py 32768:10,131072:15,524288:45   (n:seconds per run)"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if not os.path.exists(os.path.join(HERE, "sp_ab.py")):  # the archived copy: sp_ab.py is session 12's
    sys.path.insert(0, os.path.join(HERE, "..", "..", "2026-11-27-session12", "probe"))
import jax
import jax.numpy as jnp

import msa_jax
from sp_ab import make_inputs, HQ, HKV, D, attended_tokens  # noqa: E402
from bench_sparse_attention_ops import bench  # noqa: E402

print("#", jax.devices()[0].device_kind, flush=True)
for spec in sys.argv[1].split(","):
    n, secs = (int(x) for x in spec.split(":"))
    plan, q, k, v, ids_np = make_inputs(n)
    ids = jnp.asarray(ids_np)
    sflops = 4 * HQ // HKV * D * attended_tokens(ids_np, n, n)
    dflops = 4 * HQ * D * n * (n + 1) // 2
    sp = jax.jit(lambda q, k, v, i: msa_jax.sparse_prefill(q, k, v, i, plan))
    de = jax.jit(lambda q, k, v: msa_jax.attention(q, k, v, plan))
    rates = {}
    for name in ("sparse", "dense", "sparse"):
        if name == "sparse":
            t = bench(sp, [[q, k, v, ids]], 300.0, secs * 1e3)
            r = sflops / t.median_ms / 1e9
        else:
            t = bench(de, [[q, k, v]], 0.0 if n > 131072 else 300.0, secs * 1e3)
            r = dflops / t.median_ms / 1e9
        rates.setdefault(name, []).append(r)
        print(f"n={n} {name} {r:.1f} TFLOP/s ({t.median_ms:.2f} ms, min {t.min_ms:.2f}, max {t.max_ms:.2f})", flush=True)
    d = rates["dense"][0]
    print(f"n={n} ratio sparse/dense: {rates['sparse'][0] / d:.3f} (before), {rates['sparse'][1] / d:.3f} (after)",
          flush=True)
    del q, k, v, ids

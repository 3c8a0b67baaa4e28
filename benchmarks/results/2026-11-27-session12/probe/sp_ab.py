"""A/B of sparse_prefill settings (env read per launch), the bench's shapes and timing.

python3 probe/sp_ab.py 32768,131072 base: diag:MSA_JAX_SPARSE_PREFILL_DIAG=1 ...
ROUNDS=2 interleaves the configs. Prints TFLOP/s per (n, cfg, round).
"""
import os
import sys

from pathlib import Path

# The repository's benchmarks/ (this script runs from probe/ or from its copy under benchmarks/results/).
sys.path.insert(0, str(next(d / "benchmarks" for d in Path(__file__).resolve().parents
                            if (d / "benchmarks" / "bench_sparse_section.py").exists())))
import jax
import jax.numpy as jnp
import numpy as np

import msa_jax
from bench_sparse_attention_ops import bench
from bench_sparse_section import BS, D, HKV, HQ, K, attended_tokens

if __name__ != "__main__":
    ns = []
else:
    ns = [int(x) for x in sys.argv[1].split(",")]
cfgs = []
for a in (sys.argv[2:] if __name__ == "__main__" else []):
    name, _, rest = a.partition(":")
    env = dict(kv.split("=", 1) for kv in rest.split("+") if kv)
    cfgs.append((name, env))
rounds = int(os.environ.get("ROUNDS", "1"))
dev = jax.devices()[0]
if __name__ == "__main__":
    print("#", dev.device_kind, flush=True)


def ids_for(n, key, local=float(os.environ.get("IDS_LOCAL", "0"))):
    """local = 0: uniform scores (the bench's distribution); local = a in (0, 1]: the scores of
    the 128 queries of a block share a per-(query block, kv head) part of weight a, so adjacent
    queries select mostly the same blocks (1: all the same, besides the forced local block)."""
    parts = []
    for s in range(0, n, 8192):
        c = min(8192, n - s)
        plan = msa_jax.plan_prefill([c], [s + c], num_q_heads=HKV, num_kv_heads=HKV, head_dim=D)
        key, sub, sub2 = jax.random.split(key, 3)
        sc = jax.random.uniform(sub, (c, HKV, plan.num_blocks), jnp.float32)
        if local > 0:
            shared = jax.random.uniform(sub2, (-(-c // 128), HKV, plan.num_blocks), jnp.float32)
            sc = (1 - local) * sc + local * jnp.repeat(shared, 128, axis=0)[:c]
        parts.append(jax.jit(lambda x, plan=plan: msa_jax.topk_select(x, K, plan))(sc))
    return np.asarray(jnp.concatenate(parts, axis=0))


def make_inputs(n):
    """plan, q, k, v (random normal, bf16) and the ids (numpy) of one n-token sequence, seeded by n."""
    kq, kk, kvv, ki = jax.random.split(jax.random.key(n), 4)
    plan = msa_jax.plan_prefill([n], [n], num_q_heads=HQ, num_kv_heads=HKV, head_dim=D)
    q = jax.random.normal(kq, (n, HQ, D), jnp.bfloat16)
    k = jax.random.normal(kk, (n, HKV, D), jnp.bfloat16)
    v = jax.random.normal(kvv, (n, HKV, D), jnp.bfloat16)
    return plan, q, k, v, ids_for(n, ki)


for n in ns:
    plan, q, k, v, ids_np = make_inputs(n)
    ids = jnp.asarray(ids_np)
    flops = 4 * HQ // HKV * D * attended_tokens(ids_np, n, n)
    for r in range(rounds):
        for name, env in cfgs:
            old = {x: os.environ.get(x) for x in env}
            os.environ.update(env)
            fn = jax.jit(lambda q, k, v, i: msa_jax.sparse_prefill(q, k, v, i, plan))
            t = bench(fn, [[q, k, v, ids]], 300.0, float(os.environ.get("REPEAT_MS", "2000")))
            print(f"n={n} cfg={name} round={r} {flops / t.median_ms / 1e9:.1f} TFLOP/s {t.median_ms:.3f} ms",
                  flush=True)
            for x, y in old.items():
                if y is None:
                    os.environ.pop(x, None)
                else:
                    os.environ[x] = y

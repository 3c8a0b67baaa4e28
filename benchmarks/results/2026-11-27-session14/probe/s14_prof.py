"""One jitted sparse_prefill at n tokens, run `calls` times (a driver for ncu).
python3 probe/s14_prof.py 131072 2"""
import os
import sys

import jax
import jax.numpy as jnp

import msa_jax

sys.path.insert(0, os.path.dirname(__file__))
from sp_ab import make_inputs  # noqa: E402

n = int(sys.argv[1])
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 2
plan, q, k, v, ids_np = make_inputs(n)
ids = jnp.asarray(ids_np)
fn = jax.jit(lambda q, k, v, i: msa_jax.sparse_prefill(q, k, v, i, plan))
for _ in range(calls):
    jax.block_until_ready(fn(q, k, v, ids))
print("done", n, calls)

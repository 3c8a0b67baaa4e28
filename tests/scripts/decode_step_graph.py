"""Runs a jitted MSA decode step a few times on the GPU and saves its outputs.

Used by tests/test_decode_step.py in subprocesses with and without XLA command buffers
(XLA_FLAGS must be set before the backend starts, hence a separate process).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import msa_jax


def main(out_path: str) -> None:
    rng = np.random.default_rng(0)
    B, Hq, Hkv, D, Di, ps, cap = 4, 16, 2, 128, 128, 128, 4096
    plan = msa_jax.plan_decode(B, cap, num_q_heads=Hq, num_kv_heads=Hkv, head_dim=D, page_size=ps)
    P = plan.max_pages
    pages = B * P + 2
    mk = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32)).astype(jnp.bfloat16)
    k, v, ki = mk(pages, Hkv, ps, D), mk(pages, Hkv, ps, D), mk(pages, 1, ps, Di)
    pt = jnp.asarray(rng.permutation(pages)[: B * P].reshape(B, P).astype(np.int32))
    lens = jnp.asarray([5, 1000, 2047, 3000], jnp.int32)
    step = jax.jit(lambda *a: msa_jax.sparse_decode_step(*a, plan, topk=4), donate_argnums=(5, 6, 7))
    outs = []
    for t in range(3):
        q, kn, vn, qi, kin = mk(B, Hq, D), mk(B, Hkv, D), mk(B, Hkv, D), mk(B, Hkv, Di), mk(B, 1, Di)
        o, k, v, ki, lens = step(q, kn, vn, qi, kin, k, v, ki, pt, lens)
        outs.append(np.asarray(o.astype(jnp.float32)))
    np.savez(out_path, o=np.stack(outs), k=np.asarray(k.astype(jnp.float32)), lens=np.asarray(lens),
             cache_size=step._cache_size())


if __name__ == "__main__":
    main(sys.argv[1])

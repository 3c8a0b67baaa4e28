"""sparse_prefill section of benchmarks/bench_sparse_attention_ops.py (wired in by the lead).

run(args, dev, out): for n in args.seqs, one sequence of n query / n kv tokens, 64 query
heads / 4 KV heads / head_dim 128, bf16, k = 16 blocks of 128 tokens per query and group,
ids from msa_jax.topk_select on random scores (the local block forced). Rate:
  TFLOP/s = 4 * Hq * D * (attended causally visible tokens, per row and group) / time.
Baseline: plain-XLA MSA sparse attention (gather of the selected K/V blocks + einsum
softmax), lax.map over query chunks to bound memory. With --sparse-vs-dense, one more row per
length: our dense causal kernel on the same q, k, v (baseline "ours_dense(rate)"), and the
sparse rate as a share of the dense one on stderr.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import msa_jax

from bench_sparse_attention_ops import Timing, _visible_pairs, bench, has_kernel, skip  # noqa: F401

HQ, HKV, D, K, BS = 64, 4, 128, 16, 128


def _ids(n, rng, dev, chunk=8192):
    """[n, HKV, K] ids via topk_select on random scores, generated per query chunk."""
    parts = []
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        plan = msa_jax.plan_prefill([c], [s + c], num_q_heads=HKV, num_kv_heads=HKV, head_dim=D)
        scores = jax.device_put(jnp.asarray(rng.standard_normal((c, HKV, plan.num_blocks), dtype=np.float32)), dev)
        parts.append(np.asarray(msa_jax.topk_select(scores, K, plan)))
    return np.concatenate(parts, axis=0)


def attended_tokens(ids, qo, kv):
    """Sum over rows and KV groups of the causally visible tokens of the distinct valid ids."""
    T = ids.shape[0]
    pos = (kv - qo + np.arange(T))[:, None, None]
    ids = np.sort(ids, axis=-1)
    dup = np.concatenate([np.zeros_like(ids[..., :1], bool), ids[..., 1:] == ids[..., :-1]], axis=-1)
    nb = -(-kv // BS)
    ok = (ids >= 0) & (ids < nb) & ~dup
    vis = np.clip(np.minimum(pos - ids * BS + 1, np.minimum(BS, kv - ids * BS)), 0, BS)
    return int(np.where(ok, vis, 0).sum())


def xla_sparse(q, k, v, ids, n, chunk=256):
    """Plain-XLA MSA main branch for one sequence (q_len == kv_len == n)."""
    G = HQ // HKV
    nb = -(-n // BS)
    pad = nb * BS - n
    kb = jnp.pad(k, ((0, pad), (0, 0), (0, 0))).reshape(nb, BS, HKV, D).transpose(2, 0, 1, 3)  # [HKV, nb, BS, D]
    vb = jnp.pad(v, ((0, pad), (0, 0), (0, 0))).reshape(nb, BS, HKV, D).transpose(2, 0, 1, 3)
    T = q.shape[0]
    tpad = -(-T // chunk) * chunk - T
    qp = jnp.pad(q, ((0, tpad), (0, 0), (0, 0))).reshape(-1, chunk, HKV, G, D)
    idp = jnp.pad(ids, ((0, tpad), (0, 0), (0, 0)), constant_values=-1).reshape(-1, chunk, HKV, K)
    posp = jnp.arange(T + tpad).reshape(-1, chunk)
    gi = jnp.arange(HKV)[None, :, None]
    scale = 1.0 / np.sqrt(D)

    def one(a):
        qc, idc, pc = a
        idx = jnp.clip(idc, 0, nb - 1)
        kg = kb[gi, idx]                                         # [c, HKV, K, BS, D]
        vg = vb[gi, idx]
        s = jnp.einsum("cgjd,cgkbd->cgjkb", qc, kg, preferred_element_type=jnp.float32) * scale
        tok = idc[..., None] * BS + jnp.arange(BS)               # [c, HKV, K, BS]
        vis = (idc[..., None] >= 0) & (tok <= pc[:, None, None, None]) & (tok < n)
        s = jnp.where(vis[:, :, None], s, -jnp.inf)
        m = jnp.max(s, axis=(-2, -1), keepdims=True)
        p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
        l = jnp.sum(p, axis=(-2, -1), keepdims=True)
        o = jnp.einsum("cgjkb,cgkbd->cgjd", (p / jnp.where(l > 0, l, 1.0)).astype(q.dtype), vg,
                       preferred_element_type=jnp.float32)
        return o.astype(q.dtype)

    o = jax.lax.map(one, (qp, idp, posp))
    return o.reshape(-1, HQ, D)[:T]


def run(args, dev, out):
    why = has_kernel(dev, "msa_sparse_prefill", "msa_topk_select")
    if why:
        return skip("sparse_prefill", why)
    rng = np.random.default_rng(2)
    for n in args.seqs:
        plan = msa_jax.plan_prefill([n], [n], num_q_heads=HQ, num_kv_heads=HKV, head_dim=D)
        q = jax.device_put(jnp.asarray(rng.standard_normal((n, HQ, D), dtype=np.float32)).astype(jnp.bfloat16), dev)
        k = jax.device_put(jnp.asarray(rng.standard_normal((n, HKV, D), dtype=np.float32)).astype(jnp.bfloat16), dev)
        v = jax.device_put(jnp.asarray(rng.standard_normal((n, HKV, D), dtype=np.float32)).astype(jnp.bfloat16), dev)
        ids_np = _ids(n, rng, dev)
        ids = jax.device_put(jnp.asarray(ids_np), dev)
        flops = 4 * HQ // HKV * D * attended_tokens(ids_np, n, n)   # G heads share each (row, group) set
        shape = f"T={n},Hq={HQ},Hkv={HKV},D={D},k={K}"
        ours = jax.jit(lambda q, k, v, i: msa_jax.sparse_prefill(q, k, v, i, plan))
        t = bench(ours, [[q, k, v, ids]], args.dry_run_ms, args.repeat_ms)
        rate = flops / t.median_ms / 1e9
        # Printed before the baseline runs: at 512K the plain-XLA baseline alone takes minutes,
        # and a call stopped during it should still report our row.
        print(f"# sparse_prefill n={n}: {rate:.0f} TFLOP/s effective ({flops / 1e12:.1f} TFLOP attended)",
              file=sys.stderr, flush=True)
        if getattr(args, "sparse_vs_dense", False):
            # Our dense causal kernel on the same q, k, v: the 70% target compares the two
            # rates at the same length (the dense rate is not flat in length: at 512K it runs at a
            # lower clock under the card's power cap, RESULTS.md).
            dense = jax.jit(lambda q, k, v: msa_jax.attention(q, k, v, plan))
            td = bench(dense, [[q, k, v]], args.dry_run_ms, args.repeat_ms)
            drate = 4 * HQ * D * _visible_pairs(plan) / td.median_ms / 1e9
            print(f"# sparse_prefill n={n}: {rate / drate:.1%} of our dense kernel's {drate:.0f} TFLOP/s "
                  f"at the same length", file=sys.stderr, flush=True)
            out.add("sparse_prefill", shape, "bf16", t, rate, "TFLOP/s",
                    f"ours_dense({drate:.1f} TFLOP/s)", td, dev)
        limit = getattr(args, "sparse_baseline_max_seq", 0)
        base_name, tb = "xla_gather_einsum", None
        if limit and n > limit:
            print(f"# sparse_prefill baseline skipped at n={n} (--sparse-baseline-max-seq {limit})",
                  file=sys.stderr, flush=True)
            base_name = "-"
        else:
            base_fn = jax.jit(lambda q, k, v, i: xla_sparse(q, k, v, i, n))
            try:
                tb = bench(base_fn, [[q, k, v, ids]], args.dry_run_ms, args.repeat_ms)
            except Exception as e:  # noqa: BLE001 (out of memory at long context)
                print(f"# sparse_prefill baseline failed at n={n}: {type(e).__name__}", file=sys.stderr, flush=True)
        out.add("sparse_prefill", shape, "bf16", t, rate, "TFLOP/s",
                base_name, tb, dev)

"""Runs the MSA layer (:func:`msa_jax.sparse_attention`) on an embedded configuration.

    python -m msa_jax.demo            # GPU if present and this build has its kernels, else CPU
    python -m msa_jax.demo --cpu      # force the CPU (small configuration)

Prints the error against the pure-JAX reference of the same sparse semantics, the error
against dense causal attention (what MSA approximates), the fraction of keys attended
and the time of the jitted layer.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import msa_jax
from msa_jax import reference as ref

# (qo_lens, kv_lens, Hq, Hkv, D, dtype, topk): the paper's head shape on a GPU, a small one on a CPU.
GPU_CONFIG = dict(lens=(4096, 1500), hq=64, hkv=4, d=128, dtype="bfloat16", topk=16)
CPU_CONFIG = dict(lens=(1500, 700), hq=8, hkv=2, d=64, dtype="float32", topk=4)
GPU_OPS = ("msa_block_scores", "msa_topk_select", "msa_sparse_prefill", "msa_attention")


def pick_device(force_cpu: bool):
    if not force_cpu:
        try:
            gpu = jax.devices("gpu")[0]
        except RuntimeError:
            gpu = None
        if gpu is not None:
            missing = [op for op in GPU_OPS if op not in msa_jax.cuda_kernels()]
            if not missing:
                return gpu, GPU_CONFIG
            print(f"GPU found, but this build has no CUDA kernel yet for {', '.join(missing)}: using the CPU.")
    return jax.devices("cpu")[0], CPU_CONFIG


def make_inputs(cfg, seed=0):
    """Random inputs whose index branch sees the main branch: q_idx / k_idx are head means of q / k."""
    rng = np.random.default_rng(seed)
    lens, hq, hkv, d = cfg["lens"], cfg["hq"], cfg["hkv"], cfg["d"]
    dtype = jnp.dtype(cfg["dtype"])
    plan = msa_jax.plan_prefill(lens, lens, num_q_heads=hq, num_kv_heads=hkv, head_dim=d)
    T = plan.total_q
    q = rng.standard_normal((T, hq, d)).astype(np.float32) * 2.0   # peaky attention
    k = rng.standard_normal((T, hkv, d)).astype(np.float32)
    v = rng.standard_normal((T, hkv, d)).astype(np.float32)
    q_idx = q.reshape(T, hkv, hq // hkv, d).mean(axis=2)
    k_idx = k.mean(axis=1)
    cast = lambda x: jnp.asarray(x).astype(dtype)
    return plan, cast(q), cast(k), cast(v), cast(q_idx), cast(k_idx)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (small configuration)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    device, cfg = pick_device(args.cpu)
    print(f"msa_jax {msa_jax.__version__} on {device.platform}:{device.device_kind}; "
          f"sequences {cfg['lens']}, heads {cfg['hq']}q/{cfg['hkv']}kv, d={cfg['d']}, {cfg['dtype']}, "
          f"top-k {cfg['topk']} blocks of 128")
    with jax.default_device(device):
        plan, q, k, v, q_idx, k_idx = make_inputs(cfg)
        layer = jax.jit(functools.partial(msa_jax.sparse_attention, plan=plan, topk=cfg["topk"],
                                          return_block_ids=True))
        out, ids = jax.block_until_ready(layer(q, k, v, q_idx, k_idx))   # compile + warm up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(layer(q, k, v, q_idx, k_idx))
            times.append(time.perf_counter() - t0)

        want = ref.sparse_prefill(q, k, v, ids, plan)
        dense = ref.dense_attention(q, k, v, plan)
        err = lambda a, b: float(jnp.linalg.norm((a - b).astype(jnp.float32)) /
                                 jnp.linalg.norm(b.astype(jnp.float32)))
        # Keys attended: visible tokens of the selected blocks vs all causally visible tokens.
        attended, visible = _key_fraction(np.asarray(ids), plan)
    print(f"time (jit, median of {args.repeats}): {np.median(times) * 1e3:.2f} ms")
    print(f"error vs reference sparse attention (same selection): {err(out, want):.2e}")
    print(f"error vs dense causal attention: {err(out, dense):.2e}")
    print(f"keys attended: {attended / visible:.1%} of the causally visible keys")
    return 0


def _key_fraction(ids, plan):
    bs = plan.block_size
    attended = visible = 0
    row = 0
    for qlen, kvlen in zip(plan.qo_lens, plan.kv_lens):
        pos = kvlen - qlen + np.arange(qlen)
        sel = ids[row:row + qlen]                                     # [q, Hkv, k]
        tokens = np.where(sel >= 0, np.minimum((sel + 1) * bs, pos[:, None, None] + 1) - sel * bs, 0)
        attended += tokens.sum()
        visible += ((pos + 1) * ids.shape[1]).sum()
        row += qlen
    return attended, visible


if __name__ == "__main__":
    sys.exit(main())

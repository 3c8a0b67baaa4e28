"""Benchmark sections ``prefill`` and ``paged_prefill`` of msa_attention.

Follows benchmarks/bench_sparse_attention_ops.py (bench(), rotation(),
Writer.add): dense causal prefill, 64q/4kv/d128 and 32q/8kv/d128 at each
length in ``args.seqs``, bf16; paged_prefill the same with a paged K/V cache
(page 128, shuffled page table). Baseline: cuDNN flash attention through
``jax.nn.dot_product_attention(..., is_causal=True, implementation="cudnn")`` on
the same bf16 tensors (dense layout). Rate:
TFLOP/s = 4 * Hq * D * (causally visible query-key pairs) / time.

Usage from the main script: ``run(args, dev, out)`` with args.section set to
"prefill" or "paged_prefill" (default "prefill"; ``run_paged`` is the second).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import msa_jax

try:  # the main benchmark script's helpers
    from bench_sparse_attention_ops import Timing, bench, has_kernel, rotation, skip  # noqa: F401
except ImportError:  # pragma: no cover - imported as benchmarks.bench_attention_section
    from benchmarks.bench_sparse_attention_ops import Timing, bench, has_kernel, rotation, skip  # noqa: F401

SHAPES = ((64, 4, 128), (32, 8, 128))  # (Hq, Hkv, D)
PAGE = 128


def _visible_pairs(qo_lens, kv_lens) -> int:
    return int(sum(q * k - q * (q - 1) // 2 for q, k in zip(qo_lens, kv_lens)))


def _paged(k, n, rng):
    """Dense [n, H, D] -> paged [pages, H, PAGE, D] with a shuffled page table [1, pages]."""
    H, D = k.shape[1:]
    pages = -(-n // PAGE)
    pad = pages * PAGE - n
    kp = jnp.pad(k, ((0, pad), (0, 0), (0, 0))).reshape(pages, PAGE, H, D).transpose(0, 2, 1, 3)
    perm = rng.permutation(pages).astype(np.int32)
    cache = jnp.zeros_like(kp).at[perm].set(kp)
    return cache, jnp.asarray(perm[None, :])


def _cudnn(q, k, v):
    return jax.nn.dot_product_attention(q[None], k[None], v[None], is_causal=True, implementation="cudnn")[0]


def _section(args, dev, out, paged: bool):
    name = "paged_prefill" if paged else "prefill"
    why = has_kernel(dev, "msa_attention")
    if why:
        return skip(name, why)
    rng = np.random.default_rng(2 if paged else 1)
    for n in args.seqs:
        for hq, hkv, d in getattr(args, "shapes", None) or SHAPES:
            plan = msa_jax.plan_prefill([n], [n], num_q_heads=hq, num_kv_heads=hkv, head_dim=d,
                                        page_size=PAGE if paged else None)
            nbytes = n * (hq + 2 * hkv) * d * 2
            sets = []
            base_sets = []
            for _ in range(min(rotation(nbytes), 2)):
                q = jax.device_put(jnp.asarray(rng.standard_normal((n, hq, d), np.float32), jnp.bfloat16), dev)
                k = jax.device_put(jnp.asarray(rng.standard_normal((n, hkv, d), np.float32), jnp.bfloat16), dev)
                v = jax.device_put(jnp.asarray(rng.standard_normal((n, hkv, d), np.float32), jnp.bfloat16), dev)
                base_sets.append([q, k, v])
                if paged:
                    kc, pt = _paged(k, n, rng)
                    vc = jnp.zeros_like(kc).at[pt[0]].set(
                        jnp.pad(v, ((0, kc.shape[0] * PAGE - n), (0, 0), (0, 0)))
                        .reshape(kc.shape[0], PAGE, hkv, d).transpose(0, 2, 1, 3))
                    sets.append([q, jax.device_put(kc, dev), jax.device_put(vc, dev), jax.device_put(pt, dev)])
                else:
                    sets.append([q, k, v])
            # --output_mode: o, maxscore (upstream's per-block max only matters; O is still
            # produced by the fused pass) or full (O, LSE and block max).
            mode = getattr(args, "output_mode", "o")
            extras = dict(return_block_max=mode in ("maxscore", "full"), return_lse=mode == "full")
            if paged:
                ours = jax.jit(lambda q, k, v, pt: msa_jax.attention(q, k, v, plan, page_table=pt, **extras))
            else:
                ours = jax.jit(lambda q, k, v: msa_jax.attention(q, k, v, plan, **extras))
            t = bench(ours, sets, args.dry_run_ms, args.repeat_ms)
            flops = 4 * hq * d * _visible_pairs([n], [n])
            shape = f"T={n},Hq={hq},Hkv={hkv},D={d}" + (f",page={PAGE}" if paged else "") + \
                (f",out={mode}" if mode != "o" else "")
            try:
                base = jax.jit(_cudnn)
                tb = bench(base, base_sets, args.dry_run_ms, args.repeat_ms)
                base_name = "cudnn_sdpa"
            except Exception as e:  # noqa: BLE001 - cuDNN missing / shape unsupported
                print(f"# {name} {shape}: cuDNN baseline failed: {type(e).__name__}: {e}", file=sys.stderr)
                tb, base_name = None, "-"
            out.add(name, shape, "bf16", t, flops / t.median_ms / 1e9, "TFLOP/s", base_name, tb, dev)
            msg = f"# {name} {shape}: {flops / t.median_ms / 1e9:.0f} TFLOP/s"
            if tb is not None:
                msg += f", cuDNN {flops / tb.median_ms / 1e9:.0f} TFLOP/s ({tb.median_ms / t.median_ms:.2f}x)"
            print(msg, file=sys.stderr, flush=True)


def run(args, dev, out):
    """Section ``getattr(args, 'section', 'prefill')``: "prefill" or "paged_prefill"."""
    return _section(args, dev, out, paged=getattr(args, "section", "prefill") == "paged_prefill")


def run_prefill(args, dev, out):
    return _section(args, dev, out, paged=False)


def run_paged(args, dev, out):
    return _section(args, dev, out, paged=True)

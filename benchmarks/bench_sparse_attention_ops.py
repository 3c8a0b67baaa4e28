"""Benchmarks of the msa_jax ops against baselines measured in the same process.

Flags follow upstream's benchmarks/bench_sparse_attention_ops.py (fmha_sm100) where they
apply. Every row is one TSV line: section, shape, dtype, our median/min/max time, a rate,
the baseline's name and median time, the speed ratio (baseline time / our time) and the
device name.

Rates (stated here, used in every row):
  topk      GB/s = (rows * num_blocks * 4 + rows * k * 4) / time     (scores read, ids written)
  copy      GB/s = 2 * bytes / time (read + write; an XLA pass over the bytes as 32-bit words)
  index     TFLOP/s = 2 * H * Di * (causally visible query-key pairs) / time; baseline: an XLA bf16
            matmul [T*H, Di] x [Di, 8192], its time scaled to the same FLOPs at its measured rate
  prefill   TFLOP/s = 4 * Hq * D * (causally visible query-key pairs) / time
  sparse    TFLOP/s = 4 * Hq * D * (attended visible tokens) / time
  decode    GB/s = (K + V bytes of the attended tokens) / time; baselines: an elementwise pass over
            the K cache (copy, read+write) and cuDNN on a contiguous copy of the cache (q_len 1)
  e2e       the whole MSA layer (sparse_attention) vs cuDNN dense causal attention on the same
            q/k/v; rate = dense-equivalent TFLOP/s (4 * Hq * D * causal pairs / time)
  sparse_decode: the step block_scores + topk_select + sparse decode against dense paged decode of
            the same cache and against the same MSA step in plain XLA (einsum index scores, masked
            lax.top_k, gather, softmax); GB/s counts attended K/V bytes plus the index keys read
  ("decode" and "paged_decode" are the same here: msa_jax decodes from paged caches only; the
  "decode" rows use a contiguous page table)

Timing: jitted calls; warm-up (--dry-run-ms) excluded; then batches of asynchronously
dispatched calls blocked on at the end of each batch, until --repeat-ms (at least 3 batches);
median, min and max of the per-call batch averages. A batch holds as many calls as fill
--batch-ms (default 100 ms; one call if a call is longer), so that what the host adds once per
batch (the wake-up after the block and the next dispatch: 0.4-1.7 ms on the H200 hosts of
session 9, for cuDNN and our kernels alike) stays ~1% of a sample. Before session 9 batches
filled 2 ms, which charged most of that gap to every call longer than 2 ms (--batch-ms 2
reproduces it). Memory-bound sections rotate over input sets larger than the L2 cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

import msa_jax

L2_BYTES = 64 << 20
BATCH_MS = 100.0        # --batch-ms: calls dispatched back to back per timed batch fill this
MAX_PER_BATCH = 1000    # bounds the outputs a batch of tiny calls keeps alive
SECTIONS = ("prefill", "paged_prefill", "sparse_prefill", "decode", "paged_decode", "sparse_decode",
            "index", "topk", "e2e")


@dataclasses.dataclass
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float


def bench(fn: Callable, arg_sets: list, dry_run_ms: float, repeat_ms: float) -> Timing:
    """Times ``fn(*args)`` cycling over ``arg_sets`` (rotation defeats the L2 cache)."""
    n_sets = len(arg_sets)
    jax.block_until_ready(fn(*arg_sets[0]))                      # compile
    t_end = time.perf_counter() + dry_run_ms / 1e3
    i = 0
    while time.perf_counter() < t_end:
        jax.block_until_ready(fn(*arg_sets[i % n_sets]))
        i += 1
    # Batch size: enough calls to fill BATCH_MS, which hides the per-batch host gap (module doc).
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*arg_sets[0]))
    one = max(time.perf_counter() - t0, 1e-6)
    per_batch = int(min(max(BATCH_MS * 1e-3 / one, 1), MAX_PER_BATCH))
    samples = []
    t_end = time.perf_counter() + repeat_ms / 1e3
    while time.perf_counter() < t_end or len(samples) < 3:
        t0 = time.perf_counter()
        out = None
        for j in range(per_batch):
            out = fn(*arg_sets[(i + j) % n_sets])
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / per_batch * 1e3)
        i += per_batch
    return Timing(float(np.median(samples)), float(np.min(samples)), float(np.max(samples)))


def device_normal(rng, shape, dtype, dev):
    """Random normal values generated on the device (host generation dominates big sweeps)."""
    key = jax.random.key(int(rng.integers(1 << 31)))
    with jax.default_device(dev):
        return jax.jit(lambda k: jax.random.normal(k, shape, jnp.float32).astype(dtype))(key)


def rotation(nbytes: int) -> int:
    """Input sets needed so that the rotation exceeds the L2 cache."""
    return int(min(max(math.ceil(2 * L2_BYTES / max(nbytes, 1)), 1), 8))


def copy_baseline(x):
    """A device copy of x's bytes (read + write) as one XLA elementwise pass: x viewed as 32-bit
    words (bf16 / fp8 arithmetic would be conversion-bound, not memory-bound), each inverted."""
    n = 4 // x.dtype.itemsize
    w = x.reshape(*x.shape[:-1], x.shape[-1] // n, n) if n > 1 else x
    return ~jax.lax.bitcast_convert_type(w, jnp.uint32)


def device_name(dev) -> str:
    return f"{dev.platform}:{dev.device_kind}".replace(" ", "_")


def has_kernel(dev, *targets) -> Optional[str]:
    if dev.platform == "cpu":
        return None
    missing = [t for t in targets if t not in msa_jax.cuda_kernels()]
    return f"no CUDA kernel in this build for {', '.join(missing)}" if missing else None


class Writer:
    COLUMNS = ("section", "shape", "dtype", "median_ms", "min_ms", "max_ms", "rate", "unit", "baseline",
               "baseline_ms", "speedup", "device")

    def __init__(self, path: Optional[str]):
        self.rows = []
        self.path = path
        print("\t".join(self.COLUMNS), flush=True)
        if path:  # written row by row: a sweep cut short keeps what it measured
            with open(path, "w") as f:
                f.write("\t".join(self.COLUMNS) + "\n")

    def add(self, section, shape, dtype, t: Timing, rate, unit, baseline, base: Optional[Timing], dev):
        row = (section, shape, dtype, f"{t.median_ms:.4f}", f"{t.min_ms:.4f}", f"{t.max_ms:.4f}",
               f"{rate:.2f}", unit, baseline, f"{base.median_ms:.4f}" if base else "",
               f"{base.median_ms / t.median_ms:.3f}" if base else "", device_name(dev))
        self.rows.append(row)
        print("\t".join(row), flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write("\t".join(row) + "\n")

    def close(self):
        pass


def plot(rows, path: str) -> None:
    """MSA speedup over dense vs context (e2e, sparse_decode) and decode bandwidth utilisation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {}
    for r in rows:
        sec, shape, speed = r[0], r[1], r[10]
        # sparse_decode has a row per baseline: plot the speedup over dense paged decode.
        if speed and (sec == "e2e" or (sec == "sparse_decode" and r[8] == "dense paged decode")):
            fields = dict(kv.split("=", 1) for kv in shape.split(",") if "=" in kv)
            ctx = int(fields.get("T", fields.get("L", 0)))
            label = ("e2e prefill vs cuDNN dense" if sec == "e2e" else
                     f"sparse_decode B={fields['B']} index={fields.get('index', '')} vs dense paged")
            series.setdefault(label, []).append((ctx, float(speed)))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax1.axhline(1.0, color="gray", lw=0.8)
    ax1.set(xscale="log", xlabel="context (tokens)", ylabel="speedup over dense (x)",
            title="MSA vs dense (cuDNN prefill / paged decode)")
    if series:  # (a sweep without e2e / sparse_decode rows has nothing to label)
        ax1.legend(fontsize=7)
    dec = [r for r in rows if r[0] in ("decode", "paged_decode") and r[8].startswith("copy")]
    if dec:
        labels = [f"{r[1]} {r[2]}".replace(",d=128", "") for r in dec]
        ax2.barh(range(len(dec)), [float(r[10]) * 100 for r in dec])
        ax2.set_yticks(range(len(dec)), labels, fontsize=6)
        ax2.axvline(85, color="red", lw=0.8)
        # The copy moves 2 x |K| bytes, decode reads |K| + |V|: the time ratio is the bandwidth ratio.
        ax2.set(xlabel="decode bandwidth, % of copy", title="decode bandwidth utilisation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def skip(section: str, why: str) -> None:
    print(f"# skip {section}: {why}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- sections


def masked_lax_topk(scores, k, plan, local_blocks=1, sink_blocks=0):
    """The plain-XLA selection baseline: same forcing by masking, then lax.top_k and a sort."""
    T, H, NB = scores.shape
    qo = np.asarray(plan.qo_lens)
    kv = np.asarray(plan.kv_lens)
    row_seq = np.repeat(np.arange(len(qo)), qo)
    row_i = np.concatenate([np.arange(n) for n in qo])
    pos = kv[row_seq] - qo[row_seq] + row_i
    nvis = jnp.asarray(pos // plan.block_size + 1)[:, None, None]
    ids = jnp.arange(NB)[None, None, :]
    forced = (ids >= nvis - local_blocks) | (ids < sink_blocks)
    s = jnp.where(ids < nvis, jnp.where(forced, jnp.inf, scores), -jnp.inf)
    vals, idx = jax.lax.top_k(s, k)
    idx = jnp.where(jnp.isneginf(vals), NB, idx)
    idx = jnp.sort(idx, axis=-1)
    return jnp.where(idx == NB, -1, idx)


def section_topk(args, dev, out: Writer):
    why = has_kernel(dev, "msa_topk_select")
    if why:
        return skip("topk", why)
    rng = np.random.default_rng(0)
    for rows, nb in args.topk_shapes:
        for k in args.topk_k:
            # One sequence per 128*nb tokens: rows = query tokens x heads (H = 4).
            H = 4
            T = rows // H
            kv = nb * 128
            plan = msa_jax.plan_prefill([T], [kv], num_q_heads=H, num_kv_heads=H, head_dim=128)
            nbytes = rows * nb * 4
            sets = [[device_normal(rng, (T, H, nb), jnp.float32, dev)] for _ in range(rotation(nbytes))]
            ours = jax.jit(lambda s: msa_jax.topk_select(s, k, plan))
            base = jax.jit(lambda s: masked_lax_topk(s, k, plan))
            copy = jax.jit(copy_baseline)
            t = bench(ours, sets, args.dry_run_ms, args.repeat_ms)
            tb = bench(base, sets, args.dry_run_ms, args.repeat_ms)
            tc = bench(copy, sets, args.dry_run_ms, args.repeat_ms)
            moved = nbytes + rows * k * 4
            shape = f"rows={rows},blocks={nb},k={k}"
            out.add("topk", shape, "fp32", t, moved / t.median_ms / 1e6, "GB/s", "lax.top_k(masked)", tb, dev)
            out.add("topk_copy", shape, "fp32", tc, 2 * nbytes / tc.median_ms / 1e6, "GB/s", "-", None, dev)
            print(f"# topk {shape}: {tb.median_ms / t.median_ms:.1f}x lax.top_k, "
                  f"{(moved / t.median_ms) / (2 * nbytes / tc.median_ms):.0%} of copy bandwidth",
                  file=sys.stderr, flush=True)


def _visible_pairs(plan) -> int:
    return int(sum(q * k - q * (q - 1) // 2 for q, k in zip(plan.qo_lens, plan.kv_lens)))


def section_index(args, dev, out: Writer):
    why = has_kernel(dev, "msa_block_scores")
    if why:
        return skip("index", why)
    rng = np.random.default_rng(1)
    H, Di = 4, 128
    for n in args.seqs:
        for dtype in args.index_dtypes:
            plan = msa_jax.plan_prefill([n], [n], num_q_heads=H, num_kv_heads=H, head_dim=Di)
            q = device_normal(rng, (n, H, Di), jnp.bfloat16, dev)
            k = device_normal(rng, (n, Di), jnp.float8_e4m3fn if dtype == "fp8" else jnp.bfloat16, dev)
            ours = jax.jit(lambda q, k: msa_jax.block_scores(q, k, plan))
            t = bench(ours, [[q, k]], args.dry_run_ms, args.repeat_ms)
            # Baseline: an XLA bf16 matmul [T*H, Di] x [Di, 8192] (a slice of the same
            # product: the full [T, H, T] score matrix does not fit at long context),
            # its time scaled to our FLOP count.
            cols = min(n, 8192)
            a = q.reshape(n * H, Di)
            b = k.astype(jnp.bfloat16)[:cols].T
            base = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
            tb = bench(base, [[a, b]], args.dry_run_ms, args.repeat_ms)
            flops = 2 * H * Di * _visible_pairs(plan)
            xla_rate = 2 * n * H * Di * cols / tb.median_ms / 1e9
            scaled = Timing(*(flops / xla_rate / 1e9 * x / tb.median_ms for x in
                              (tb.median_ms, tb.min_ms, tb.max_ms)))
            out.add("index", f"T={n},H={H},Di={Di}", dtype, t, flops / t.median_ms / 1e9, "TFLOP/s",
                    "xla_matmul_rate", scaled, dev)
            print(f"# index T={n} {dtype}: {flops / t.median_ms / 1e9:.0f} TFLOP/s (causal pairs); "
                  f"XLA bf16 matmul [T*H,Di]x[Di,{cols}] {xla_rate:.0f} TFLOP/s", file=sys.stderr, flush=True)


def _paged_decode_inputs(dev, B, L, hq, hkv, d, cache_dtype, rng, page=128, index_dim=0):
    """Contiguous page assignment (page table = arange) so cuDNN sees the same bytes."""
    P = -(-L // page)
    mk = lambda shape, dt: device_normal(rng, shape, dt, dev)
    k = mk((B * P, hkv, page, d), cache_dtype)
    v = mk((B * P, hkv, page, d), cache_dtype)
    q = mk((B, hq, d), jnp.bfloat16)
    pt = jax.device_put(jnp.arange(B * P, dtype=jnp.int32).reshape(B, P), dev)
    lens = jax.device_put(jnp.full((B,), L, jnp.int32), dev)
    extra = {}
    if index_dim:
        extra["q_idx"] = mk((B, hkv, index_dim), jnp.bfloat16)
        extra["k_idx"] = mk((B * P, 1, page, index_dim), cache_dtype)
    return q, k, v, pt, lens, extra


def _decode_heads(args):
    return args.shapes


def section_decode(args, dev, out: Writer, paged_name="paged_decode"):
    why = has_kernel(dev, "msa_decode")
    if why:
        return skip(paged_name, why)
    rng = np.random.default_rng(2)
    cache_dtype = jnp.float8_e4m3fn if args.dtype == "fp8" else jnp.bfloat16
    for hq, hkv, d in _decode_heads(args):
        for B in args.decode_b:
            for L in args.decode_k:
                plan = msa_jax.plan_decode(B, L, num_q_heads=hq, num_kv_heads=hkv, head_dim=d)
                q, k, v, pt, lens, _ = _paged_decode_inputs(dev, B, L, hq, hkv, d, cache_dtype, rng)
                kv_bytes = 2 * B * L * hkv * d * jnp.dtype(cache_dtype).itemsize
                ours = jax.jit(lambda q, k, v, pt, lens: msa_jax.decode(q, k, v, pt, lens, plan))
                t = bench(ours, [[q, k, v, pt, lens]], args.dry_run_ms, args.repeat_ms)
                copy = jax.jit(copy_baseline)
                tc = bench(copy, [[k]], args.dry_run_ms, args.repeat_ms)
                shape = f"B={B},L={L},{hq}q/{hkv}kv,d={d}"
                dt = "fp8" if args.dtype == "fp8" else "bf16"
                rate = kv_bytes / t.median_ms / 1e6
                copy_rate = 2 * k.nbytes / tc.median_ms / 1e6
                out.add(paged_name, shape, dt, t, rate, "GB/s", "copy(K, read+write)", tc, dev)
                base = None
                if cache_dtype == jnp.bfloat16 and not args.cpu:
                    kc = jnp.swapaxes(k.reshape(B, -1, hkv, 128, d), 2, 3).reshape(B, -1, hkv, d)
                    vc = jnp.swapaxes(v.reshape(B, -1, hkv, 128, d), 2, 3).reshape(B, -1, hkv, d)
                    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
                        q[:, None], k, v, implementation="cudnn"))
                    try:
                        base = bench(cudnn, [[q, kc, vc]], args.dry_run_ms, args.repeat_ms)
                        out.add(paged_name, shape, dt, t, rate, "GB/s", "cudnn(contiguous)", base, dev)
                    except Exception as e:  # cuDNN may reject q_len 1 or GQA shapes
                        skip(paged_name + " cudnn baseline", f"{type(e).__name__}: {str(e)[:120]}")
                    del kc, vc
                print(f"# {paged_name} {shape} {dt}: {rate:.0f} GB/s = {rate / copy_rate:.0%} of copy "
                      f"({copy_rate:.0f} GB/s)" + (f"; {base.median_ms / t.median_ms:.2f}x cuDNN" if base else ""),
                      file=sys.stderr, flush=True)


def xla_sparse_decode_step(q, qi, ki, k, v, pt, lens, *, k_sel, page):
    """Plain-XLA MSA decode (einsum index scores + masked lax.top_k + gather + softmax): the
    baseline a JAX user writes without msa_jax. Pages of request b are pt[b, :]; bf16 in, f32 math."""
    B, hq, d = q.shape
    hkv = k.shape[1]
    P = pt.shape[1]
    nblk = (lens + page - 1) // page                                          # [B]
    kidx = ki[pt][:, :, 0].astype(jnp.float32)                                # [B, P, page, Di]
    s = jnp.einsum("bgd,bpjd->bgpj", qi.astype(jnp.float32), kidx) / np.sqrt(qi.shape[-1])
    tok = jnp.arange(P)[:, None] * page + jnp.arange(page)[None, :]           # [P, page]
    s = jnp.where(tok[None, None] < lens[:, None, None, None], s, -jnp.inf).max(-1)   # [B, hkv, P]
    local = (nblk - 1)[:, None, None]
    s = jnp.where(jnp.arange(P)[None, None] == local, jnp.inf, s)
    vals, ids = jax.lax.top_k(s, k_sel)                                       # [B, hkv, k]
    pages = jnp.take_along_axis(pt[:, None, :], ids, axis=2)                  # [B, hkv, k]
    heads = jnp.arange(hkv)[None, :, None]
    kg = k[pages, heads].astype(jnp.float32)                                  # [B, hkv, k, page, d]
    vg = v[pages, heads].astype(jnp.float32)
    qg = q.reshape(B, hkv, hq // hkv, d).astype(jnp.float32)
    sc = jnp.einsum("bgqd,bgkjd->bgqkj", qg, kg) / np.sqrt(d)
    visible = (ids[..., None] * page + jnp.arange(page) < lens[:, None, None, None]) & (vals > -jnp.inf)[..., None]
    sc = jnp.where(visible[:, :, None], sc, -jnp.inf)
    p = jax.nn.softmax(sc.reshape(*sc.shape[:3], -1), axis=-1).reshape(sc.shape)
    o = jnp.einsum("bgqkj,bgkjd->bgqd", p, vg)
    return o.reshape(B, hq, d).astype(q.dtype)


def section_sparse_decode(args, dev, out: Writer):
    """The sparse decode step (index scores + top-k + sparse decode) against dense paged decode."""
    why = has_kernel(dev, "msa_decode", "msa_block_scores", "msa_topk_select")
    if why:
        return skip("sparse_decode", why)
    rng = np.random.default_rng(3)
    hq, hkv, d, di, k_sel = (64, 4, 128, 128, 16) if not args.cpu else (8, 2, 64, 64, 4)
    for index_dtype in (["bf16", "fp8"] if args.dtype != "fp8" else ["fp8"]):
        idt = jnp.float8_e4m3fn if index_dtype == "fp8" else jnp.bfloat16
        for B in args.decode_b:
            for L in args.decode_k:
                plan = msa_jax.plan_decode(B, L, num_q_heads=hq, num_kv_heads=hkv, head_dim=d)
                q, k, v, pt, lens, ex = _paged_decode_inputs(dev, B, L, hq, hkv, d, jnp.bfloat16, rng,
                                                             index_dim=di)
                k_idx = ex["k_idx"].astype(idt)
                dense = jax.jit(lambda q, k, v, pt, lens: msa_jax.decode(q, k, v, pt, lens, plan))

                def step(q, qi, ki, k, v, pt, lens):
                    s = msa_jax.block_scores(qi, ki, plan, page_table=pt, kv_lens=lens)
                    ids = msa_jax.topk_select(s, k_sel, plan, kv_lens=lens)
                    return msa_jax.decode(q, k, v, pt, lens, plan, block_ids=ids)

                step = jax.jit(step)
                td = bench(dense, [[q, k, v, pt, lens]], args.dry_run_ms, args.repeat_ms)
                step_args = [q, ex["q_idx"], k_idx, k, v, pt, lens]
                t = bench(step, [step_args], args.dry_run_ms, args.repeat_ms)
                xla_step = jax.jit(lambda *a: xla_sparse_decode_step(*a, k_sel=k_sel, page=128))
                try:
                    tx = bench(xla_step, [step_args], args.dry_run_ms, args.repeat_ms)
                except Exception as e:  # noqa: BLE001 (memory at long context)
                    skip("sparse_decode plain-XLA baseline", f"{type(e).__name__}: {str(e)[:120]}")
                    tx = None
                shape = f"B={B},L={L},{hq}q/{hkv}kv,d={d},k={k_sel},index={index_dtype}"
                attended = 2 * B * min(L, k_sel * 128) * hkv * d * 2 + B * L * di * jnp.dtype(idt).itemsize
                out.add("sparse_decode", shape, "bf16", t, attended / t.median_ms / 1e6, "GB/s",
                        "dense paged decode", td, dev)
                if tx is not None:
                    out.add("sparse_decode", shape, "bf16", t, attended / t.median_ms / 1e6, "GB/s",
                            "plain-XLA MSA decode", tx, dev)
                print(f"# sparse_decode {shape}: {td.median_ms / t.median_ms:.2f}x dense paged decode" +
                      (f", {tx.median_ms / t.median_ms:.2f}x plain-XLA MSA" if tx is not None else ""),
                      file=sys.stderr, flush=True)
                del q, k, v, k_idx, ex


def _section_module(name):
    """Sections kept in their own files next to this script."""
    import importlib
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    sys.modules.setdefault("bench_sparse_attention_ops", sys.modules[__name__])
    return importlib.import_module(name)


def section_e2e(args, dev, out: Writer):
    """The whole MSA layer (sparse_attention) against cuDNN dense causal attention, same inputs."""
    why = has_kernel(dev, "msa_block_scores", "msa_topk_select", "msa_sparse_prefill")
    if why:
        return skip("e2e", why)
    rng = np.random.default_rng(4)
    hq, hkv, d = args.shapes[0]
    di, k_sel = (128, 16) if not args.cpu else (64, 4)
    for n in args.seqs:
        plan = msa_jax.plan_prefill([n], [n], num_q_heads=hq, num_kv_heads=hkv, head_dim=d)
        q = device_normal(rng, (n, hq, d), jnp.bfloat16, dev)
        k = device_normal(rng, (n, hkv, d), jnp.bfloat16, dev)
        v = device_normal(rng, (n, hkv, d), jnp.bfloat16, dev)
        qi = device_normal(rng, (n, hkv, di), jnp.bfloat16, dev)
        ki = device_normal(rng, (n, di), jnp.bfloat16, dev)
        # Past --index-chunk tokens the index branch runs in chunks: its fp32 block scores grow as T^2
        # (128 GiB in one pass at 1M), while the outputs are the same bits (sparse_attention's doc).
        chunk = args.index_chunk if 0 < args.index_chunk < n else None
        ours = jax.jit(lambda q, k, v, qi, ki: msa_jax.sparse_attention(q, k, v, qi, ki, plan, topk=k_sel,
                                                                        index_chunk=chunk))
        t = bench(ours, [[q, k, v, qi, ki]], args.dry_run_ms, args.repeat_ms)
        base = None
        if not args.cpu:
            cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q[None], k[None], v[None], is_causal=True,
                                                                         implementation="cudnn")[0])
            try:
                base = bench(cudnn, [[q, k, v]], args.dry_run_ms, args.repeat_ms)
            except Exception as e:  # noqa: BLE001
                skip("e2e cudnn baseline", f"{type(e).__name__}: {str(e)[:120]}")
        dense_flops = 4 * hq * d * _visible_pairs(plan)
        out.add("e2e", f"T={n},{hq}q/{hkv}kv,d={d},Di={di},k={k_sel}" + (f",index_chunk={chunk}" if chunk else ""),
                "bf16", t,
                dense_flops / t.median_ms / 1e9, "dense-equiv TFLOP/s", "cudnn_dense_causal", base, dev)
        print(f"# e2e T={n}: sparse_attention {t.median_ms:.2f} ms" +
              (f", cuDNN dense {base.median_ms:.2f} ms: {base.median_ms / t.median_ms:.2f}x" if base else ""),
              file=sys.stderr, flush=True)
        del q, k, v, qi, ki


RUNNERS = {
    "topk": section_topk,
    "index": section_index,
    "prefill": lambda a, d, o: _section_module("bench_attention_section").run_prefill(a, d, o),
    "paged_prefill": lambda a, d, o: _section_module("bench_attention_section").run_paged(a, d, o),
    "sparse_prefill": lambda a, d, o: _section_module("bench_sparse_section").run(a, d, o),
    "decode": lambda a, d, o: section_decode(a, d, o, "decode"),
    "paged_decode": section_decode,
    "sparse_decode": section_sparse_decode,
    "e2e": section_e2e,
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp8", "nvfp4"])
    p.add_argument("--sections", default="all", help="all or a comma list of " + ",".join(SECTIONS))
    p.add_argument("--seqs", default="32768,131072", help="context lengths (comma list)")
    p.add_argument("--tp", default="1", help="tensor-parallel degrees (heads divided), comma list")
    p.add_argument("--heads", default="64/4,32/8",
                   help="query/kv head pairs for prefill, decode and e2e (comma list; sparse_prefill and "
                        "sparse_decode use the paper's 64/4)")
    p.add_argument("--head-dim", type=int, default=128, help="head dim for prefill, decode and e2e")
    p.add_argument("--decode-k", default="32768,131072", help="decode kv lengths")
    p.add_argument("--decode-b", default="32", help="decode batch sizes")
    p.add_argument("--topk-shapes", default="131072x1024,131072x8192", help="rows x blocks for the topk section")
    p.add_argument("--topk-k", default="16", help="k values for the topk section")
    p.add_argument("--dry-run-ms", type=float, default=100.0)
    p.add_argument("--repeat-ms", type=float, default=500.0)
    p.add_argument("--batch-ms", type=float, default=BATCH_MS,
                   help="calls dispatched back to back per timed batch fill this many ms (module doc)")
    p.add_argument("--sparse-baseline-max-seq", type=int, default=0,
                   help="sparse_prefill: skip the plain-XLA baseline above this context (0: never skip; "
                        "at 512K it alone takes minutes)")
    p.add_argument("--sparse-vs-dense", action="store_true",
                   help="sparse_prefill: also time our dense kernel (msa_jax.attention) at the same length "
                        "and report the sparse rate as a share of it (#4's target; 512K dense takes ~90 s)")
    p.add_argument("--index-chunk", type=int, default=0,
                   help="e2e: contexts longer than this run sparse_attention's index branch in chunks of "
                        "this many query tokens (0: one pass at every length; one pass needs "
                        "T x Hkv x T/128 x 4 bytes of scores, 128 GiB at 1M)")
    p.add_argument("--output_mode", default="o", choices=["o", "maxscore", "full"])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (tiny shapes for a smoke test)")
    p.add_argument("-o", "--output", default=None, help="TSV output path")
    p.add_argument("--plot", default=None, help="PNG path: speedup vs context and decode bandwidth (matplotlib)")
    a = p.parse_args(argv)
    a.sections = SECTIONS if a.sections == "all" else tuple(s.strip() for s in a.sections.split(","))
    for s in a.sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    if not a.batch_ms > 0:
        p.error("--batch-ms must be > 0")
    ints = lambda s: [int(x) for x in s.split(",") if x]
    a.seqs, a.tp, a.decode_k, a.decode_b, a.topk_k = (ints(x) for x in (a.seqs, a.tp, a.decode_k, a.decode_b,
                                                                           a.topk_k))
    a.topk_shapes = [tuple(int(v) for v in s.split("x")) for s in a.topk_shapes.split(",") if s]
    a.index_dtypes = ["fp8"] if a.dtype == "fp8" else ["bf16"]
    pairs = [tuple(int(x) for x in h.split("/")) for h in a.heads.split(",") if h]
    if a.cpu and a.heads == "64/4,32/8":
        pairs, a.head_dim = [(8, 2)], 64
    # --tp: heads divided as tensor parallelism would (KV heads at least 1 per shard).
    a.shapes = [(hq // tp, max(hkv // tp, 1), a.head_dim) for hq, hkv in pairs for tp in a.tp
                if hq % tp == 0 and (hq // tp) % max(hkv // tp, 1) == 0]
    return a


def main(argv=None) -> int:
    global BATCH_MS
    args = parse(argv)
    default_batch_ms, BATCH_MS = BATCH_MS, args.batch_ms
    try:
        return _run(args)
    finally:
        BATCH_MS = default_batch_ms   # main() called in-process (tests) leaves the default


def _run(args) -> int:
    dev = jax.devices("cpu")[0] if args.cpu else jax.devices()[0]
    if args.dtype == "nvfp4":
        print("# nvfp4 is not supported by msa_jax yet: nothing to run", file=sys.stderr)
        return 0
    print(f"# msa_jax {msa_jax.__version__}, jax {jax.__version__}, device {device_name(dev)}", file=sys.stderr)
    out = Writer(args.output)
    sections = args.sections
    try:
        from tqdm import tqdm
        sections = tqdm(sections, desc="sections", file=sys.stderr)
    except ImportError:
        pass
    with jax.default_device(dev):
        for s in sections:
            RUNNERS[s](args, dev, out)
    out.close()
    if args.plot:
        plot(out.rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

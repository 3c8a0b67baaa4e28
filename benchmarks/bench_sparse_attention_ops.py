"""Benchmarks of the msa_jax ops against baselines measured in the same process.

Flags follow upstream's benchmarks/bench_sparse_attention_ops.py (fmha_sm100) where they
apply. Every row is one TSV line: section, shape, dtype, our median/min/max time, a rate,
the baseline's name and median time, the speed ratio (baseline time / our time) and the
device name.

Rates (stated here, used in every row):
  topk      GB/s = (rows * num_blocks * 4 + rows * k * 4) / time     (scores read, ids written)
  copy      GB/s = 2 * bytes / time                                  (read + write)
  index     TFLOP/s = 2 * H * Di * (causally visible query-key pairs) / time
  prefill   TFLOP/s = 4 * Hq * D * (causally visible query-key pairs) / time
  sparse    TFLOP/s = 4 * Hq * D * (attended visible tokens) / time
  decode    GB/s = (K + V bytes of the attended tokens) / time

Timing: jitted calls; warm-up (--dry-run-ms) excluded; then batches of asynchronously
dispatched calls blocked on at the end of each batch, until --repeat-ms; median, min and
max of the per-call batch averages. Memory-bound sections rotate over input sets larger
than the L2 cache.
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
SECTIONS = ("prefill", "paged_prefill", "sparse_prefill", "decode", "paged_decode", "sparse_decode",
            "index", "topk")


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
    # Batch size: enough calls per batch to hide dispatch latency.
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*arg_sets[0]))
    one = max(time.perf_counter() - t0, 1e-6)
    per_batch = int(min(max(2e-3 / one, 1), 50))
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


def rotation(nbytes: int) -> int:
    """Input sets needed so that the rotation exceeds the L2 cache."""
    return int(min(max(math.ceil(2 * L2_BYTES / max(nbytes, 1)), 1), 8))


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

    def add(self, section, shape, dtype, t: Timing, rate, unit, baseline, base: Optional[Timing], dev):
        row = (section, shape, dtype, f"{t.median_ms:.4f}", f"{t.min_ms:.4f}", f"{t.max_ms:.4f}",
               f"{rate:.2f}", unit, baseline, f"{base.median_ms:.4f}" if base else "",
               f"{base.median_ms / t.median_ms:.3f}" if base else "", device_name(dev))
        self.rows.append(row)
        print("\t".join(row), flush=True)

    def close(self):
        if self.path:
            with open(self.path, "w") as f:
                f.write("\t".join(self.COLUMNS) + "\n")
                for r in self.rows:
                    f.write("\t".join(r) + "\n")


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
            sets = [[jax.device_put(jnp.asarray(rng.standard_normal((T, H, nb), dtype=np.float32)), dev)]
                    for _ in range(rotation(nbytes))]
            ours = jax.jit(lambda s: msa_jax.topk_select(s, k, plan))
            base = jax.jit(lambda s: masked_lax_topk(s, k, plan))
            copy = jax.jit(lambda s: -s)
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
            q = jax.device_put(jnp.asarray(rng.standard_normal((n, H, Di)), jnp.bfloat16), dev)
            kf = rng.standard_normal((n, Di)).astype(np.float32)
            k = jax.device_put(jnp.asarray(kf).astype(jnp.float8_e4m3fn if dtype == "fp8" else jnp.bfloat16), dev)
            ours = jax.jit(lambda q, k: msa_jax.block_scores(q, k, plan))
            t = bench(ours, [[q, k]], args.dry_run_ms, args.repeat_ms)
            kb = k.astype(jnp.bfloat16)
            base = jax.jit(lambda q, k: jnp.einsum("thd,jd->thj", q, k, preferred_element_type=jnp.float32))
            tb = bench(base, [[q, kb]], args.dry_run_ms, args.repeat_ms)
            flops = 2 * H * Di * _visible_pairs(plan)
            out.add("index", f"T={n},H={H},Di={Di}", dtype, t, flops / t.median_ms / 1e9, "TFLOP/s",
                    "xla_matmul(full)", tb, dev)
            print(f"# index T={n} {dtype}: {flops / t.median_ms / 1e9:.0f} TFLOP/s (causal pairs); XLA full matmul "
                  f"{2 * H * Di * n * n / tb.median_ms / 1e9:.0f} TFLOP/s", file=sys.stderr, flush=True)


def section_unported(name, targets):
    def run(args, dev, out):
        why = has_kernel(dev, *targets)
        if why:
            return skip(name, why)
        skip(name, "not benchmarked yet in this version of the suite")
    return run


RUNNERS = {
    "topk": section_topk,
    "index": section_index,
    "prefill": section_unported("prefill", ["msa_attention"]),
    "paged_prefill": section_unported("paged_prefill", ["msa_attention"]),
    "sparse_prefill": section_unported("sparse_prefill", ["msa_sparse_prefill"]),
    "decode": section_unported("decode", ["msa_decode"]),
    "paged_decode": section_unported("paged_decode", ["msa_decode"]),
    "sparse_decode": section_unported("sparse_decode", ["msa_decode"]),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp8", "nvfp4"])
    p.add_argument("--sections", default="all", help="all or a comma list of " + ",".join(SECTIONS))
    p.add_argument("--seqs", default="32768,131072", help="context lengths (comma list)")
    p.add_argument("--tp", default="1", help="tensor-parallel degrees (heads divided), comma list")
    p.add_argument("--decode-k", default="32768,131072", help="decode kv lengths")
    p.add_argument("--decode-b", default="32", help="decode batch sizes")
    p.add_argument("--topk-shapes", default="131072x1024,131072x8192", help="rows x blocks for the topk section")
    p.add_argument("--topk-k", default="16", help="k values for the topk section")
    p.add_argument("--dry-run-ms", type=float, default=100.0)
    p.add_argument("--repeat-ms", type=float, default=500.0)
    p.add_argument("--output_mode", default="o", choices=["o", "maxscore", "full"])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (tiny shapes for a smoke test)")
    p.add_argument("-o", "--output", default=None, help="TSV output path")
    a = p.parse_args(argv)
    a.sections = SECTIONS if a.sections == "all" else tuple(s.strip() for s in a.sections.split(","))
    for s in a.sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    ints = lambda s: [int(x) for x in s.split(",") if x]
    a.seqs, a.tp, a.decode_k, a.decode_b, a.topk_k = (ints(x) for x in (a.seqs, a.tp, a.decode_k, a.decode_b,
                                                                           a.topk_k))
    a.topk_shapes = [tuple(int(v) for v in s.split("x")) for s in a.topk_shapes.split(",") if s]
    a.index_dtypes = ["fp8"] if a.dtype == "fp8" else ["bf16"]
    return a


def main(argv=None) -> int:
    args = parse(argv)
    dev = jax.devices("cpu")[0] if args.cpu else jax.devices()[0]
    if args.dtype == "nvfp4":
        print("# nvfp4 is not supported by msa_jax yet: nothing to run", file=sys.stderr)
        return 0
    print(f"# msa_jax {msa_jax.__version__}, jax {jax.__version__}, device {device_name(dev)}", file=sys.stderr)
    out = Writer(args.output)
    with jax.default_device(dev):
        for s in args.sections:
            RUNNERS[s](args, dev, out)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Times msa_jax.decode under alternative split-K rules, to tune decode_num_splits (GPU).

The kernel takes num_splits as an attribute and msa_jax.decode computes it at trace time by
calling msa_jax.decode.decode_num_splits, so swapping that function in this process (for the
same rule with other constants) tries a rule without touching the library. Prints, per (cache dtype, B, L), the rules sorted by time.
A rule that wins must then be written into msa_jax/decode.py and its C++ mirror in
cuda/decode/decode.h.

    python benchmarks/tune_decode_splits.py                # the grid below
    python benchmarks/tune_decode_splits.py 2048:4 1024:16  # only these (cta_target:min_pages) rules
"""

import functools
import importlib
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import msa_jax

# msa_jax.decode is also the name of the re-exported function: fetch the module itself.
decode_module = importlib.import_module("msa_jax.decode")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_sparse_attention_ops as bench_ops  # noqa: E402

CASES = ((8, 32768), (8, 131072), (32, 32768))       # (B, kv_len): the short-per-split cases
CTA_TARGETS = (4096, 2048, 1584, 1188, 1024, 512)  # 1584 / 1188: 4 / 3 waves of 132 SMs x 3 CTAs
MIN_PAGES_PER_SPLIT = (2, 4, 8, 16)


def main() -> None:
    shipped = decode_module.decode_num_splits
    rules = [tuple(int(x) for x in a.split(":")) for a in sys.argv[1:]] or [
        (t, m) for t in CTA_TARGETS for m in MIN_PAGES_PER_SPLIT]
    dev = jax.devices()[0]
    rng = np.random.default_rng(0)
    try:
        for dtype in (jnp.float8_e4m3fn, jnp.bfloat16):
            for B, L in CASES:
                plan = msa_jax.plan_decode(B, L, num_q_heads=64, num_kv_heads=4, head_dim=128)
                q, k, v, pt, lens, _ = bench_ops._paged_decode_inputs(dev, B, L, 64, 4, 128, dtype, rng)
                results = []
                for target, min_pages in rules:
                    rule = functools.partial(shipped, cta_target=target, min_pages=min_pages)
                    decode_module.decode_num_splits = rule
                    fn = jax.jit(lambda q, k, v, pt, lens: msa_jax.decode(q, k, v, pt, lens, plan))
                    t = bench_ops.bench(fn, [[q, k, v, pt, lens]], 30, 100)
                    results.append((t.median_ms, target, min_pages, rule(B, 4, plan.max_pages, 0)))
                results.sort()
                print(jnp.dtype(dtype).name, f"B={B} L={L}:", " ".join(
                    f"{ms:.4f}ms(target={t},min_pages={m},splits={s})" for ms, t, m, s in results), flush=True)
                del q, k, v
    finally:
        decode_module.decode_num_splits = shipped


if __name__ == "__main__":
    main()

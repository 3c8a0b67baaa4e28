"""Random test inputs: ragged batches, dense and paged (shuffled page tables) caches."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax


def gpu_device():
    """The first CUDA device (the test is skipped without one)."""
    try:
        devs = jax.devices("gpu")
    except RuntimeError:
        devs = []
    if not devs:
        pytest.skip("no GPU")
    return devs[0]


def cpu_device():
    return jax.devices("cpu")[0]


def rel_err(got, want) -> float:
    """Relative error by norm over finite entries (the -inf pattern is checked separately)."""
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    mask = np.isfinite(want)
    assert np.array_equal(mask, np.isfinite(got)), "the pattern of non-finite entries differs"
    assert np.array_equal(got[~mask], want[~mask]), "non-finite entries differ"
    denom = np.linalg.norm(want[mask])
    return float(np.linalg.norm(got[mask] - want[mask]) / max(denom, 1e-30))


def check_block_scores(got, want, tol=1e-2):
    """Block scores: every element written (no NaN poison left), the -inf pattern exact,
    the finite scores within ``tol`` relative error by norm."""
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert not np.isnan(got).any(), "NaN in the kernel output (an element left unwritten?)"
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg="-inf pattern differs")
    fin = np.isfinite(want)
    assert np.isfinite(got[fin]).all()
    if fin.any():
        err = np.linalg.norm(got[fin] - want[fin]) / max(np.linalg.norm(want[fin]), 1e-30)
        assert err <= tol, f"relative error {err:.3e} > {tol}"


def random(rng, shape, dtype, scale=1.0):
    x = rng.standard_normal(shape).astype(np.float32) * scale
    return jnp.asarray(x).astype(dtype)


def quantize_fp8(rng, shape, scale):
    """Random fp8 values that dequantise (times scale) to roughly unit normal."""
    x = rng.standard_normal(shape).astype(np.float32) / scale
    return jnp.asarray(np.clip(x, -448, 448)).astype(jnp.float8_e4m3fn)


def to_paged(dense: jax.Array, kv_lens, page_size: int, rng, *, extra_pages: int = 3,
             extra_cols: int = 1):
    """Scatter packed ``[Tk, H, D]`` into a paged cache with a shuffled page table.

    Unused page-table slots hold -1; the cache holds random garbage pages too.
    """
    kv_lens = list(kv_lens)
    H, D = dense.shape[1:]
    need = [-(-n // page_size) for n in kv_lens]
    num_pages = sum(need) + extra_pages
    perm = rng.permutation(num_pages)
    cache = np.asarray(jnp.asarray(dense, jnp.float32))
    pages = rng.standard_normal((num_pages, H, page_size, D)).astype(np.float32)
    table = np.full((len(kv_lens), max(need) + extra_cols), -1, np.int32)
    start, used = 0, 0
    for b, n in enumerate(kv_lens):
        for p in range(need[b]):
            page = perm[used]
            used += 1
            table[b, p] = page
            lo = start + p * page_size
            hi = min(lo + page_size, start + n)
            pages[page, :, : hi - lo] = cache[lo:hi].transpose(1, 0, 2)
        start += n
    return jnp.asarray(pages).astype(dense.dtype), jnp.asarray(table)


@dataclasses.dataclass
class PrefillCase:
    plan: msa_jax.PrefillPlan
    q: jax.Array
    k: jax.Array
    v: jax.Array
    q_idx: jax.Array
    k_idx: jax.Array
    page_table: Optional[jax.Array]


def prefill_case(qo_lens, kv_lens, *, hq, hkv, d, di=64, dtype=jnp.bfloat16, paged=False,
                 page_size=128, block_size=128, seed=0, causal=True) -> PrefillCase:
    rng = np.random.default_rng(seed)
    plan = msa_jax.plan_prefill(qo_lens, kv_lens, num_q_heads=hq, num_kv_heads=hkv, head_dim=d,
                                page_size=page_size if paged else None,
                                block_size=page_size if paged else block_size, causal=causal)
    T, Tk = plan.total_q, plan.total_kv
    q = random(rng, (T, hq, d), dtype)
    k = random(rng, (Tk, hkv, d), dtype)
    v = random(rng, (Tk, hkv, d), dtype)
    q_idx = random(rng, (T, hkv, di), dtype)
    k_idx = random(rng, (Tk, di), dtype)
    pt = None
    if paged:
        k, pt = to_paged(k, kv_lens, page_size, np.random.default_rng(seed + 1))
        v, _ = to_paged(v, kv_lens, page_size, np.random.default_rng(seed + 1))
        k_idx, _ = to_paged(k_idx[:, None, :], kv_lens, page_size, np.random.default_rng(seed + 1))
    return PrefillCase(plan, q, k, v, q_idx, k_idx, pt)


def random_block_ids(rng, plan, k: int, *, invalid: bool = True):
    """Random ``[T, Hkv, k]`` ids: visible blocks, repeats, -1 and out-of-range values."""
    T = plan.total_q
    nb = plan.num_blocks
    ids = rng.integers(0, nb, size=(T, plan.num_kv_heads, k)).astype(np.int32)
    if invalid:
        r = rng.random(ids.shape)
        ids[r < 0.15] = -1
        ids[(r >= 0.15) & (r < 0.2)] = nb + 3
        ids[(r >= 0.2) & (r < 0.23)] = -7
    return jnp.asarray(ids)

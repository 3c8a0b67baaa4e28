"""msa_attention (dense and paged prefill) against the reference."""

import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref
from msa_cases import prefill_case, quantize_fp8, rel_err

HEADS = [(4, 4), (8, 2), (16, 1)]  # GQA ratios 1, 4, 16


@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_matches_reference(hq, hkv, d, paged, dtype):
    case = prefill_case([37, 200, 1], [300, 200, 129], hq=hq, hkv=hkv, d=d, dtype=dtype, paged=paged,
                        seed=hq + d)
    got = msa_jax.attention(case.q, case.k, case.v, case.plan, page_table=case.page_table,
                            return_lse=True, return_block_max=True)
    want = ref.attention(case.q, case.k, case.v, case.plan, page_table=case.page_table,
                         return_lse=True, return_block_max=True)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) < tol


def test_attention_non_causal_fp16():
    case = prefill_case([50, 7], [90, 300], hq=8, hkv=2, d=64, dtype=jnp.float16, causal=False, seed=3)
    got = msa_jax.attention(case.q, case.k, case.v, case.plan, return_lse=True)
    want = ref.attention(case.q, case.k, case.v, case.plan, return_lse=True)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-2


def test_attention_fp8_kv():
    rng = np.random.default_rng(4)
    case = prefill_case([64, 10], [200, 140], hq=8, hkv=2, d=128, seed=4)
    k8 = quantize_fp8(rng, case.k.shape, 0.05)
    v8 = quantize_fp8(rng, case.v.shape, 0.02)
    got = msa_jax.attention(case.q, k8, v8, case.plan, k_scale=0.05, v_scale=0.02, return_lse=True)
    want = ref.attention(case.q, k8, v8, case.plan, k_scale=0.05, v_scale=0.02, return_lse=True)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-2


def test_paged_bad_page_ids_are_skipped():
    case = prefill_case([20, 20], [260, 300], hq=4, hkv=2, d=64, dtype=jnp.float32, paged=True, seed=5)
    pt = np.asarray(case.page_table).copy()
    pt[0, 1] = 10_000      # out of range
    pt[1, 0] = -5          # negative
    pt = jnp.asarray(pt)
    got = msa_jax.attention(case.q, case.k, case.v, case.plan, page_table=pt, return_lse=True)
    want = ref.attention(case.q, case.k, case.v, case.plan, page_table=pt, return_lse=True)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_block_max_is_upstream_maxscore():
    """block_max equals the index branch run with the main heads as index heads (H = Hkv = Hq)."""
    case = prefill_case([33], [333], hq=2, hkv=2, d=64, dtype=jnp.float32, seed=6)
    _, bm = msa_jax.attention(case.q, case.k, case.v, case.plan, return_block_max=True)
    assert bm.shape == (33, 2, 3)
    assert np.isneginf(np.asarray(bm)[0, :, 2]).all() or np.isfinite(np.asarray(bm)[0, :, 2]).all()
    want = ref.attention(case.q, case.k, case.v, case.plan, return_block_max=True)[1]
    assert rel_err(bm, want) < 1e-5

"""msa_sparse_prefill (main branch) and the whole sparse_attention layer against the reference."""

import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref
from msa_cases import prefill_case, quantize_fp8, random_block_ids, rel_err

HEADS = [(4, 4), (8, 2), (16, 1)]


@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sparse_prefill_random_ids(hq, hkv, d, paged, dtype):
    case = prefill_case([40, 260, 2], [700, 260, 131], hq=hq, hkv=hkv, d=d, dtype=dtype, paged=paged,
                        seed=hq * d)
    ids = random_block_ids(np.random.default_rng(d), case.plan, 5)
    got = msa_jax.sparse_prefill(case.q, case.k, case.v, ids, case.plan, page_table=case.page_table,
                                 return_lse=True)
    want = ref.sparse_prefill(case.q, case.k, case.v, ids, case.plan, page_table=case.page_table,
                              return_lse=True)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) < tol


def test_every_block_selected_equals_dense():
    case = prefill_case([30, 100], [600, 100], hq=8, hkv=2, d=64, dtype=jnp.float32, seed=9)
    nb = case.plan.num_blocks
    ids = jnp.broadcast_to(jnp.arange(nb, dtype=jnp.int32), (case.plan.total_q, 2, nb))
    got = msa_jax.sparse_prefill(case.q, case.k, case.v, ids, case.plan)
    dense = msa_jax.attention(case.q, case.k, case.v, case.plan)
    assert rel_err(got, dense) < 1e-5


def test_hot_block_and_empty_rows():
    case = prefill_case([50], [500], hq=4, hkv=1, d=64, dtype=jnp.float32, seed=10)
    T = case.plan.total_q
    ids = np.full((T, 1, 4), -1, np.int32)
    ids[:, 0, 0] = 0                  # every query selects block 0 (a sink: hot block)
    ids[:10] = -1                     # the first rows select nothing
    ids = jnp.asarray(ids)
    o, lse = msa_jax.sparse_prefill(case.q, case.k, case.v, ids, case.plan, return_lse=True)
    want = ref.sparse_prefill(case.q, case.k, case.v, ids, case.plan, return_lse=True)
    assert rel_err(o, want[0]) < 1e-5 and rel_err(lse, want[1]) < 1e-5
    assert (np.asarray(o)[:10] == 0).all() and np.isneginf(np.asarray(lse)[:10]).all()


def test_sparse_prefill_fp8_kv():
    rng = np.random.default_rng(12)
    case = prefill_case([64], [400], hq=8, hkv=2, d=128, seed=12)
    k8 = quantize_fp8(rng, case.k.shape, 0.05)
    v8 = quantize_fp8(rng, case.v.shape, 0.05)
    ids = random_block_ids(rng, case.plan, 3)
    got = msa_jax.sparse_prefill(case.q, k8, v8, ids, case.plan, k_scale=0.05, v_scale=0.05)
    want = ref.sparse_prefill(case.q, k8, v8, ids, case.plan, k_scale=0.05, v_scale=0.05)
    assert rel_err(got, want) < 1e-2


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("topk", [2, 16])
def test_sparse_attention_layer(paged, topk):
    case = prefill_case([100, 3], [900, 250], hq=8, hkv=2, d=64, di=64, dtype=jnp.float32, paged=paged,
                        seed=topk)
    o, ids = msa_jax.sparse_attention(case.q, case.k, case.v, case.q_idx, case.k_idx, case.plan, topk=topk,
                                      sink_blocks=1, page_table=case.page_table, return_block_ids=True)
    o_ref, ids_ref = ref.sparse_attention(case.q, case.k, case.v, case.q_idx, case.k_idx, case.plan,
                                          topk=topk, sink_blocks=1, page_table=case.page_table,
                                          return_block_ids=True)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(ids_ref))
    assert rel_err(o, o_ref) < 1e-5
    if topk >= case.plan.num_blocks:  # every block chosen: dense attention
        assert rel_err(o, ref.attention(case.q, case.k, case.v, case.plan, page_table=case.page_table)) < 1e-5

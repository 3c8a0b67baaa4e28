"""msa_decode (dense and sparse paged decode) against the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref
from msa_cases import quantize_fp8, random, rel_err, to_paged

LENS = [1, 128, 300, 513, 257]


def _decode_case(hq, hkv, d, dtype, lens=LENS, ps=128, seed=0, capacity=640):
    rng = np.random.default_rng(seed)
    plan = msa_jax.plan_decode(len(lens), capacity, num_q_heads=hq, num_kv_heads=hkv, head_dim=d,
                               page_size=ps)
    k, pt = to_paged(random(rng, (sum(lens), hkv, d), dtype), lens, ps, np.random.default_rng(seed + 1))
    v, _ = to_paged(random(rng, (sum(lens), hkv, d), dtype), lens, ps, np.random.default_rng(seed + 1))
    pt = jnp.pad(pt, ((0, 0), (0, max(0, plan.max_pages - pt.shape[1]))), constant_values=-1)
    q = random(rng, (len(lens), hq, d), dtype)
    return plan, q, k, v, pt, jnp.asarray(lens, jnp.int32)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (16, 1)])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("sparse", [False, True])
def test_decode_matches_reference(hq, hkv, d, dtype, sparse):
    plan, q, k, v, pt, lens = _decode_case(hq, hkv, d, dtype, seed=hq + d)
    ids = None
    if sparse:
        rng = np.random.default_rng(d)
        ids = rng.integers(-1, plan.num_blocks + 2, size=(plan.batch_size, hkv, 3)).astype(np.int32)
        ids[:, :, 0] = (np.asarray(lens) - 1)[:, None] // plan.page_size   # the local block
        ids = jnp.asarray(ids)
    got = msa_jax.decode(q, k, v, pt, lens, plan, block_ids=ids, return_lse=True)
    want = ref.decode(q, k, v, pt, lens, plan, block_ids=ids, return_lse=True)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) < tol


def test_decode_lengths_are_runtime():
    """One compilation serves every length; kv_len 0 and lengths past capacity are safe."""
    plan, q, k, v, pt, _ = _decode_case(8, 2, 64, jnp.float32, seed=5)
    step = jax.jit(lambda q, k, v, pt, lens: msa_jax.decode(q, k, v, pt, lens, plan, return_lse=True))
    for lens in ([1, 1, 1, 1, 1], [0, 128, 129, 640, 3], [5, 99999, 256, 512, -4]):
        lens = jnp.asarray(lens, jnp.int32)
        got = step(q, k, v, pt, lens)
        want = ref.decode(q, k, v, pt, lens, plan, return_lse=True)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5
    assert step._cache_size() == 1
    o, lse = step(q, k, v, pt, jnp.asarray([0, 0, 0, 0, 0], jnp.int32))
    assert (np.asarray(o) == 0).all() and np.isneginf(np.asarray(lse)).all()


def test_decode_fp8_cache():
    plan, q, k, v, pt, lens = _decode_case(8, 2, 128, jnp.bfloat16, seed=7)
    rng = np.random.default_rng(7)
    k8 = quantize_fp8(rng, k.shape, 0.05)
    v8 = quantize_fp8(rng, v.shape, 0.05)
    got = msa_jax.decode(q, k8, v8, pt, lens, plan, k_scale=0.05, v_scale=0.05)
    want = ref.decode(q, k8, v8, pt, lens, plan, k_scale=0.05, v_scale=0.05)
    assert rel_err(got, want) < 1e-2

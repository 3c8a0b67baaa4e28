"""msa_append_paged: CPU against the reference, in place with donation; GPU test included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref
from msa_cases import random


def _case(cache_dtype, new_dtype, steps, seed=0):
    rng = np.random.default_rng(seed)
    num_pages, H, ps, D, B, P = 12, 4, 16, 64, 5, 4
    cache = random(rng, (num_pages, H, ps, D), jnp.float32).astype(cache_dtype)
    pt = np.full((B, P), -1, np.int32)
    perm = rng.permutation(num_pages)
    pt[:, :2] = perm[: 2 * B].reshape(B, 2)
    pt[4, 1] = 99                                      # out-of-range page id
    shape = (B, H, D) if steps is None else (B, steps, H, D)
    new = random(rng, shape, new_dtype)
    # first free slot, page boundary, negative (skipped), past the page table, bad page
    positions = jnp.asarray([0, 15, -1, P * ps - 1, 17], jnp.int32)
    return cache, new, jnp.asarray(pt), positions


@pytest.mark.parametrize("cache_dtype,new_dtype", [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.bfloat16),
                                                   (jnp.float16, jnp.float16),
                                                   (jnp.float8_e4m3fn, jnp.bfloat16)])
@pytest.mark.parametrize("steps", [None, 3])
def test_append_matches_reference(cache_dtype, new_dtype, steps):
    cache, new, pt, pos = _case(cache_dtype, new_dtype, steps)
    scale = 0.5 if cache_dtype == jnp.float8_e4m3fn else 1.0
    got = msa_jax.append_cache(cache, new, pt, pos, scale=scale)
    want = ref.append_cache(cache, new, pt, pos, scale=scale)
    assert got.dtype == cache.dtype
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))
    assert not np.array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(cache.astype(jnp.float32)))


def test_append_kv_in_place_when_donated():
    k, new, pt, pos = _case(jnp.bfloat16, jnp.bfloat16, None, seed=1)
    v = k + 1
    want = ref.append_kv(k, v, new, new, pt, pos)
    step = jax.jit(lambda k, v, n, pt, pos: msa_jax.append_kv(k, v, n, n, pt, pos), donate_argnums=(0, 1))
    k_ptr = k.unsafe_buffer_pointer()
    k2, v2 = step(k, v, new, pt, pos)
    assert k.is_deleted() and v.is_deleted()
    assert k2.unsafe_buffer_pointer() == k_ptr
    np.testing.assert_array_equal(np.asarray(k2), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(v2), np.asarray(want[1]))


def test_fp8_saturates_and_rounds_like_reference():
    cache = jnp.zeros((1, 1, 8, 8), jnp.float8_e4m3fn)
    vals = jnp.asarray([[[1e6, -1e6, 0.3, 447.9, 1.0625, 1.1875, -0.0, 1e-9]]], jnp.float32).transpose(0, 1, 2)
    new = jnp.broadcast_to(vals.reshape(1, 1, 8), (1, 1, 8))
    pt = jnp.zeros((1, 1), jnp.int32)
    pos = jnp.zeros((1,), jnp.int32)
    got = msa_jax.append_cache(cache, new, pt, pos)
    want = ref.append_cache(cache, new, pt, pos)
    row = np.asarray(got.astype(jnp.float32))[0, 0, 0]
    assert row[0] == 448 and row[1] == -448
    np.testing.assert_array_equal(row, np.asarray(want.astype(jnp.float32))[0, 0, 0])


@pytest.mark.gpu
@pytest.mark.parametrize("cache_dtype,new_dtype", [(jnp.bfloat16, jnp.bfloat16), (jnp.float16, jnp.float16),
                                                   (jnp.float32, jnp.float32),
                                                   (jnp.float8_e4m3fn, jnp.bfloat16)])
@pytest.mark.parametrize("steps", [None, 3])
def test_append_gpu_matches_reference(cache_dtype, new_dtype, steps):
    assert "msa_append_paged" in msa_jax.cuda_kernels()
    cache, new, pt, pos = _case(cache_dtype, new_dtype, steps, seed=3)
    assert cache.devices() == {jax.devices("gpu")[0]}
    scale = 0.25 if cache_dtype == jnp.float8_e4m3fn else 1.0
    want = jax.device_get(ref.append_cache(cache, new, pt, pos, scale=scale).astype(jnp.float32))
    step = jax.jit(lambda c, n, pt, pos: msa_jax.append_cache(c, n, pt, pos, scale=scale), donate_argnums=0)
    got = step(cache, new, pt, pos)
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), want)

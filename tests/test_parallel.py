"""msa_jax.parallel: shard_map prefill / decode on 8 virtual CPU devices == one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msa_jax import parallel
from msa_jax.nn import MSAAttention
from msa_cases import rel_err

HIDDEN, HQ, HKV, D, DI, BS = 64, 8, 4, 64, 32, 16
LENS = [37, 20, 50, 9, 16, 41, 3, 28]
MAX_LEN = 64


@pytest.fixture(scope="module")
def single():
    """Single-device prefill + two decode steps (the oracle), computed once."""
    m = MSAAttention(HIDDEN, HQ, HKV, D, index_dim=DI, topk=2, block_size=BS, rotary_dim=32,
                     sink_blocks=1, rngs=nnx.Rngs(0))
    plan = m.plan_prefill(LENS)
    x = jax.random.normal(jax.random.key(1), (plan.total_q, HIDDEN), jnp.float32)
    xd = jax.random.normal(jax.random.key(2), (2, len(LENS), HIDDEN), jnp.float32)
    cache = m.init_cache(len(LENS), MAX_LEN)
    y, cache = jax.jit(lambda x, c: m(x, plan, c))(x, cache)
    dplan = m.plan_decode(len(LENS), MAX_LEN)
    step = jax.jit(lambda x, c: m.decode(x, c, dplan))
    outs = []
    for t in range(2):
        o, cache = step(xd[t], cache)
        outs.append(o)
    return m, plan, dplan, x, xd, y, outs, cache


def _devices():
    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    return devices


@pytest.mark.parametrize("dp,tp", [(2, 4), (8, 1)])
def test_sharded_prefill_and_decode_match_single_device(single, dp, tp):
    m, plan, dplan, x, xd, y, outs, cache1 = single
    mesh = parallel.make_mesh(dp, tp, _devices())
    graphdef, state = parallel.shard_module(m, mesh)
    assert state["wq"][...].sharding.spec == jax.sharding.PartitionSpec(None, "tp", None)
    caches = parallel.init_cache(m, mesh, len(LENS), MAX_LEN)
    assert caches.k.shape[0] == len(LENS) * (MAX_LEN // BS)
    pre = parallel.prefill(m, mesh, plan, caches)
    got, caches = pre(state, x, caches)
    assert rel_err(got, y) < 1e-5
    np.testing.assert_array_equal(np.asarray(caches.kv_lens), LENS)

    step = parallel.decode_step(m, mesh, dplan, caches)
    hlo = step.lower(state, xd[0], caches).compile().as_text()
    assert "all-gather" not in hlo
    assert tp == 1 or "all-reduce" in hlo          # the psum of the output projection
    for t in range(2):
        o, caches = step(state, xd[t], caches)
        assert rel_err(o, outs[t]) < 1e-5
    np.testing.assert_array_equal(np.asarray(caches.kv_lens), np.asarray(cache1.kv_lens))
    # same physical page layout as one device: the valid tokens agree
    pt = np.asarray(cache1.page_table)
    for b, n in enumerate(np.asarray(cache1.kv_lens)):
        j = np.arange(n)
        np.testing.assert_allclose(np.asarray(caches.k)[pt[b, j // BS], :, j % BS],
                                   np.asarray(cache1.k)[pt[b, j // BS], :, j % BS], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(caches.index_k)[pt[b, j // BS], 0, j % BS],
                                   np.asarray(cache1.index_k)[pt[b, j // BS], 0, j % BS], rtol=1e-6, atol=1e-6)


def test_sharded_prefill_without_cache_and_specs(single):
    m, plan, _, x, _, y, _, _ = single
    mesh = parallel.make_mesh(2, 4, _devices())
    graphdef, state = parallel.shard_module(m, mesh)
    got = parallel.prefill(m, mesh, plan)(state, x)
    assert rel_err(got, y) < 1e-5
    specs = parallel.param_specs(nnx.state(m))
    P = jax.sharding.PartitionSpec
    assert specs["wo"].get_value() == P("tp", None, None) and specs["wk_idx"].get_value() == P()
    cs = parallel.cache_specs(m.init_cache(8, 32))
    assert cs.k == P("dp", "tp") and cs.index_k == P("dp") and cs.page_table == P("dp")
    np.testing.assert_array_equal(parallel.local_page_table(4, 32, 16, 2),
                                  [[0, 1], [2, 3], [0, 1], [2, 3]])

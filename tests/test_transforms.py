"""Every op under jit and vmap; decode under shard_map on 8 (virtual CPU) devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import msa_jax
from msa_jax import reference as ref
from msa_cases import prefill_case, random, rel_err, to_paged


def test_jit_whole_pipeline_with_static_plan():
    case = prefill_case([40, 9], [300, 150], hq=8, hkv=2, d=64, dtype=jnp.float32, seed=1)

    @functools.partial(jax.jit, static_argnames=("plan", "topk"))
    def layer(q, k, v, qi, ki, plan, topk):
        return msa_jax.sparse_attention(q, k, v, qi, ki, plan, topk=topk)

    got = layer(case.q, case.k, case.v, case.q_idx, case.k_idx, plan=case.plan, topk=2)
    want = ref.sparse_attention(case.q, case.k, case.v, case.q_idx, case.k_idx, case.plan, topk=2)
    assert rel_err(got, want) < 1e-5
    hlo = layer.lower(case.q, case.k, case.v, case.q_idx, case.k_idx, plan=case.plan, topk=2).as_text()
    for target in ("msa_block_scores", "msa_topk_select", "msa_sparse_prefill"):
        assert target in hlo


def test_vmap_over_independent_batches():
    cases = [prefill_case([20, 5], [150, 130], hq=4, hkv=2, d=64, dtype=jnp.float32, seed=s) for s in (1, 2, 3)]
    plan = cases[0].plan
    stack = lambda name: jnp.stack([getattr(c, name) for c in cases])
    q, k, v, qi, ki = (stack(n) for n in ("q", "k", "v", "q_idx", "k_idx"))
    o = jax.vmap(lambda q, k, v: msa_jax.attention(q, k, v, plan))(q, k, v)
    s = jax.vmap(lambda qi, ki: msa_jax.block_scores(qi, ki, plan))(qi, ki)
    ids = jax.vmap(lambda s: msa_jax.topk_select(s, 2, plan))(s)
    sp = jax.vmap(lambda q, k, v, i: msa_jax.sparse_prefill(q, k, v, i, plan))(q, k, v, ids)
    for i, c in enumerate(cases):
        assert rel_err(o[i], ref.attention(c.q, c.k, c.v, plan)) < 1e-5
        s_ref = ref.block_scores(c.q_idx, c.k_idx, plan)
        assert rel_err(s[i], s_ref) < 1e-5
        np.testing.assert_array_equal(np.asarray(ids[i]), np.asarray(ref.topk_select(s_ref, 2, plan)))
        assert rel_err(sp[i], ref.sparse_prefill(c.q, c.k, c.v, ids[i], plan)) < 1e-5


def test_vmap_decode_and_append():
    rng = np.random.default_rng(0)
    plan = msa_jax.plan_decode(2, 256, num_q_heads=4, num_kv_heads=2, head_dim=64, page_size=64)
    caches = [to_paged(random(rng, (200, 2, 64), jnp.float32), [120, 80], 64, rng) for _ in range(3)]
    kc = jnp.stack([c[0] for c in caches])
    pts = jnp.stack([jnp.pad(c[1], ((0, 0), (0, 4 - c[1].shape[1])), constant_values=-1) for c in caches])
    q = random(rng, (3, 2, 4, 64), jnp.float32)
    lens = jnp.asarray([[120, 80], [1, 64], [65, 0]], jnp.int32)
    o = jax.vmap(lambda q, k, pt, l: msa_jax.decode(q, k, k, pt, l, plan))(q, kc, pts, lens)
    new = random(rng, (3, 2, 2, 64), jnp.float32)
    kc2 = jax.vmap(lambda c, n, pt, l: msa_jax.append_cache(c, n, pt, l))(kc, new, pts, lens)
    for i in range(3):
        assert rel_err(o[i], ref.decode(q[i], kc[i], kc[i], pts[i], lens[i], plan)) < 1e-5
        np.testing.assert_array_equal(np.asarray(kc2[i]),
                                      np.asarray(ref.append_cache(kc[i], new[i], pts[i], lens[i])))


def test_shard_map_decode_8_devices():
    """Requests over a data axis (2) and KV heads over a tensor axis (4): no communication."""
    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = Mesh(np.array(devices[:8]).reshape(2, 4), ("dp", "tp"))
    rng = np.random.default_rng(0)
    B, Hq, Hkv, D, ps = 4, 16, 4, 64, 64
    lens = [70, 200, 1, 128]
    k, pt = to_paged(random(rng, (sum(lens), Hkv, D), jnp.float32), lens, ps, rng)
    v = random(rng, k.shape, jnp.float32)
    q = random(rng, (B, Hq, D), jnp.float32)
    kv_lens = jnp.asarray(lens, jnp.int32)
    full = msa_jax.plan_decode(B, 256, num_q_heads=Hq, num_kv_heads=Hkv, head_dim=D, page_size=ps)
    local = msa_jax.plan_decode(B // 2, 256, num_q_heads=Hq // 4, num_kv_heads=Hkv // 4, head_dim=D,
                                page_size=ps)

    @jax.jit
    @functools.partial(jax.shard_map, mesh=mesh,
                       in_specs=(P("dp", "tp"), P(None, "tp"), P(None, "tp"), P("dp"), P("dp")),
                       out_specs=P("dp", "tp"))
    def step(q, k, v, pt, lens):
        return msa_jax.decode(q, k, v, pt, lens, local)

    got = step(q, k, v, pt, kv_lens)
    want = ref.decode(q, k, v, pt, kv_lens, full)
    assert rel_err(got, want) < 1e-5
    assert "all-gather" not in step.lower(q, k, v, pt, kv_lens).compile().as_text()

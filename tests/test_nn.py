"""msa_jax.nn.MSAAttention: prefill vs the reference, cache writes, decode, fp8 cache, dense fallback."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import msa_jax
from msa_jax import reference as ref
from msa_jax.nn import MSAAttention, apply_rotary
from msa_cases import rel_err

HIDDEN, HQ, HKV, D, DI, BS = 64, 8, 2, 64, 32, 16


def make(**kw):
    cfg = dict(index_dim=DI, topk=3, block_size=BS, rotary_dim=32, sink_blocks=1)
    cfg.update(kw)
    return MSAAttention(HIDDEN, HQ, HKV, D, rngs=nnx.Rngs(kw.pop("seed", 0)), **cfg)


def tokens(n, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, HIDDEN), jnp.float32)


def positions(plan):
    return np.concatenate([kv - q + np.arange(q) for q, kv in zip(plan.qo_lens, plan.kv_lens)])


def prefill(m, x, plan, cache=None):
    """The module's prefill, jitted (eager op-by-op dispatch is slow on a CPU)."""
    if cache is None:
        return jax.jit(lambda x: m(x, plan))(x)
    return jax.jit(lambda x, c: m(x, plan, c))(x, cache)


def decode(m, x, cache, max_len):
    return jax.jit(lambda x, c: m.decode(x, c, m.plan_decode(x.shape[0], max_len)))(x, cache)


ref_sparse = jax.jit(ref.sparse_attention, static_argnames=("plan", "topk", "local_blocks", "sink_blocks"))
ref_dense = jax.jit(ref.attention, static_argnames=("plan",))


def projections(m, x, pos):
    return jax.jit(lambda x: _projections(m, x, pos))(x)


def _projections(m, x, pos):
    """The module's tensors, computed here from its parameters."""
    def rms(t, s):
        return t * jax.lax.rsqrt(jnp.mean(t * t, -1, keepdims=True) + 1e-6) * s[...]
    rot = lambda t: apply_rotary(t, pos, m.rotary_dim)
    q = rot(jnp.einsum("th,hnd->tnd", x, m.wq[...]))
    k = rot(jnp.einsum("th,hnd->tnd", x, m.wk[...]))
    v = jnp.einsum("th,hnd->tnd", x, m.wv[...])
    if m.dense:
        return q, k, v, None, None
    qi = rot(rms(jnp.einsum("th,hnd->tnd", x, m.wq_idx[...]), m.q_idx_norm))
    ki = rot(rms(jnp.einsum("th,hd->td", x, m.wk_idx[...]), m.k_idx_norm))
    return q, k, v, qi, ki


@jax.jit
def _out(o, wo):
    return jnp.einsum("tnd,ndh->th", o, wo)


def out_proj(m, o):
    return _out(o, m.wo[...])


def test_rotary_is_relative():
    q = jax.random.normal(jax.random.key(0), (1, 1, 64))
    k = jax.random.normal(jax.random.key(1), (1, 1, 64))
    dot = lambda p, s: float(jnp.sum(apply_rotary(q, jnp.array([p]), 32) * apply_rotary(k, jnp.array([s]), 32)))
    assert abs(dot(7, 3) - dot(104, 100)) < 1e-4
    assert abs(dot(7, 3) - dot(3, 7)) > 1e-3
    np.testing.assert_allclose(apply_rotary(q, jnp.array([5]), 32)[..., 32:], q[..., 32:])


def test_prefill_matches_reference():
    m = make()
    plan = m.plan_prefill([70, 33, 5])
    x = tokens(plan.total_q)
    got = prefill(m, x, plan)
    q, k, v, qi, ki = projections(m, x, positions(plan))
    want = out_proj(m, ref_sparse(q, k, v, qi, ki, plan=plan, topk=3, sink_blocks=1))
    assert rel_err(got, want) < 1e-5
    # sparse really is sparse here: dense attention differs
    assert rel_err(out_proj(m, ref_dense(q, k, v, plan=plan)), want) > 1e-3


def test_prefill_writes_cache_and_chunked_prefill():
    m = make()
    lens = [70, 33]
    plan = m.plan_prefill(lens)
    x = tokens(plan.total_q)
    y0 = prefill(m, x, plan)
    cache = m.init_cache(2, 96)
    y, cache = prefill(m, x, plan, cache)
    assert rel_err(y, y0) < 1e-6
    np.testing.assert_array_equal(np.asarray(cache.kv_lens), lens)
    _, k, _, _, ki = projections(m, x, positions(plan))
    # gather request 1's keys back out of its pages
    pt = np.asarray(cache.page_table)
    j = np.arange(33)
    got_k = np.asarray(cache.k)[pt[1, j // BS], :, j % BS]
    np.testing.assert_allclose(got_k, np.asarray(k[70:]), rtol=1e-6, atol=1e-6)
    got_ki = np.asarray(cache.index_k)[pt[1, j // BS], 0, j % BS]
    np.testing.assert_allclose(got_ki, np.asarray(ki[70:]), rtol=1e-6, atol=1e-6)

    # chunked: the first 40 / 20 tokens, then the rest through a paged plan over the cache
    first, rest = [40, 20], [30, 13]
    idx0 = np.r_[0:40, 70:90]
    idx1 = np.r_[40:70, 90:103]
    c2 = m.init_cache(2, 96)
    _, c2 = prefill(m, x[idx0], m.plan_prefill(first), c2)
    y1, c2 = prefill(m, x[idx1], m.plan_prefill(rest, lens, paged=True), c2)
    assert rel_err(y1, y0[idx1]) < 1e-5
    np.testing.assert_array_equal(np.asarray(c2.kv_lens), lens)


@pytest.mark.parametrize("topk", [6, 2])
def test_decode_after_prefill_matches_longer_prefill(topk):
    """Prefill L tokens, decode token L+1 == the last row of a prefill of L+1 tokens.

    topk=6 covers every block of the 96-token cache; topk=2 selects (the same blocks as the
    prefill's last row: same scores, same visible length)."""
    m = make(topk=topk)
    lens = [40, 23, 64]
    longer = [n + 1 for n in lens]
    plan_long = m.plan_prefill(longer)
    x = tokens(plan_long.total_q)
    ends = np.cumsum(longer) - 1
    prompt = np.setdiff1d(np.arange(plan_long.total_q), ends)
    cache = m.init_cache(3, 96)
    _, cache = prefill(m, x[prompt], m.plan_prefill(lens), cache)

    step = jax.jit(lambda x, c: m.decode(x, c, m.plan_decode(3, 96)), donate_argnums=1)
    out, cache = step(x[ends], cache)
    want = prefill(m, x, plan_long)[ends]
    assert rel_err(out, want) < 1e-5
    np.testing.assert_array_equal(np.asarray(cache.kv_lens), longer)


def test_decode_steps_jitted_with_donated_cache():
    m = make(topk=2, local_blocks=1, sink_blocks=0)
    cache = m.init_cache(2, 64)
    plan = m.plan_decode(2, 64)
    step = jax.jit(lambda x, c: m.decode(x, c, plan), donate_argnums=1)
    xs = tokens(2 * 20).reshape(20, 2, HIDDEN)
    outs = []
    for t in range(20):
        o, cache = step(xs[t], cache)
        outs.append(o)
    np.testing.assert_array_equal(np.asarray(cache.kv_lens), [20, 20])
    # the same 20 tokens as one prefill
    seq = jnp.concatenate([xs[:, 0], xs[:, 1]])
    want = prefill(m, seq, m.plan_prefill([20, 20]))
    got = jnp.concatenate([jnp.stack(outs)[:, 0], jnp.stack(outs)[:, 1]])
    assert rel_err(got, want) < 1e-5


def test_fp8_cache_runs_and_is_close():
    kw = dict(topk=6)
    m32 = make(**kw)
    m8 = make(cache_dtype=jnp.float8_e4m3fn, k_scale=0.05, v_scale=0.05, index_k_scale=0.02, **kw)
    lens = [40, 23]
    plan = m32.plan_prefill(lens)
    x = tokens(plan.total_q)
    xd = tokens(2, seed=5)
    outs = []
    for m in (m32, m8):
        cache = m.init_cache(2, 64)
        _, cache = prefill(m, x, plan, cache)
        assert cache.k.dtype == m.init_cache(1, 16).k.dtype
        o, cache = decode(m, xd, cache, 64)
        outs.append(o)
    assert m8.init_cache(1, 16).k.dtype == jnp.float8_e4m3fn
    assert bool(jnp.all(jnp.isfinite(outs[1])))
    assert rel_err(outs[1], outs[0]) < 0.1

    # bf16 cache with float32 compute: q is cast to the cache dtype
    mb = make(cache_dtype=jnp.bfloat16, **kw)
    cache = mb.init_cache(2, 64)
    _, cache = prefill(mb, x, plan, cache)
    o, _ = decode(mb, xd, cache, 64)
    assert o.dtype == jnp.float32 and rel_err(o, outs[0]) < 0.05


def test_dense_fallback():
    m = make(dense=True)
    sparse = make()
    names = {str(p[0]) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(m))}
    assert not any("idx" in n for n in names)
    np.testing.assert_array_equal(np.asarray(m.wq[...]), np.asarray(sparse.wq[...]))  # same key, same q/k/v/o
    plan = m.plan_prefill([50, 17])
    x = tokens(plan.total_q)
    q, k, v, _, _ = projections(m, x, positions(plan))
    y = prefill(m, x, plan)
    assert rel_err(y, out_proj(m, ref_dense(q, k, v, plan=plan))) < 1e-5

    cache = m.init_cache(2, 64)
    assert cache.index_k is None
    ends = np.array([49, 66])
    prompt = np.setdiff1d(np.arange(67), ends)
    _, cache = prefill(m, x[prompt], m.plan_prefill([49, 16]), cache)
    o, cache = decode(m, x[ends], cache, 64)
    assert rel_err(o, y[ends]) < 1e-5


def test_given_page_table_and_errors():
    m = make()
    pt = np.array([[5, 2, 7, -1], [0, 3, 1, 6]], np.int32)
    cache = m.init_cache(2, 64, page_table=pt, num_pages=9)
    assert cache.k.shape == (9, HKV, BS, D) and cache.index_k.shape == (9, 1, BS, DI)
    plan = m.plan_prefill([45, 60])
    x = tokens(plan.total_q)
    y, cache = prefill(m, x, plan, cache)
    assert rel_err(y, m(x, plan)) < 1e-6
    o, _ = decode(m, tokens(2), cache, 64)
    assert bool(jnp.all(jnp.isfinite(o)))
    with pytest.raises(ValueError, match="block_size"):
        m(x, msa_jax.plan_prefill([45, 60], [45, 60], num_q_heads=HQ, num_kv_heads=HKV, head_dim=D))
    with pytest.raises(ValueError, match="qo_lens == kv_lens"):
        m(x, m.plan_prefill([45, 60], [50, 60]))

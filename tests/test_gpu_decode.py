"""msa_decode on the GPU (dense and sparse paged decode) against msa_jax.reference.decode.

Every output element is compared: the -inf pattern of lse exactly (rel_err), the finite
entries to 1e-2 relative by norm (bf16 / fp16 / fp8 inputs, f32 accumulation). The
reference runs on the same device and inputs, with f32 matmuls at full precision.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref
from msa_cases import quantize_fp8, random, rel_err, to_paged

pytestmark = pytest.mark.gpu

TOL = 1e-2
FP8 = jnp.float8_e4m3fn
# 0 (empty request), around one page, and a long one; shuffled pages, -1 padding.
LENS = [1, 127, 128, 129, 5000, 0]


@pytest.fixture(autouse=True)
def _needs_kernel():
    if "msa_decode" not in msa_jax.cuda_kernels():
        pytest.skip("this build has no CUDA msa_decode")


def _case(lens, *, hq, hkv, d, dtype=jnp.bfloat16, cache=None, ps=128, seed=0, capacity=None):
    """(plan, q, k, v, page_table, lens, k_scale, v_scale); cache None = q's dtype, or FP8."""
    rng = np.random.default_rng(seed)
    capacity = capacity or max(max(lens), 1)
    plan = msa_jax.plan_decode(len(lens), capacity, num_q_heads=hq, num_kv_heads=hkv, head_dim=d, page_size=ps)
    k, pt = to_paged(random(rng, (sum(lens), hkv, d), dtype), lens, ps, np.random.default_rng(seed + 1))
    v, _ = to_paged(random(rng, (sum(lens), hkv, d), dtype), lens, ps, np.random.default_rng(seed + 1))
    pt = jnp.pad(pt, ((0, 0), (0, max(0, plan.max_pages - pt.shape[1]))), constant_values=-1)
    q = random(rng, (len(lens), hq, d), dtype)
    ks = vs = 1.0
    if cache is not None and jnp.dtype(cache) == jnp.dtype(FP8):
        ks, vs = 0.05, 0.03
        k = quantize_fp8(rng, k.shape, ks)
        v = quantize_fp8(rng, v.shape, vs)
    return plan, q, k, v, pt, jnp.asarray(lens, jnp.int32), ks, vs


def _sparse_ids(rng, plan, lens, k, pt_cols):
    """[B, Hkv, k]: the local block, random blocks, repeats, -1, past-the-length and past-P ids."""
    B, hkv = plan.batch_size, plan.num_kv_heads
    nb = pt_cols
    ids = rng.integers(0, nb, size=(B, hkv, k)).astype(np.int32)
    u = rng.random(ids.shape)
    ids[u < 0.15] = -1
    ids[(u >= 0.15) & (u < 0.2)] = nb + 3
    ids[(u >= 0.2) & (u < 0.23)] = -7
    last = np.maximum(np.asarray(lens) - 1, 0) // plan.page_size
    ids[:, :, 0] = last[:, None]                       # the local block
    if k > 2:
        ids[:, :, 1] = last[:, None]                   # a repeat of it
    if k > 3:
        ids[:, :, 2] = 0
        ids[:, :, 3] = 0                               # repeated block 0
    return jnp.asarray(ids)


def _ref(q, k, v, pt, lens, plan, **kw):
    with jax.default_matmul_precision("highest"):
        return ref.decode(q, k, v, pt, lens, plan, return_lse=True, **kw)


def _check(got, want, tol=TOL):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert not np.isnan(np.asarray(g.astype(jnp.float32))).any(), "NaN in the kernel output"
        err = rel_err(g, w)
        assert err < tol, f"relative error {err:.3e} >= {tol}"


def _on_gpu(*xs):
    dev = jax.devices("gpu")[0]
    return [None if x is None else jax.device_put(x, dev) for x in xs]


@pytest.mark.parametrize("hq,hkv", [(4, 4), (16, 4), (32, 2), (32, 1)])   # G = 1, 4, 16, 32
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("cache", [None, FP8])
@pytest.mark.parametrize("sparse", [False, True])
def test_gpu_decode_matches_reference(hq, hkv, d, dtype, cache, sparse):
    plan, q, k, v, pt, lens, ks, vs = _case(LENS, hq=hq, hkv=hkv, d=d, dtype=dtype, cache=cache, seed=hq + d)
    ids = _sparse_ids(np.random.default_rng(d), plan, LENS, 12, pt.shape[1]) if sparse else None
    q, k, v, pt, lens, ids = _on_gpu(q, k, v, pt, lens, ids)
    kw = dict(block_ids=ids, k_scale=ks, v_scale=vs)
    got = msa_jax.decode(q, k, v, pt, lens, plan, return_lse=True, **kw)
    _check(got, _ref(q, k, v, pt, lens, plan, **kw))
    o, lse = (np.asarray(x) for x in got)
    assert (o[LENS.index(0)].astype(np.float32) == 0).all() and np.isneginf(lse[LENS.index(0)]).all()


@pytest.mark.parametrize("ps", [16, 48, 64, 256])   # 48: pages not a multiple of the 16-key groups
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("cache", [None, FP8])
def test_gpu_decode_page_sizes(ps, sparse, cache):
    lens = [1, ps - 1, ps, ps + 1, 3 * ps, 2000, 0, 777]
    plan, q, k, v, pt, lens_a, ks, vs = _case(lens, hq=16, hkv=2, d=128, cache=cache, ps=ps, seed=ps)
    ids = _sparse_ids(np.random.default_rng(ps), plan, lens, 9, pt.shape[1]) if sparse else None
    q, k, v, pt, lens_a, ids = _on_gpu(q, k, v, pt, lens_a, ids)
    kw = dict(block_ids=ids, k_scale=ks, v_scale=vs)
    got = msa_jax.decode(q, k, v, pt, lens_a, plan, return_lse=True, **kw)
    _check(got, _ref(q, k, v, pt, lens_a, plan, **kw))


@pytest.mark.parametrize("sparse", [False, True])
def test_gpu_decode_single_split(sparse):
    """Tiny capacity (<= 4 pages) and few slots: num_splits == 1, o / lse written directly."""
    lens = [1, 100, 256, 384, 0]                      # page table: 3 + 1 columns
    plan, q, k, v, pt, lens_a, ks, vs = _case(lens, hq=16, hkv=4, d=128, seed=3)
    assert importlib.import_module("msa_jax.decode").decode_num_splits(5, 4, pt.shape[1], 4 if sparse else 0) == 1
    ids = _sparse_ids(np.random.default_rng(3), plan, lens, 4, pt.shape[1]) if sparse else None
    q, k, v, pt, lens_a, ids = _on_gpu(q, k, v, pt, lens_a, ids)
    got = msa_jax.decode(q, k, v, pt, lens_a, plan, block_ids=ids, return_lse=True)
    _check(got, _ref(q, k, v, pt, lens_a, plan, block_ids=ids))


@pytest.mark.parametrize("cache", [None, FP8])
def test_gpu_decode_large_group_batch(cache):
    """64 q heads / 4 kv heads (G = 16), D = 128: the tuned shape, requests of very different lengths."""
    lens = [32768, 20000, 4097, 1, 129, 0]
    plan, q, k, v, pt, lens_a, ks, vs = _case(lens, hq=64, hkv=4, d=128, cache=cache, seed=11)
    q, k, v, pt, lens_a = _on_gpu(q, k, v, pt, lens_a)
    kw = dict(k_scale=ks, v_scale=vs)
    got = msa_jax.decode(q, k, v, pt, lens_a, plan, return_lse=True, **kw)
    _check(got, _ref(q, k, v, pt, lens_a, plan, **kw))


def test_gpu_decode_million_tokens():
    """One request of 2^20 tokens = 8192 pages of 128 (shuffled), dense; rerun bitwise equal."""
    ps, n = 128, 1 << 20
    pages = n // ps
    rng = np.random.default_rng(42)
    hq, hkv, d = 4, 1, 128
    num_pages = pages + 5
    plan = msa_jax.plan_decode(1, n, num_q_heads=hq, num_kv_heads=hkv, head_dim=d, page_size=ps)
    dev = jax.devices("gpu")[0]
    key = jax.random.split(jax.random.key(0), 3)
    with jax.default_device(dev):
        k = jax.random.normal(key[0], (num_pages, hkv, ps, d), jnp.bfloat16)
        v = jax.random.normal(key[1], (num_pages, hkv, ps, d), jnp.bfloat16)
        q = jax.random.normal(key[2], (1, hq, d), jnp.bfloat16) * 3.0     # peaky softmax
        pt = jnp.asarray(rng.permutation(num_pages)[:pages].astype(np.int32)[None, :])
        for L in (n, n - 77):
            lens = jnp.asarray([L], jnp.int32)
            got = msa_jax.decode(q, k, v, pt, lens, plan, return_lse=True)
            _check(got, _ref(q, k, v, pt, lens, plan))
            again = msa_jax.decode(q, k, v, pt, lens, plan, return_lse=True)
            for a, b in zip(got, again):
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("sparse", [False, True])
def test_gpu_decode_lengths_are_runtime(sparse):
    """One compilation for every kv_lens; 0, page boundaries, past capacity and negative lengths."""
    lens0 = [640, 640, 640, 640, 640]
    plan, q, k, v, pt, _, _, _ = _case(lens0, hq=16, hkv=2, d=128, seed=5, capacity=1000)
    ids = _sparse_ids(np.random.default_rng(5), plan, lens0, 6, pt.shape[1]) if sparse else None
    q, k, v, pt, ids = _on_gpu(q, k, v, pt, ids)
    step = jax.jit(lambda q, k, v, pt, lens, ids: msa_jax.decode(q, k, v, pt, lens, plan, block_ids=ids,
                                                                 return_lse=True))
    for lens in ([1, 1, 1, 1, 1], [0, 128, 129, 640, 3], [5, 99999, 256, 512, -4], [127, 255, 257, 383, 384],
                 [0, 0, 0, 0, 0]):
        lens = jax.device_put(jnp.asarray(lens, jnp.int32), jax.devices("gpu")[0])
        got = step(q, k, v, pt, lens, ids)
        _check(got, _ref(q, k, v, pt, lens, plan, block_ids=ids))
    assert step._cache_size() == 1
    o, lse = step(q, k, v, pt, jnp.zeros((5,), jnp.int32), ids)
    assert (np.asarray(o.astype(jnp.float32)) == 0).all() and np.isneginf(np.asarray(lse)).all()


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("cache", [None, FP8])
def test_gpu_decode_bitwise_deterministic(sparse, cache):
    lens = [5000, 1, 0, 3333, 129]
    plan, q, k, v, pt, lens_a, ks, vs = _case(lens, hq=16, hkv=4, d=128, cache=cache, seed=9)
    ids = _sparse_ids(np.random.default_rng(9), plan, lens, 16, pt.shape[1]) if sparse else None
    q, k, v, pt, lens_a, ids = _on_gpu(q, k, v, pt, lens_a, ids)
    step = jax.jit(lambda *a: msa_jax.decode(*a, plan, block_ids=ids, k_scale=ks, v_scale=vs, return_lse=True))
    first = [np.asarray(x) for x in step(q, k, v, pt, lens_a)]
    assert not any(np.isnan(x.astype(np.float32)).any() for x in first), "NaN (poison) left in an output"
    first = [x.tobytes() for x in first]
    for _ in range(3):
        assert [np.asarray(x).tobytes() for x in step(q, k, v, pt, lens_a)] == first


def test_gpu_decode_bad_page_ids_are_skipped():
    """Out-of-range page ids in the table (dense and sparse): tokens skipped, never read."""
    lens = [300, 1000, 64]
    plan, q, k, v, pt, lens_a, _, _ = _case(lens, hq=8, hkv=2, d=64, seed=13)
    pt = np.asarray(pt).copy()
    pt[0, 1] = 10 ** 6
    pt[1, 3] = -5
    pt[1, 5] = k.shape[0]
    pt = jnp.asarray(pt)
    ids = _sparse_ids(np.random.default_rng(13), plan, lens, 8, pt.shape[1])
    q, k, v, pt, lens_a, ids = _on_gpu(q, k, v, pt, lens_a, ids)
    for block_ids in (None, ids):
        got = msa_jax.decode(q, k, v, pt, lens_a, plan, block_ids=block_ids, return_lse=True)
        _check(got, _ref(q, k, v, pt, lens_a, plan, block_ids=block_ids))


@pytest.mark.parametrize("sparse", [False, True])
def test_gpu_decode_fp8_nan_outside_the_sequence_is_never_read(sparse):
    """fp8 NaN bytes on the rows past each length (last page) and on unused pages: those rows
    are zero-filled, never multiplied in (the sm_90a build reads a NaN byte as NaN, see
    docs/ffi-contract.md), so the result is bitwise the one with zeros there."""
    lens = [1, 100, 128, 129, 1000, 0]
    plan, q, k, v, pt, lens_a, ks, vs = _case(lens, hq=16, hkv=2, d=128, cache=FP8, seed=21)
    ps, ptn = plan.page_size, np.asarray(pt)
    used = np.zeros(k.shape[0], bool)
    bad = np.zeros(k.shape[:3], bool)  # [num_pages, Hkv, page_size]: rows outside every sequence
    for b, n in enumerate(lens):
        nblk = -(-n // ps)
        used[ptn[b, :nblk]] = True
        if n % ps:
            bad[ptn[b, nblk - 1], :, n % ps:] = True
    bad[~used] = True

    def fill(x, byte):
        u = np.asarray(x).view(np.uint8).copy()
        u[bad] = byte
        return jnp.asarray(u.view(np.asarray(x).dtype))

    ids = _sparse_ids(np.random.default_rng(21), plan, lens, 8, pt.shape[1]) if sparse else None
    q, pt, lens_a, ids = _on_gpu(q, pt, lens_a, ids)
    kw = dict(block_ids=ids, k_scale=ks, v_scale=vs)
    k_nan, v_nan, k0, v0 = _on_gpu(fill(k, 0x7F), fill(v, 0xFF), fill(k, 0), fill(v, 0))
    got = msa_jax.decode(q, k_nan, v_nan, pt, lens_a, plan, return_lse=True, **kw)
    zero = msa_jax.decode(q, k0, v0, pt, lens_a, plan, return_lse=True, **kw)
    _check(got, _ref(q, k0, v0, pt, lens_a, plan, **kw))
    assert [np.asarray(x).tobytes() for x in got] == [np.asarray(x).tobytes() for x in zero]


def test_gpu_decode_float32_query_is_rejected():
    plan, q, k, v, pt, lens, _, _ = _case([10, 20], hq=4, hkv=2, d=64, dtype=jnp.float32, seed=1)
    q, k, v, pt, lens = _on_gpu(q, k, v, pt, lens)
    with pytest.raises(Exception, match="float16"):
        jax.block_until_ready(msa_jax.decode(q, k, v, pt, lens, plan))


def test_decode_split_rules_mirror_the_launcher():
    """msa_jax/decode.py mirrors cuda/decode/decode.h (values computed from the C++ rule)."""
    mod = importlib.import_module("msa_jax.decode")
    ns, sb = mod.decode_num_splits, mod.decode_scratch_bytes
    assert ns(32, 4, 256, 0) == 8           # B=32 x 32K, 4 kv heads
    assert ns(8, 4, 1024, 0) == 32          # B=8 x 128K
    assert ns(8, 4, 256, 0) == 16           # B=8 x 32K: >= 16 pages per split
    assert ns(1, 1, 8192, 0) == 512         # 1M tokens: 16 pages per split
    assert ns(1, 1, 2 * 10 ** 6, 0) == 1954  # >= ceil(P / 1024) always
    assert ns(5, 4, 4, 0) == 1 and ns(5, 4, 0, 0) == 1
    assert ns(32, 4, 256, 16) == 4 and ns(2, 1, 8, 3) == 1
    assert sb(2, 8, 128, 1) == 0
    assert sb(2, 8, 128, 3) == 256 + 2 * 8 * 3 * 128 * 4

"""msa_attention (dense / paged prefill) on the GPU against the reference.

Every output element is compared: o to 1e-2 relative by norm, lse and the
block maxima the same way plus their exact -inf pattern (msa_cases.rel_err),
so an element the kernel failed to write shows up as a mismatch.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import msa_jax  # noqa: E402
from msa_jax import reference  # noqa: E402

from msa_cases import cpu_device, gpu_device, prefill_case, quantize_fp8, rel_err, to_paged  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = 1e-2


def _put(x, dev):
    return None if x is None else jax.device_put(x, dev)


def _run(q, k, v, plan, page_table=None, **kw):
    """(GPU outputs, reference outputs), both as tuples of numpy arrays."""
    gpu, cpu = gpu_device(), cpu_device()
    with jax.default_device(gpu):
        got = msa_jax.attention(_put(q, gpu), _put(k, gpu), _put(v, gpu), plan, page_table=_put(page_table, gpu),
                                **kw)
        got = jax.block_until_ready(got)
    with jax.default_device(cpu):
        want = reference.attention(_put(q, cpu), _put(k, cpu), _put(v, cpu), plan,
                                   page_table=_put(page_table, cpu), **kw)
    if not isinstance(got, tuple):
        got, want = (got,), (want,)
    return tuple(np.asarray(jnp.asarray(x, jnp.float32)) for x in got), \
        tuple(np.asarray(jnp.asarray(x, jnp.float32)) for x in want)


def _check(got, want, names=("o", "lse", "block_max")):
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert not np.isnan(g).any(), f"NaN in {name}"
        err = rel_err(g, w)
        assert err <= TOL, f"{name}: relative error {err:.3e} > {TOL}"


# (qo_lens, kv_lens): lengths not multiples of 128, q_len < kv_len (chunked
# prefill), q_len == kv_len, single rows, sequences shorter than a tile.
CASES = [
    ([300, 77, 1], [300, 500, 129]),
    ([513, 128], [1000, 128]),
    ([1], [5]),
    ([64, 200, 33], [64, 700, 33]),
]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (16, 1)])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_prefill(dtype, d, hq, hkv, paged, case):
    qo, kv = CASES[case]
    c = prefill_case(qo, kv, hq=hq, hkv=hkv, d=d, dtype=dtype, paged=paged, page_size=128,
                     seed=100 * case + d + hq + paged)
    got, want = _run(c.q, c.k, c.v, c.plan, c.page_table, return_lse=True)
    _check(got, want)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_block_max(paged, d):
    qo, kv = [300, 77, 5], [300, 600, 700]
    c = prefill_case(qo, kv, hq=8, hkv=2, d=d, paged=paged, page_size=128, seed=7 + d)
    got, want = _run(c.q, c.k, c.v, c.plan, c.page_table, return_lse=True, return_block_max=True)
    _check(got, want)


def test_block_max_block64_and_256():
    # Dense block sizes other than 128 (multiples of 64): block boundaries
    # at every tile (64) and every 4th (256).
    for bs in (64, 256):
        c = prefill_case([200, 50], [450, 700], hq=4, hkv=4, d=128, block_size=bs, seed=bs)
        got, want = _run(c.q, c.k, c.v, c.plan, return_lse=True, return_block_max=True)
        _check(got, want)


def test_block_max_only():
    c = prefill_case([130], [300], hq=4, hkv=1, d=64, seed=3)
    got, want = _run(c.q, c.k, c.v, c.plan, return_block_max=True)
    _check(got, want, names=("o", "block_max"))


@pytest.mark.parametrize("page_size", [64, 256])
def test_paged_page_sizes(page_size):
    c = prefill_case([300, 40], [520, 300], hq=8, hkv=2, d=128, paged=True, page_size=page_size, seed=page_size)
    got, want = _run(c.q, c.k, c.v, c.plan, c.page_table, return_lse=True, return_block_max=True)
    _check(got, want)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_fp8_kv(paged, d, dtype):
    qo, kv = [200, 3], [700, 260]
    c = prefill_case(qo, kv, hq=16, hkv=4, d=d, dtype=dtype, seed=11 + d)
    rng = np.random.default_rng(5 + d)
    k8 = quantize_fp8(rng, c.k.shape, 0.25)
    v8 = quantize_fp8(rng, c.v.shape, 0.5)
    pt = None
    if paged:
        k8, pt = to_paged(k8.astype(jnp.float32), kv, 128, np.random.default_rng(1))
        v8, _ = to_paged(v8.astype(jnp.float32), kv, 128, np.random.default_rng(1))
        k8, v8 = k8.astype(jnp.float8_e4m3fn), v8.astype(jnp.float8_e4m3fn)
        plan = msa_jax.plan_prefill(qo, kv, num_q_heads=16, num_kv_heads=4, head_dim=d, page_size=128)
    else:
        plan = c.plan
    got, want = _run(c.q, k8, v8, plan, pt, k_scale=0.25, v_scale=0.5, return_lse=True, return_block_max=True)
    _check(got, want)


def test_bad_page_ids():
    # Out-of-range page ids (negative, >= num_pages): those tokens are
    # invisible, nothing is read out of bounds. Sequence 0's first page is
    # bad, so its first 128 query rows see nothing (o = 0, lse = -inf).
    qo, kv = [300, 100], [300, 400]
    c = prefill_case(qo, kv, hq=8, hkv=2, d=128, paged=True, page_size=128, seed=21)
    pt = np.asarray(c.page_table).copy()
    num_pages = c.k.shape[0]
    pt[0, 0] = -1
    pt[1, 1] = num_pages
    pt[1, 2] = 1 << 30
    pt = jnp.asarray(pt)
    got, want = _run(c.q, c.k, c.v, c.plan, pt, return_lse=True, return_block_max=True)
    assert np.isneginf(want[1]).any()
    _check(got, want)


def test_non_causal():
    c = prefill_case([100, 257], [300, 257], hq=8, hkv=2, d=64, seed=4, causal=False)
    got, want = _run(c.q, c.k, c.v, c.plan, return_lse=True, return_block_max=True)
    _check(got, want)


def test_scales():
    # A custom scale, a negative one (softmax of -q.k), and v_scale.
    c = prefill_case([150, 20], [150, 300], hq=4, hkv=2, d=128, seed=8)
    for scale in (0.2, -0.05):
        got, want = _run(c.q, c.k, c.v, c.plan, scale=scale, v_scale=2.0, return_lse=True, return_block_max=True)
        _check(got, want)


def test_many_sequences():
    # More sequences than one 32-lane scan chunk of the tile scheduler.
    rng = np.random.default_rng(5)
    B = 70
    qo = [int(x) for x in rng.integers(1, 40, B)]
    kv = [q + int(x) for q, x in zip(qo, rng.integers(0, 300, B))]
    c = prefill_case(qo, kv, hq=16, hkv=4, d=64, paged=True, page_size=128, seed=9)
    got, want = _run(c.q, c.k, c.v, c.plan, c.page_table, return_lse=True)
    _check(got, want)


def test_bitwise_identical_reruns():
    c = prefill_case([700, 300], [1500, 300], hq=16, hkv=4, d=128, seed=13)
    gpu = gpu_device()
    fn = jax.jit(lambda q, k, v: msa_jax.attention(q, k, v, c.plan, return_lse=True, return_block_max=True))
    q, k, v = (_put(x, gpu) for x in (c.q, c.k, c.v))
    first = [np.asarray(x) for x in jax.block_until_ready(fn(q, k, v))]
    assert not any(np.isnan(x.astype(np.float32)).any() for x in first), "NaN (poison) left in an output"
    for _ in range(3):
        again = [np.asarray(x) for x in jax.block_until_ready(fn(q, k, v))]
        for a, b in zip(first, again):
            assert a.tobytes() == b.tobytes()


def test_long_sequence_gqa16():
    # Longer causal prefill with the benchmark's group size (16 q heads per KV head).
    c = prefill_case([1100], [2100], hq=16, hkv=1, d=128, seed=17)
    got, want = _run(c.q, c.k, c.v, c.plan, return_lse=True)
    _check(got, want)


def test_float32_unimplemented():
    c = prefill_case([10], [10], hq=2, hkv=2, d=64, dtype=jnp.float32, seed=1)
    gpu = gpu_device()
    with jax.default_device(gpu):
        with pytest.raises(Exception, match="float32"):
            jax.block_until_ready(msa_jax.attention(_put(c.q, gpu), _put(c.k, gpu), _put(c.v, gpu), c.plan))

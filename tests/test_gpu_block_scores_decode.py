"""msa_block_scores' decode-shaped CUDA kernel against the reference.

The launcher picks the decode kernel from shapes alone when requests have few
rows (``T * H <= 16 * B``, e.g. decode with ``T == B``); q_indptr is runtime
data, so the kernel must also be right for requests with 0 or several tokens.
Covered here: H in {1, 4, 16}, head_dim 64 / 128, bf16 / fp16 q_idx with
same-dtype or fp8 keys, shuffled page tables with out-of-range page ids,
kv_len 0 / 1 / on and off block boundaries, ragged and clamped q_indptr
(pseudo rows outside every request), dense keys (causal and not) and a
negative scale. The handler poisons the output with NaN first (the tests set
MSA_JAX_POISON_OUTPUTS=1, see tests/conftest.py), so an element the kernel does
not write shows up; the -inf pattern must match exactly.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import msa_jax  # noqa: E402
from msa_jax import _common as c  # noqa: E402
from msa_jax import reference  # noqa: E402
from msa_jax.plan import PrefillPlan  # noqa: E402

from msa_cases import check_block_scores, cpu_device, gpu_device  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = [(jnp.bfloat16, "same"), (jnp.bfloat16, "fp8"), (jnp.float16, "same"), (jnp.float16, "fp8")]


def _on(x, dev):
    return jax.device_put(x, dev) if isinstance(x, (np.ndarray, jax.Array)) else x


def _run_both(q_idx, k_idx, plan, **kw):
    """msa_jax.block_scores on the GPU (poisoned output) and the reference on the CPU."""
    gpu, cpu = gpu_device(), cpu_device()
    with jax.default_device(gpu):
        got = msa_jax.block_scores(_on(q_idx, gpu), _on(k_idx, gpu), plan, **{k: _on(v, gpu) for k, v in kw.items()})
        got = np.asarray(jax.block_until_ready(got))
    with jax.default_device(cpu):
        want = reference.block_scores(_on(q_idx, cpu), _on(k_idx, cpu), plan, **{k: _on(v, cpu) for k, v in kw.items()})
    return got, np.asarray(want)


def _q(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)


def _keys(rng, shape, kdtype, dtype):
    k = rng.standard_normal(shape, dtype=np.float32)
    if kdtype == "fp8":
        return jnp.asarray(k * 4.0).astype(jnp.float8_e4m3fn)
    return jnp.asarray(k).astype(dtype)


def _paged(rng, batch, max_pages, page, head_dim, kdtype, dtype, extra_pages=3):
    """A pool of shuffled pages; request b's table row is max_pages distinct pages."""
    num_pages = batch * max_pages + extra_pages
    table = rng.permutation(num_pages)[:batch * max_pages].reshape(batch, max_pages).astype(np.int32)
    return _keys(rng, (num_pages, 1, page, head_dim), kdtype, dtype), table


def _plan(qo_lens, kv_lens, heads, head_dim, page_size=None, block_size=128, causal=True):
    """A PrefillPlan built directly: qo_len 0 and qo_len > kv_len are allowed here (the
    kernel sees them at runtime through q_indptr / kv_lens; plan_prefill rejects them)."""
    return PrefillPlan(tuple(qo_lens), tuple(kv_lens), 4 * heads, heads, head_dim, page_size,
                       page_size if page_size is not None else block_size, causal)


@pytest.mark.parametrize("dtype,kdtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [1, 4, 16])
def test_decode(dtype, kdtype, head_dim, heads):
    # One token per request (T == B): kv_len 0, 1, on / off block boundaries, a few
    # thousand; unresolvable page ids (negative, == num_pages, huge) in two requests.
    rng = np.random.default_rng(100 * heads + head_dim + (kdtype == "fp8") + 2 * (dtype == jnp.float16))
    lens = np.array([1, 127, 128, 129, 0, 1000, 5000, 300], np.int32)
    B, page, max_kv = len(lens), 128, 6144
    plan = msa_jax.plan_decode(B, max_kv, num_q_heads=4 * heads, num_kv_heads=heads, head_dim=head_dim,
                               page_size=page)
    cache, table = _paged(rng, B, max_kv // page, page, head_dim, kdtype, dtype)
    table[6, 3] = -1
    table[6, 10] = cache.shape[0]
    table[5, 0] = 1 << 30
    q_idx = _q(rng, (B, heads, head_dim), dtype)
    got, want = _run_both(q_idx, cache, plan, page_table=jnp.asarray(table), kv_lens=jnp.asarray(lens), scale=None,
                          k_scale=0.5 if kdtype == "fp8" else 1.0)
    check_block_scores(got, want)


@pytest.mark.parametrize("dtype,kdtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [4, 16])
def test_ragged_rows_under_decode_dispatch(dtype, kdtype, head_dim, heads):
    # T == B but a request with 0 tokens and one with 3 (whose kv_len 2 < q_len: its
    # first row sees nothing); 3 x 16 rows span several 16-row tiles. Negative scale.
    rng = np.random.default_rng(7 + heads + head_dim)
    qo = [1, 0, 3, 1, 1, 0, 1, 1]
    kv = [700, 50, 2, 129, 256, 9, 4000, 1]
    page = 128
    plan = _plan(qo, kv, heads, head_dim, page_size=page)
    cache, table = _paged(rng, len(qo), plan.max_pages, page, head_dim, kdtype, dtype)
    q_idx = _q(rng, (sum(qo), heads, head_dim), dtype)
    got, want = _run_both(q_idx, cache, plan, page_table=jnp.asarray(table), scale=-0.2, k_scale=1.0)
    check_block_scores(got, want)


@pytest.mark.parametrize("kdtype", ["same", "fp8"])
def test_one_request_holds_every_row(kdtype):
    # T == B == 8, H == 16, all 128 rows in the last request: 8 row tiles, bottom-right
    # causal over 8 consecutive positions; page 64 (four 16-key stages or one 64-key one).
    rng = np.random.default_rng(31)
    qo = [0] * 7 + [8]
    kv = [1, 64, 65, 0, 3, 200, 127, 1000]
    heads, head_dim, page = 16, 128, 64
    plan = _plan(qo, kv, heads, head_dim, page_size=page)
    cache, table = _paged(rng, len(qo), plan.max_pages, page, head_dim, kdtype, jnp.bfloat16)
    q_idx = _q(rng, (8, heads, head_dim), jnp.bfloat16)
    got, want = _run_both(q_idx, cache, plan, page_table=jnp.asarray(table), scale=None, k_scale=0.25)
    check_block_scores(got, want)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,kdtype", DTYPES)
def test_dense_keys(causal, dtype, kdtype):
    # Dense keys with one query per sequence (a decode-shaped prefill), block_size 192.
    rng = np.random.default_rng(55 + causal)
    qo = [1, 1, 1, 1, 1, 1]
    kv = [500, 7, 1300, 100, 384, 385]
    heads, head_dim = 4, 64
    plan = _plan(qo, kv, heads, head_dim, block_size=192, causal=causal)
    q_idx = _q(rng, (len(qo), heads, head_dim), dtype)
    k_idx = _keys(rng, (sum(kv), head_dim), kdtype, dtype)
    got, want = _run_both(q_idx, k_idx, plan, scale=None, k_scale=1.0)
    check_block_scores(got, want)


def test_clamped_q_indptr_pseudo_rows():
    # Raw FFI call with a q_indptr the contract clamps: e = min(T, max(0, prefix max)) =
    # [1, 6, 6, 6, 7, 7, 7, 7, 7]: row 0 precedes every request and row 7 follows the
    # last (both -inf everywhere), request 0 holds 5 tokens, request 3 one.
    rng = np.random.default_rng(77)
    gpu, cpu = gpu_device(), cpu_device()
    B, T, heads, head_dim, page = 8, 8, 16, 128, 64
    q_indptr = np.array([1, 6, 3, 6, 7, 7, 7, 7, 7], np.int32)
    kv = [300, 1, 64, 65, 2000, 9, 10, 11]
    max_pages, num_blocks = 40, 20  # fewer output columns than request 4's blocks
    cache, table = _paged(rng, B, max_pages, page, head_dim, "fp8", jnp.bfloat16)
    q_idx = _q(rng, (T, heads, head_dim), jnp.bfloat16)
    scale = 0.1
    call = jax.ffi.ffi_call("msa_block_scores", jax.ShapeDtypeStruct((T, heads, num_blocks), jnp.float32),
                            vmap_method="sequential")
    attrs = c.attrs(scale=scale, k_scale=0.5, causal=True, paged=True, block_size=page)
    with jax.default_device(gpu):
        got = call(_on(q_idx, gpu), _on(cache, gpu), jnp.asarray(q_indptr), jnp.zeros(B + 1, jnp.int32),
                   jnp.asarray(kv, jnp.int32), jnp.asarray(table), **attrs)
        got = np.asarray(jax.block_until_ready(got))
    # Reference: the same rows as 10 sequences, the pseudo rows as sequences with no key.
    qo = [1, 5, 0, 0, 1, 0, 0, 0, 0, 1]
    kv_ref = [0] + kv + [0]
    table_ref = np.concatenate([table[:1], table, table[:1]])
    plan = PrefillPlan(tuple(qo), tuple(kv_ref), 4 * heads, heads, head_dim, page, page, True)
    assert plan.num_blocks >= num_blocks
    with jax.default_device(cpu):
        want = np.asarray(reference.block_scores(_on(q_idx, cpu), _on(cache, cpu), plan,
                                                 page_table=jnp.asarray(table_ref), scale=scale, k_scale=0.5))
    check_block_scores(got, want[:, :, :num_blocks])

"""msa_block_scores on the GPU against the reference (docs/ffi-contract.md).

Every output element is compared: the -inf pattern exactly, the finite
entries to 1e-2 relative by norm (bf16 / fp16 inputs, fp32 accumulation), so
an element the kernel failed to write shows up as a mismatch.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import msa_jax  # noqa: E402
from msa_jax import reference  # noqa: E402

from msa_cases import check_block_scores, cpu_device, gpu_device  # noqa: E402

pytestmark = pytest.mark.gpu

BLOCK = 128
PAGE = 128


def _run_both(q_idx, k_idx, plan, **kw):
    """msa_jax.block_scores on the GPU and the reference on the CPU."""
    gpu, cpu = gpu_device(), cpu_device()
    put = lambda x, d: None if x is None else jax.device_put(x, d)  # noqa: E731
    kw_gpu = {k: put(v, gpu) if isinstance(v, (np.ndarray, jax.Array)) else v for k, v in kw.items()}
    kw_cpu = {k: put(v, cpu) if isinstance(v, (np.ndarray, jax.Array)) else v for k, v in kw.items()}
    with jax.default_device(gpu):
        got = msa_jax.block_scores(put(q_idx, gpu), put(k_idx, gpu), plan, **kw_gpu)
        got = np.asarray(jax.block_until_ready(got))
    with jax.default_device(cpu):
        want = np.asarray(reference.block_scores(put(q_idx, cpu), put(k_idx, cpu), plan, **kw_cpu))
    return got, want


def _keys(rng, shape, kdtype, dtype):
    k = rng.standard_normal(shape, dtype=np.float32)
    if kdtype == "fp8":
        return jnp.asarray(k * 4.0).astype(jnp.float8_e4m3fn)
    return jnp.asarray(k).astype(dtype)


def _paged_cache(rng, kv_lens, head_dim, kdtype, dtype, extra_pages=3):
    """Shuffled page table over a pool with spare pages."""
    pages_per_seq = [max(1, -(-int(n) // PAGE)) for n in kv_lens]
    max_pages = max(pages_per_seq)
    num_pages = sum(pages_per_seq) + extra_pages
    perm = rng.permutation(num_pages).astype(np.int32)
    table = np.zeros((len(kv_lens), max_pages), np.int32)
    off = 0
    for b, n in enumerate(pages_per_seq):
        table[b, :n] = perm[off:off + n]
        table[b, n:] = perm[off + n - 1]  # padding entries: a valid page, never visible
        off += n
    cache = _keys(rng, (num_pages, 1, PAGE, head_dim), kdtype, dtype)
    return cache, jnp.asarray(table)


PREFILL_CASES = [
    # (qo_lens, kv_lens): lengths not multiples of 128, q_len < kv_len (chunked
    # prefill), q_len == kv_len, a single short row.
    ([300, 77, 1], [300, 500, 129]),
    ([513, 128], [1000, 128]),
    ([1], [5]),
]


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("case", range(len(PREFILL_CASES)))
def test_prefill(head_dim, heads, paged, case):
    qo_lens, kv_lens = PREFILL_CASES[case]
    rng = np.random.default_rng(1000 * case + 10 * head_dim + heads + paged)
    dtype = jnp.bfloat16
    plan = msa_jax.plan_prefill(qo_lens, kv_lens, num_q_heads=4 * heads, num_kv_heads=heads, head_dim=head_dim,
                                page_size=PAGE if paged else None, block_size=BLOCK)
    T = sum(qo_lens)
    q_idx = jnp.asarray(rng.standard_normal((T, heads, head_dim), dtype=np.float32)).astype(dtype)
    if paged:
        k_idx, table = _paged_cache(rng, kv_lens, head_dim, "same", dtype)
        got, want = _run_both(q_idx, k_idx, plan, page_table=table, scale=None, k_scale=1.0)
    else:
        k_idx = _keys(rng, (sum(kv_lens), head_dim), "same", dtype)
        got, want = _run_both(q_idx, k_idx, plan, scale=None, k_scale=1.0)
    check_block_scores(got, want)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_fp8_keys(paged, head_dim):
    qo_lens, kv_lens = [200, 3], [700, 260]
    rng = np.random.default_rng(7 + paged + head_dim)
    heads = 4
    plan = msa_jax.plan_prefill(qo_lens, kv_lens, num_q_heads=16, num_kv_heads=heads, head_dim=head_dim,
                                page_size=PAGE if paged else None, block_size=BLOCK)
    q_idx = jnp.asarray(rng.standard_normal((sum(qo_lens), heads, head_dim), dtype=np.float32)).astype(jnp.bfloat16)
    if paged:
        k_idx, table = _paged_cache(rng, kv_lens, head_dim, "fp8", jnp.bfloat16)
        got, want = _run_both(q_idx, k_idx, plan, page_table=table, scale=None, k_scale=0.25)
    else:
        k_idx = _keys(rng, (sum(kv_lens), head_dim), "fp8", jnp.bfloat16)
        got, want = _run_both(q_idx, k_idx, plan, scale=None, k_scale=0.25)
    check_block_scores(got, want)


@pytest.mark.parametrize("kdtype", ["same", "fp8"])
def test_prefill_fp16_negative_scale(kdtype):
    # fp16 instances, and a negative scale (max of scale * q.k is then scale * min q.k).
    qo_lens, kv_lens = [130, 64], [130, 400]
    rng = np.random.default_rng(99)
    plan = msa_jax.plan_prefill(qo_lens, kv_lens, num_q_heads=8, num_kv_heads=2, head_dim=128, page_size=None,
                                block_size=BLOCK)
    q_idx = jnp.asarray(rng.standard_normal((sum(qo_lens), 2, 128), dtype=np.float32)).astype(jnp.float16)
    k_idx = _keys(rng, (sum(kv_lens), 128), kdtype, jnp.float16)
    for scale in (None, -0.05):
        got, want = _run_both(q_idx, k_idx, plan, scale=scale, k_scale=1.0)
        check_block_scores(got, want)


def test_prefill_many_sequences():
    # More sequences than one 32-lane scan chunk of the tile scheduler.
    rng = np.random.default_rng(5)
    B = 70
    qo_lens = [int(x) for x in rng.integers(1, 40, B)]
    kv_lens = [q + int(x) for q, x in zip(qo_lens, rng.integers(0, 300, B))]
    plan = msa_jax.plan_prefill(qo_lens, kv_lens, num_q_heads=16, num_kv_heads=4, head_dim=64, page_size=PAGE,
                                block_size=BLOCK)
    q_idx = jnp.asarray(rng.standard_normal((sum(qo_lens), 4, 64), dtype=np.float32)).astype(jnp.bfloat16)
    k_idx, table = _paged_cache(rng, kv_lens, 64, "same", jnp.bfloat16)
    got, want = _run_both(q_idx, k_idx, plan, page_table=table, scale=None, k_scale=1.0)
    check_block_scores(got, want)


@pytest.mark.parametrize("kdtype", ["same", "fp8"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode(kdtype, head_dim):
    # One row per request, runtime kv_lens very different (1 ... tens of blocks),
    # a shuffled page table; the plan's capacity exceeds every length.
    rng = np.random.default_rng(11 + head_dim)
    lens = np.array([1, 5000, 128, 129, 7, 3000, 64, 255], np.int32)
    B, heads, max_kv = len(lens), 4, 6000
    plan = msa_jax.plan_decode(B, max_kv, num_q_heads=16, num_kv_heads=heads, head_dim=head_dim, page_size=PAGE)
    cache, table = _paged_cache(rng, [max_kv] * B, head_dim, kdtype, jnp.bfloat16, extra_pages=0)
    q_idx = jnp.asarray(rng.standard_normal((B, heads, head_dim), dtype=np.float32)).astype(jnp.bfloat16)
    got, want = _run_both(q_idx, cache, plan, page_table=table, kv_lens=jnp.asarray(lens), scale=None,
                          k_scale=0.5 if kdtype == "fp8" else 1.0)
    check_block_scores(got, want)


def test_decode_large_batch_unresolvable_pages():
    # B in the hundreds; some page ids out of range (unresolvable: -inf blocks).
    rng = np.random.default_rng(3)
    B, heads, head_dim, max_kv = 300, 4, 128, 2048
    lens = rng.integers(1, max_kv + 1, B).astype(np.int32)
    lens[:3] = [1, max_kv, 0]
    plan = msa_jax.plan_decode(B, max_kv, num_q_heads=16, num_kv_heads=heads, head_dim=head_dim, page_size=PAGE)
    num_pages = B * max_kv // PAGE // 2
    cache = _keys(rng, (num_pages, 1, PAGE, head_dim), "same", jnp.bfloat16)
    table = rng.integers(0, num_pages, (B, max_kv // PAGE)).astype(np.int32)
    table[5, 1] = -1
    table[6, 0] = num_pages
    q_idx = jnp.asarray(rng.standard_normal((B, heads, head_dim), dtype=np.float32)).astype(jnp.bfloat16)
    got, want = _run_both(q_idx, cache, plan, page_table=jnp.asarray(table), kv_lens=jnp.asarray(lens), scale=None,
                          k_scale=1.0)
    check_block_scores(got, want)

"""sparse_attention(index_chunk=...): the index branch in query chunks is bit-identical to one pass."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_cases import prefill_case

sa_mod = importlib.import_module("msa_jax.sparse_attention")  # the module (the package exports the function)

# Ragged, in 32-token blocks (small, so that CPU compiles stay fast): lengths not multiples of
# the block, a sequence shorter than a block, cached prefixes (q_len < kv_len).
QO = [75, 19, 100, 5, 33]
KV = [75, 125, 230, 15, 33]

_static = ("plan", "topk", "local_blocks", "sink_blocks", "index_chunk", "return_block_ids")
_layer = jax.jit(msa_jax.sparse_attention, static_argnames=_static)


def _run(case, jit=True, **kw):
    fn = _layer if jit else msa_jax.sparse_attention
    return fn(case.q, case.k, case.v, case.q_idx, case.k_idx, plan=case.plan, page_table=case.page_table,
              return_block_ids=True, **kw)


def _assert_same(case, chunks, jit=True, **kw):
    o0, ids0 = _run(case, jit, **kw)
    ids0 = np.asarray(ids0)
    assert (ids0 >= 0).any()
    for n in chunks:
        o, ids = _run(case, jit, index_chunk=n, **kw)
        np.testing.assert_array_equal(np.asarray(ids), ids0, err_msg=f"index_chunk={n}")
        a = np.asarray(jnp.asarray(o, jnp.float32))
        b = np.asarray(jnp.asarray(o0, jnp.float32))
        assert o.dtype == o0.dtype and a.tobytes() == b.tobytes(), f"o differs, index_chunk={n}"


# (paged, hq, hkv, sink_blocks, dtype): every GQA ratio, dense and paged, sinks on and off.
CASES = [
    (False, 4, 4, 0, jnp.bfloat16),
    (True, 8, 2, 2, jnp.bfloat16),
    (False, 6, 1, 1, jnp.float32),
    (True, 4, 4, 1, jnp.float32),
    (True, 6, 1, 0, jnp.bfloat16),
]


@pytest.mark.parametrize("paged,hq,hkv,sink,dtype", CASES)
def test_chunked_equals_single_pass(paged, hq, hkv, sink, dtype):
    case = prefill_case(QO, KV, hq=hq, hkv=hkv, d=32, di=64, dtype=dtype, paged=paged, page_size=32,
                        block_size=32, seed=hq * 10 + hkv + sink + paged)
    # 45: chunks cut sequences (and blocks) anywhere; 100: other cuts.
    _assert_same(case, [45, 100], topk=3, local_blocks=1, sink_blocks=sink)


@pytest.mark.parametrize("paged", [False, True])
def test_blocks_of_128(paged):
    case = prefill_case([300, 77, 129], [300, 500, 901], hq=8, hkv=2, d=64, di=64, dtype=jnp.bfloat16,
                        paged=paged, seed=11)
    # 200: cuts mid-block; 5000 > T: one chunk.
    _assert_same(case, [200, 5000], topk=4, local_blocks=1, sink_blocks=1)


@pytest.mark.parametrize("paged", [False, True])
def test_chunk_of_one_token(paged):
    # 13 tokens x 4 groups > 16 rows per sequence: the single pass is prefill-shaped, the chunks
    # (4 rows, 1 sequence) get a padding sequence.
    case = prefill_case([6, 2, 5], [70, 2, 100], hq=8, hkv=4, d=32, di=64, dtype=jnp.float32,
                        paged=paged, page_size=32, block_size=32, seed=3)
    assert not sa_mod._decode_shaped_scores(case.plan.total_q, 4, case.plan.batch_size)
    _assert_same(case, [1], topk=2, local_blocks=1, sink_blocks=1)


def test_eager_and_block_size_64():
    case = prefill_case([90, 33], [250, 200], hq=8, hkv=2, d=64, di=64, dtype=jnp.float32,
                        block_size=64, seed=4)
    _assert_same(case, [50, 64], jit=False, topk=5, local_blocks=2, sink_blocks=1)


def test_non_causal():
    case = prefill_case([70, 130], [300, 129], hq=4, hkv=2, d=64, dtype=jnp.float32, causal=False, seed=5)
    _assert_same(case, [33], topk=3, sink_blocks=1)


def test_decode_shaped_batch_falls_back():
    # One query token per sequence: the single pass (the GPU's decode-shaped index kernel).
    case = prefill_case([1, 1, 1], [300, 40, 129], hq=4, hkv=2, d=64, dtype=jnp.float32, seed=6)
    _assert_same(case, [1, 2], topk=2)


def test_sub_plans():
    plan = msa_jax.plan_prefill([300, 77, 400, 5, 129], [300, 500, 901, 60, 129], num_q_heads=8,
                                num_kv_heads=2, head_dim=64)
    chunks = sa_mod._chunks(plan, 37)
    assert [ch.start for ch in chunks] == list(range(0, plan.total_q, 37))
    assert sum(ch.stop - ch.start for ch in chunks) == plan.total_q
    for ch in chunks:
        assert ch.pad == 0 and sum(ch.plan.qo_lens) == ch.stop - ch.start
        assert all(q <= k for q, k in zip(ch.plan.qo_lens, ch.plan.kv_lens))
    # The first chunk is the first 37 queries of sequence 0 (kv 300): keys [0, 37) only.
    assert chunks[0].plan.qo_lens == (37,) and chunks[0].plan.kv_lens == (37,)
    assert chunks[0].key_ranges == ((0, 37),)
    # Sub-plans have fewer block columns than the full plan (ids need no remapping).
    assert min(ch.plan.num_blocks for ch in chunks) < plan.num_blocks
    # Chunk [260, 390) spans sequences 0 (tail), 1 (whole), 2 (head): one contiguous key range.
    ch = sa_mod._chunks(plan, 130)[2]
    assert (ch.start, ch.stop, ch.seqs) == (260, 390, (0, 1, 2))
    assert ch.plan.qo_lens == (40, 77, 13) and ch.plan.kv_lens == (300, 500, 901 - (400 - 13))
    assert ch.key_ranges == ((0, 800 + 514),)
    # A chunk with few rows per sequence gets a padding sequence (GPU kernel choice).
    one = sa_mod._chunks(plan, 1)
    assert all(ch.pad > 0 and ch.plan.batch_size == 2 for ch in one)
    assert all((1 + ch.pad) * 2 > 16 * 2 for ch in one)


def test_vmap():
    cases = [prefill_case([40, 9], [150, 60], hq=4, hkv=2, d=32, dtype=jnp.float32, block_size=32, seed=s)
             for s in (1, 2)]
    plan = cases[0].plan
    args = [jnp.stack([getattr(c, n) for c in cases]) for n in ("q", "k", "v", "q_idx", "k_idx")]

    def f(n):
        return jax.vmap(functools.partial(msa_jax.sparse_attention, plan=plan, topk=2, index_chunk=n,
                                          return_block_ids=True))(*args)

    o0, ids0 = f(None)
    o1, ids1 = f(25)
    np.testing.assert_array_equal(np.asarray(ids1), np.asarray(ids0))
    assert np.asarray(o1).tobytes() == np.asarray(o0).tobytes()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_index_chunk(bad):
    case = prefill_case([20], [40], hq=4, hkv=2, d=64, dtype=jnp.float32, seed=7)
    with pytest.raises(ValueError, match="index_chunk must be a positive int"):
        msa_jax.sparse_attention(case.q, case.k, case.v, case.q_idx, case.k_idx, case.plan, topk=2,
                                 index_chunk=bad)


@pytest.mark.gpu
@pytest.mark.parametrize("paged", [False, True])
def test_gpu_chunked_equals_single_pass(paged):
    """The CUDA kernels: chunks cut sequences mid-block; chunks of 1 and 4 tokens take the padding
    sequence that keeps the prefill-shaped block_scores kernel of the single pass."""
    case = prefill_case([300, 77, 129], [300, 500, 901], hq=8, hkv=2, d=64, di=64, dtype=jnp.bfloat16,
                        paged=paged, seed=11)
    _assert_same(case, [200, 37], topk=4, local_blocks=1, sink_blocks=1)
    small = prefill_case([6, 2, 5], [70, 2, 100], hq=8, hkv=4, d=64, di=64, dtype=jnp.bfloat16, paged=paged,
                         page_size=64, block_size=64, seed=3)
    _assert_same(small, [1, 4], topk=2, local_blocks=1, sink_blocks=1)

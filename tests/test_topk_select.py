"""msa_topk_select against the reference: exact ids."""

import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref


def _scores(rng, plan, h, *, ties=False, nan=False):
    s = rng.standard_normal((plan.total_q, h, plan.num_blocks)).astype(np.float32)
    if ties:
        s = np.round(s * 2) / 2          # few distinct values: many ties
    if nan:
        s[rng.random(s.shape) < 0.2] = np.nan
        s[rng.random(s.shape) < 0.1] = -np.inf
        s[0] = np.nan                     # a row of NaN only
    return jnp.asarray(s)


@pytest.mark.parametrize("topk", [1, 4, 16, 64])
@pytest.mark.parametrize("local,sink", [(1, 0), (2, 0), (1, 2), (0, 0)])
@pytest.mark.parametrize("kind", ["plain", "ties", "nan"])
def test_topk_prefill(topk, local, sink, kind):
    if local + sink > topk:
        pytest.skip("forced blocks exceed topk (rejected by validation)")
    rng = np.random.default_rng(topk * 7 + local * 3 + sink)
    plan = msa_jax.plan_prefill([70, 300, 5], [2000, 300, 129], num_q_heads=8, num_kv_heads=4, head_dim=64)
    s = _scores(rng, plan, 4, ties=kind == "ties", nan=kind == "nan")
    got = msa_jax.topk_select(s, topk, plan, local_blocks=local, sink_blocks=sink)
    want = ref.topk_select(s, topk, plan, local_blocks=local, sink_blocks=sink)
    assert got.shape == (plan.total_q, 4, topk) and got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_topk_semantics_by_hand():
    # One sequence, 1 query at position 300 (block 2 of 128): 3 visible blocks, more slots than blocks.
    plan = msa_jax.plan_prefill([1], [301], num_q_heads=1, num_kv_heads=1, head_dim=64)
    s = jnp.asarray([[[5.0, 9.0, -1.0]]], jnp.float32)
    np.testing.assert_array_equal(msa_jax.topk_select(s, 2, plan), [[[1, 2]]])        # local 2 forced
    np.testing.assert_array_equal(msa_jax.topk_select(s, 5, plan), [[[0, 1, 2, -1, -1]]])
    np.testing.assert_array_equal(msa_jax.topk_select(s, 2, plan, local_blocks=1, sink_blocks=1),
                                  [[[0, 2]]])
    tie = jnp.asarray([[[3.0, 3.0, 0.0]]], jnp.float32)
    np.testing.assert_array_equal(msa_jax.topk_select(tie, 2, plan), [[[0, 2]]])      # lower id wins
    nan = jnp.asarray([[[np.nan, -np.inf, 0.0]]], jnp.float32)
    np.testing.assert_array_equal(msa_jax.topk_select(nan, 2, plan), [[[1, 2]]])      # -inf beats NaN


@pytest.mark.parametrize("topk", [1, 16])
def test_topk_decode_long_rows(topk):
    rng = np.random.default_rng(11)
    lens = [1, 128, 129, 8192 * 128, 5000]
    plan = msa_jax.plan_decode(len(lens), 8192 * 128, num_q_heads=4, num_kv_heads=2, head_dim=64)
    s = jnp.asarray(rng.standard_normal((len(lens), 2, plan.num_blocks)).astype(np.float32))
    kv_lens = jnp.asarray(lens, jnp.int32)
    got = msa_jax.topk_select(s, topk, plan, kv_lens=kv_lens, sink_blocks=min(1, topk - 1))
    want = ref.topk_select(s, topk, plan, kv_lens=kv_lens, sink_blocks=min(1, topk - 1))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

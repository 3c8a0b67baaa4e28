"""Bad input fails at trace time with a message naming the problem."""

import jax
import jax.numpy as jnp
import pytest

import msa_jax
from msa_cases import prefill_case


@pytest.fixture(scope="module")
def case():
    return prefill_case([10, 20], [200, 20], hq=8, hkv=2, d=64, dtype=jnp.bfloat16)


def test_plan_errors():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        msa_jax.plan_prefill([4], [4], num_q_heads=6, num_kv_heads=4, head_dim=64)
    with pytest.raises(ValueError, match="qo_len <= kv_len"):
        msa_jax.plan_prefill([8], [4], num_q_heads=4, num_kv_heads=4, head_dim=64)
    with pytest.raises(ValueError, match="equal length"):
        msa_jax.plan_prefill([8, 3], [9], num_q_heads=4, num_kv_heads=4, head_dim=64)
    with pytest.raises(ValueError, match="block_size == page_size"):
        msa_jax.plan_prefill([8], [9], num_q_heads=4, num_kv_heads=4, head_dim=64, page_size=64, block_size=32)
    with pytest.raises(ValueError, match="head_dim"):
        msa_jax.plan_decode(2, 100, num_q_heads=4, num_kv_heads=4, head_dim=60)


def test_shape_and_dtype_errors(case):
    with pytest.raises(ValueError, match="q must have rank 3"):
        msa_jax.attention(case.q[0], case.k, case.v, case.plan)
    with pytest.raises(ValueError, match="q dim 1 must equal num_q_heads"):
        msa_jax.attention(case.q[:, :4], case.k, case.v, case.plan)
    with pytest.raises(ValueError, match="k dim 0 must equal the plan's total kv tokens"):
        msa_jax.attention(case.q, case.k[:-1], case.v, case.plan)
    with pytest.raises(TypeError, match="k dtype must be q's dtype"):
        msa_jax.attention(case.q, case.k.astype(jnp.float16), case.v, case.plan)
    with pytest.raises(TypeError, match="q dtype must be one of"):
        msa_jax.attention(case.q.astype(jnp.int32), case.k, case.v, case.plan)
    with pytest.raises(TypeError, match="page_table given but the plan is dense"):
        msa_jax.attention(case.q, case.k, case.v, case.plan, page_table=jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="q_idx dim 1 must equal num_kv_heads"):
        msa_jax.block_scores(case.q_idx[:, :1], case.k_idx, case.plan)
    with pytest.raises(TypeError, match="block_ids dtype"):
        msa_jax.sparse_prefill(case.q, case.k, case.v, jnp.zeros((30, 2, 4), jnp.float32), case.plan)


def test_topk_errors(case):
    scores = jnp.zeros((30, 2, case.plan.num_blocks), jnp.float32)
    with pytest.raises(ValueError, match="topk must be an int in"):
        msa_jax.topk_select(scores, 0, case.plan)
    with pytest.raises(ValueError, match="topk must be an int in"):
        msa_jax.topk_select(scores, 65, case.plan)
    with pytest.raises(ValueError, match="must fit in topk"):
        msa_jax.topk_select(scores, 2, case.plan, local_blocks=2, sink_blocks=1)
    with pytest.raises(ValueError, match="scores dim 2 must equal the plan's num_blocks"):
        msa_jax.topk_select(scores[..., :1], 2, case.plan)
    with pytest.raises(TypeError, match="kv_lens is a runtime input of decode plans only"):
        msa_jax.topk_select(scores, 2, case.plan, kv_lens=jnp.zeros((2,), jnp.int32))


def test_paged_errors():
    case = prefill_case([10], [300], hq=4, hkv=2, d=64, paged=True, page_size=128)
    with pytest.raises(TypeError, match="page_table is required"):
        msa_jax.attention(case.q, case.k, case.v, case.plan)
    with pytest.raises(ValueError, match="dim 2 must equal the plan's page_size"):
        msa_jax.attention(case.q, case.k[:, :, :64], case.v[:, :, :64], case.plan, page_table=case.page_table)
    with pytest.raises(ValueError, match="page_table has 1 columns but the plan needs 3"):
        msa_jax.attention(case.q, case.k, case.v, case.plan, page_table=case.page_table[:, :1])
    plan = msa_jax.plan_decode(1, 300, num_q_heads=4, num_kv_heads=2, head_dim=64)
    with pytest.raises(TypeError, match="needs the runtime kv_lens"):
        msa_jax.block_scores(case.q_idx[:1], case.k_idx, plan, page_table=case.page_table)
    with pytest.raises(TypeError, match="plan must be a DecodePlan"):
        msa_jax.decode(case.q[:1], case.k, case.v, case.page_table, jnp.ones((1,), jnp.int32), case.plan)


def test_append_errors():
    cache = jnp.zeros((4, 2, 16, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="new dim 2 must equal the cache's heads"):
        msa_jax.append_cache(cache, jnp.zeros((1, 3, 64), jnp.bfloat16), jnp.zeros((1, 2), jnp.int32),
                             jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="positions dim 0 must equal new's batch"):
        msa_jax.append_cache(cache, jnp.zeros((1, 2, 64), jnp.bfloat16), jnp.zeros((1, 2), jnp.int32),
                             jnp.zeros((2,), jnp.int32))


def test_grad_raises(case):
    def loss(q):
        return msa_jax.attention(q, case.k, case.v, case.plan).astype(jnp.float32).sum()

    with pytest.raises(TypeError, match="inference-only"):
        jax.grad(loss)(case.q)
    with pytest.raises(TypeError, match="inference-only"):
        jax.jvp(lambda s: msa_jax.topk_select(s, 2, case.plan),
                (jnp.zeros((30, 2, 2), jnp.float32),), (jnp.ones((30, 2, 2), jnp.float32),))
    # stop_gradient makes it usable inside differentiated code
    jax.grad(lambda q: msa_jax.attention(jax.lax.stop_gradient(q), case.k, case.v, case.plan)
             .astype(jnp.float32).sum() + q.astype(jnp.float32).sum())(case.q)

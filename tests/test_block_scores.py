"""msa_block_scores (index branch), prefill and decode, against the reference."""

import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref
from msa_cases import prefill_case, quantize_fp8, random, rel_err, to_paged


@pytest.mark.parametrize("h", [1, 4])
@pytest.mark.parametrize("di", [64, 128])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_block_scores_prefill(h, di, paged, dtype):
    case = prefill_case([45, 300, 3], [400, 300, 130], hq=h * 2, hkv=h, d=64, di=di, dtype=dtype,
                        paged=paged, seed=di + h)
    got = msa_jax.block_scores(case.q_idx, case.k_idx, case.plan, page_table=case.page_table)
    want = ref.block_scores(case.q_idx, case.k_idx, case.plan, page_table=case.page_table)
    assert got.shape == (case.plan.total_q, h, case.plan.num_blocks) and got.dtype == jnp.float32
    assert rel_err(got, want) < (1e-5 if dtype == jnp.float32 else 1e-2)
    # Blocks past the query are -inf (causal), the query's own block is finite.
    assert np.isneginf(np.asarray(got)[0, :, 3]).all()


def test_block_scores_fp8_keys():
    rng = np.random.default_rng(1)
    case = prefill_case([64, 17], [256, 200], hq=8, hkv=4, d=64, di=128, seed=2)
    k8 = quantize_fp8(rng, case.k_idx.shape, 0.03)
    got = msa_jax.block_scores(case.q_idx, k8, case.plan, k_scale=0.03)
    want = ref.block_scores(case.q_idx, k8, case.plan, k_scale=0.03)
    assert rel_err(got, want) < 1e-2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_block_scores_decode(dtype):
    rng = np.random.default_rng(3)
    lens = [1, 128, 300, 513]
    B, H, Di, ps = len(lens), 4, 64, 128
    plan = msa_jax.plan_decode(B, 600, num_q_heads=8, num_kv_heads=H, head_dim=64, page_size=ps)
    dense = random(rng, (sum(lens), 1, Di), dtype)
    cache, pt = to_paged(dense, lens, ps, rng)
    pt = jnp.pad(pt, ((0, 0), (0, max(0, plan.max_pages - pt.shape[1]))), constant_values=-1)
    q_idx = random(rng, (B, H, Di), dtype)
    kv_lens = jnp.asarray(lens, jnp.int32)
    got = msa_jax.block_scores(q_idx, cache, plan, page_table=pt, kv_lens=kv_lens)
    want = ref.block_scores(q_idx, cache, plan, page_table=pt, kv_lens=kv_lens)
    assert got.shape == (B, H, plan.num_blocks)
    assert rel_err(got, want) < (1e-5 if dtype == jnp.float32 else 1e-2)

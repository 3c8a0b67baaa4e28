"""msa_topk_select on the GPU against msa_jax.reference.topk_select: exact ids."""
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import msa_jax  # noqa: E402
from msa_cases import gpu_device  # noqa: E402

pytestmark = pytest.mark.gpu

BS = 128


def _gpu():
    dev = gpu_device()
    kernels = getattr(msa_jax, "cuda_kernels", None)
    if kernels is not None and "msa_topk_select" not in kernels():
        pytest.skip("this build has no CUDA msa_topk_select")
    return dev


def _scores(rng, shape, kind):
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "ties":  # few distinct values: many equal scores
        x = np.round(x).astype(np.float32)
    elif kind == "const":
        x = np.zeros(shape, np.float32)
    elif kind == "special":  # NaN, +-inf, -0 mixed in
        u = rng.random(shape)
        x[u < 0.10] = np.nan
        x[(u >= 0.10) & (u < 0.20)] = -np.inf
        x[(u >= 0.20) & (u < 0.23)] = np.inf
        x[(u >= 0.23) & (u < 0.26)] = -0.0
        x[(u >= 0.26) & (u < 0.29)] = 0.0
    elif kind == "nan_rows":  # whole rows NaN or -inf
        x[..., ::3, :] = np.nan
        x[..., 1::3, :] = -np.inf
    return x


def _check(scores, topk, plan, local_blocks, sink_blocks, kv_lens=None):
    gpu = _gpu()
    kw = dict(local_blocks=local_blocks, sink_blocks=sink_blocks)
    if kv_lens is not None:
        kw["kv_lens"] = kv_lens
    got = msa_jax.topk_select(jax.device_put(jnp.asarray(scores), gpu), topk, plan, **kw)
    got = np.asarray(jax.device_get(got))
    with jax.default_device(jax.devices("cpu")[0]):
        ref_kw = dict(kw)
        if kv_lens is not None:
            ref_kw["kv_lens"] = jnp.asarray(np.asarray(kv_lens))
        want = np.asarray(msa_jax.reference.topk_select(jnp.asarray(scores), topk, plan, **ref_kw))
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.int32
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{len(bad)} mismatches, first at {bad[0]}: got {got[tuple(bad[0][:2])]}, want {want[tuple(bad[0][:2])]}"


def _prefill(qo_lens, kv_lens, heads):
    return msa_jax.plan_prefill(
        np.asarray(qo_lens, np.int32), np.asarray(kv_lens, np.int32),
        num_q_heads=heads, num_kv_heads=heads, head_dim=128, block_size=BS)


@pytest.mark.parametrize("topk", [1, 16, 64])
@pytest.mark.parametrize("local_blocks,sink_blocks", [(1, 0), (1, 1), (2, 2), (2, 0)])
@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
def test_prefill_mixed_lengths(topk, local_blocks, sink_blocks, kind):
    if local_blocks + sink_blocks > topk:
        pytest.skip("forced blocks exceed topk")
    rng = np.random.default_rng(1000 * topk + 10 * local_blocks + sink_blocks)
    # lengths not multiples of 128; some rows see fewer blocks than topk
    qo_lens = [37, 300, 1, 129, 5]
    kv_lens = [37, 70000, 130, 129 + 8000, 2100]
    nb = math.ceil(max(kv_lens) / BS)
    plan = _prefill(qo_lens, kv_lens, heads=2)
    scores = _scores(rng, (sum(qo_lens), 2, nb), kind)
    _check(scores, topk, plan, local_blocks, sink_blocks)


@pytest.mark.parametrize("nb", [8192, 16384])
@pytest.mark.parametrize("topk", [1, 16, 64])
@pytest.mark.parametrize("kind", ["normal", "ties", "nan_rows"])
def test_prefill_long_rows(nb, topk, kind):
    rng = np.random.default_rng(nb + topk)
    L = nb * BS - 77
    qo_lens = [40, 9]
    kv_lens = [L, 3 * BS + 5]
    plan = _prefill(qo_lens, kv_lens, heads=2)
    scores = _scores(rng, (sum(qo_lens), 2, nb), kind)
    local, sink = (1, 0) if topk == 1 else (2, 1)
    _check(scores, topk, plan, local, sink)


@pytest.mark.parametrize("topk", [16, 64])
def test_prefill_many_rows_1024_blocks(topk):
    rng = np.random.default_rng(7)
    qo_lens = [512, 256, 3]
    kv_lens = [1024 * BS, 700 * BS + 3, 1000]
    plan = _prefill(qo_lens, kv_lens, heads=4)
    scores = _scores(rng, (sum(qo_lens), 4, 1024), "normal")
    _check(scores, topk, plan, 1, 1)


@pytest.mark.parametrize("nb", [1, 3, 130, 1021])  # odd widths: scalar loads
def test_prefill_odd_block_counts(nb):
    rng = np.random.default_rng(nb)
    qo_lens = [3, 17]
    kv_lens = [nb * BS - 1, max(1, nb * BS // 2)]
    plan = _prefill(qo_lens, kv_lens, heads=1)
    scores = _scores(rng, (sum(qo_lens), 1, nb), "special")
    _check(scores, 16, plan, 1, 1)


def _decode(batch, max_kv, heads):
    return msa_jax.plan_decode(batch, max_kv, num_q_heads=heads, num_kv_heads=heads,
                               head_dim=128, page_size=BS)


@pytest.mark.parametrize("topk", [1, 16, 64])
@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
def test_decode_batch1_long_row_split(topk, kind):
    """Batch 1, 16384 blocks: the split (scratch + merge) path."""
    rng = np.random.default_rng(topk)
    nb = 16384
    plan = _decode(1, nb * BS, heads=4)
    kv_lens = np.asarray([nb * BS - 100], np.int32)
    scores = _scores(rng, (1, 4, nb), kind)
    local, sink = (1, 0) if topk == 1 else (2, 2)
    _check(scores, topk, plan, local, sink, kv_lens=kv_lens)


@pytest.mark.parametrize("topk", [16, 64])
def test_decode_batch_mixed_lengths(topk):
    rng = np.random.default_rng(3)
    nb = 8192
    plan = _decode(4, nb * BS, heads=2)
    kv_lens = np.asarray([nb * BS, 1, 5000, 20 * BS + 1], np.int32)  # includes nvis <= topk
    scores = _scores(rng, (4, 2, nb), "normal")
    _check(scores, topk, plan, 1, 2, kv_lens=kv_lens)

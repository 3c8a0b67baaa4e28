"""msa_jax.parallel on real GPUs (2 and 4): sharded prefill + decode == the single-GPU run."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from msa_jax import parallel
from msa_jax.nn import MSAAttention
from msa_cases import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.multigpu]

# GPU kernel constraints: bf16, head / index dims 64 or 128, blocks a multiple of 64.
HIDDEN, HQ, HKV, D, DI, BS = 256, 16, 4, 64, 64, 64
LENS = [200, 37, 129, 64]
MAX_LEN = 320


@pytest.fixture(scope="module")
def single():
    gpu0 = jax.devices("gpu")[0]
    with jax.default_device(gpu0):
        m = MSAAttention(HIDDEN, HQ, HKV, D, index_dim=DI, topk=2, block_size=BS, rotary_dim=32, sink_blocks=1,
                         dtype=jnp.bfloat16, cache_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        plan = m.plan_prefill(LENS)
        x = jax.random.normal(jax.random.key(1), (plan.total_q, HIDDEN), jnp.float32).astype(jnp.bfloat16)
        xd = jax.random.normal(jax.random.key(2), (2, len(LENS), HIDDEN), jnp.float32).astype(jnp.bfloat16)
        cache = m.init_cache(len(LENS), MAX_LEN)
        y, cache = jax.jit(lambda x, c: m(x, plan, c))(x, cache)
        dplan = m.plan_decode(len(LENS), MAX_LEN)
        step = jax.jit(lambda x, c: m.decode(x, c, dplan))
        outs = []
        for t in range(2):
            o, cache = step(xd[t], cache)
            outs.append(o)
    return m, plan, dplan, x, xd, y, outs


@pytest.mark.parametrize("dp,tp", [(2, 1), (1, 2), (2, 2), (4, 1), (1, 4)])
def test_gpu_sharded_matches_single_gpu(single, dp, tp):
    gpus = jax.devices("gpu")
    if len(gpus) < dp * tp:
        pytest.skip(f"needs {dp * tp} GPUs, {len(gpus)} visible")
    m, plan, dplan, x, xd, y, outs = single
    mesh = parallel.make_mesh(dp, tp, gpus[: dp * tp])
    graphdef, state = parallel.shard_module(m, mesh)
    caches = parallel.init_cache(m, mesh, len(LENS), MAX_LEN)
    got, caches = parallel.prefill(m, mesh, plan, caches)(state, x, caches)
    assert rel_err(got, y) < 1e-2
    step = parallel.decode_step(m, mesh, dplan, caches)
    assert "all-gather" not in step.lower(state, xd[0], caches).compile().as_text()
    for t in range(2):
        o, caches = step(state, xd[t], caches)
        assert rel_err(o, outs[t]) < 1e-2

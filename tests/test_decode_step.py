"""The MSA decode step (append -> index branch -> top-k -> sparse decode) as one jitted step."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msa_jax
from msa_jax import reference as ref
from msa_cases import rel_err

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "decode_step_graph.py"


def _state(dtype, B=3, Hq=8, Hkv=2, D=64, Di=64, ps=64, cap=1024, seed=0):
    rng = np.random.default_rng(seed)
    plan = msa_jax.plan_decode(B, cap, num_q_heads=Hq, num_kv_heads=Hkv, head_dim=D, page_size=ps)
    pages = B * plan.max_pages + 1
    mk = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32)).astype(dtype)
    caches = (mk(pages, Hkv, ps, D), mk(pages, Hkv, ps, D), mk(pages, 1, ps, Di))
    pt = jnp.asarray(rng.permutation(pages)[: B * plan.max_pages].reshape(B, -1).astype(np.int32))
    new = lambda: (mk(B, Hq, D), mk(B, Hkv, D), mk(B, Hkv, D), mk(B, Hkv, Di), mk(B, 1, Di))
    return plan, caches, pt, new


def _run_steps(dtype, steps=3):
    plan, (k, v, ki), pt, new = _state(dtype)
    lens = jnp.asarray([0, 64, 700], jnp.int32)
    rk, rv, rki, rlens = k, v, ki, lens
    step = jax.jit(lambda *a: msa_jax.sparse_decode_step(*a, plan, topk=3, sink_blocks=1))
    for _ in range(steps):
        args = new()
        o, k, v, ki, lens = step(*args, k, v, ki, pt, lens)
        ro, rk, rv, rki, rlens = ref.sparse_decode_step(*args, rk, rv, rki, pt, rlens, plan, topk=3, sink_blocks=1)
        assert rel_err(o, ro) < (1e-5 if dtype == jnp.float32 else 1e-2)
        np.testing.assert_array_equal(np.asarray(lens), np.asarray(rlens))
        np.testing.assert_array_equal(np.asarray(ki.astype(jnp.float32)), np.asarray(rki.astype(jnp.float32)))
    assert step._cache_size() == 1   # lengths changed every step: one compilation


def test_decode_step_cpu():
    _run_steps(jnp.float32)


@pytest.mark.gpu
def test_decode_step_gpu():
    _run_steps(jnp.bfloat16)


def _graph_run(tmp_path, name, flags):
    # This process already holds most of the GPU memory: the child allocates on demand.
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=os.pathsep.join(sys.path),
               XLA_PYTHON_CLIENT_PREALLOCATE="false")
    out = tmp_path / f"{name}.npz"
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, env=env, timeout=600)
    return np.load(out)


@pytest.mark.gpu
def test_decode_step_same_bits_with_command_buffers(tmp_path):
    """Command buffers on (custom calls included) or off: the step gives the same bits."""
    plain = _graph_run(tmp_path, "plain", "--xla_gpu_enable_command_buffer=")
    graph = _graph_run(tmp_path, "graph", "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL "
                                          "--xla_gpu_graph_min_graph_size=1")
    for key in ("o", "k", "lens"):
        np.testing.assert_array_equal(plain[key], graph[key])
    assert not np.isnan(graph["o"]).any(), "NaN (poison) left in o"
    assert int(graph["cache_size"]) == 1


@pytest.mark.gpu
@pytest.mark.gpu
def test_decode_step_is_captured_in_a_command_buffer(tmp_path):
    """XLA converts thunks to command buffers after HLO optimization, so the evidence is in
    XLA's dump of the thunk sequence (which names thunk kinds, not custom-call targets): the
    step's module (the one whose optimized HLO holds msa_decode) must run as ONE command buffer
    that holds every one of its custom calls (append x3, block_scores, topk_select, decode)."""
    dump = tmp_path / "dump"
    _graph_run(tmp_path, "graph", "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL "
                                  f"--xla_gpu_graph_min_graph_size=1 --xla_dump_to={dump} "
                                  "--xla_dump_hlo_as_text")
    hlos = [p for p in dump.glob("*gpu_after_optimizations.txt") if 'custom_call_target="msa_decode"' in
            p.read_text(errors="ignore")]
    assert len(hlos) == 1, sorted(p.name for p in dump.iterdir())
    module = hlos[0].name.split(".")[0]
    n_msa = hlos[0].read_text().count('custom_call_target="msa_')
    thunks = (dump / next(p.name for p in dump.glob(f"{module}.*thunk_sequence_after_thunk_passes.txt"))
              ).read_text().splitlines()
    thunks = [t for t in thunks if t.strip()]
    assert thunks[0].split()[1] == "kCommandBuffer", thunks        # one top-level thunk: the graph
    assert all(t.startswith(" ") for t in thunks[1:]), thunks      # everything else nested in it
    assert sum("kCustomCall" in t for t in thunks[1:]) == n_msa >= 6, thunks

"""examples/generate.py: ragged prefill + jitted greedy decode loop; full topk == dense layers;
--mesh DPxTP (msa_jax.parallel on 8 virtual CPU devices) == one device."""

import ast
import dataclasses
import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_example():
    name = "msa_generate_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "generate.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod      # dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_full_topk_matches_dense_layers():
    gen = load_example()
    cfg = dataclasses.replace(gen.CPU, new_tokens=6, prompt_lens=(37, 20, 50))
    sp_logits, sp_toks, sp_step_logits, _ = gen.run(cfg, full_topk=True, verbose=False)
    de_logits, de_toks, de_step_logits, _ = gen.run(cfg, dense=True, verbose=False)
    assert sp_step_logits.shape == (6, 3, cfg.vocab)
    np.testing.assert_allclose(np.asarray(sp_logits), np.asarray(de_logits), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sp_step_logits), np.asarray(de_step_logits), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(sp_toks), np.asarray(de_toks))


def test_cli_runs_on_cpu(capsys):
    """Default topk (3 of 5 blocks: really sparse) with an fp8 cache."""
    gen = load_example()
    assert gen.main(["--size", "cpu", "--new-tokens", "4", "--repeats", "1", "--fp8-cache"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "prefill 107 tokens" in out and "MSA topk=3" in out


MESH_NEW_TOKENS = 6


def _cpu_devices(n=8):
    devices = jax.devices("cpu")
    if len(devices) < n:
        pytest.skip(f"needs XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return devices


@pytest.fixture(scope="module")
def single_device_run():
    """The unsharded oracle: default CPU config, greedy, seed 0."""
    gen = load_example()
    cfg = dataclasses.replace(gen.CPU, new_tokens=MESH_NEW_TOKENS)
    with jax.default_device(jax.devices("cpu")[0]):
        return gen.run(cfg, verbose=False)


def test_mesh_4x2_matches_single_device(single_device_run):
    """dp=4 (3 requests + 1 dummy), tp=2: same greedy tokens, logits up to the tp psum's rounding."""
    gen = load_example()
    cfg = dataclasses.replace(gen.CPU, new_tokens=MESH_NEW_TOKENS)
    p1, t1, l1, _ = single_device_run
    p2, t2, l2, _ = gen.run(cfg, verbose=False, mesh=(4, 2), devices=_cpu_devices())
    assert t2.shape == t1.shape == (MESH_NEW_TOKENS, len(cfg.prompt_lens))
    np.testing.assert_array_equal(np.asarray(t2), np.asarray(t1))
    np.testing.assert_allclose(np.asarray(p2), np.asarray(p1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(l2), np.asarray(l1), rtol=1e-4, atol=1e-4)


def test_cli_mesh_2x4_prints_single_device_tokens(single_device_run, capsys):
    _cpu_devices()
    gen = load_example()
    assert gen.main(["--size", "cpu", "--new-tokens", str(MESH_NEW_TOKENS), "--repeats", "1",
                     "--mesh", "2x4"]) == 0
    out = capsys.readouterr().out
    assert "mesh dp=2 x tp=4 (8 cpu devices)" in out and "prefill 107 tokens" in out
    line = next(l for l in out.splitlines() if l.startswith("first tokens:"))
    printed = ast.literal_eval(line.split(":", 1)[1].strip())
    assert printed == np.asarray(single_device_run[1]).T.tolist()


def test_mesh_decode_loop_communicates_only_the_tp_psum():
    """The sharded generate loop (2x4) compiles with no all-gather: caches stay sharded."""
    devices = _cpu_devices()
    gen = load_example()
    cfg = gen.CPU
    model = gen.Model(cfg)
    lens, max_len = list(cfg.prompt_lens) + [1], max(cfg.prompt_lens) + 2
    _, dplan = gen.attn_plans(model, lens, max_len)
    mesh = gen.parallel.make_mesh(2, 4, devices)
    module = gen.PerToken(model)
    graphdef, state = gen.parallel.shard_module(module, mesh)
    caches = gen.parallel.init_cache(model, mesh, len(lens), max_len)
    step = gen.parallel.decode_step(module, mesh, dplan, caches, donate=False)
    generate = gen.make_generate(graphdef, dplan, 2, cfg.vocab, step=step)
    hlo = generate.lower(state, jax.numpy.zeros((len(lens),), jax.numpy.int32), caches).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo


@pytest.mark.parametrize("spec, msg", [("2x3", "tp (3) must divide num_kv_heads"), ("4x4", "needs 16"),
                                       ("2by4", "DPxTP")])
def test_cli_mesh_errors(spec, msg, capsys):
    gen = load_example()
    with pytest.raises(SystemExit):
        gen.main(["--size", "cpu", "--mesh", spec])
    assert msg in capsys.readouterr().err

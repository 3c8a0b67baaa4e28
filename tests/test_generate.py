"""examples/generate.py: ragged prefill + jitted greedy decode loop; full topk == dense layers."""

import dataclasses
import importlib.util
import pathlib
import sys

import numpy as np

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

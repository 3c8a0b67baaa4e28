"""The demo and the benchmark CLI stay alive (tiny CPU runs)."""

import importlib.util
import pathlib
import sys

import msa_jax.demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_on_cpu(capsys):
    assert msa_jax.demo.main(["--cpu", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "error vs reference sparse attention" in out and "keys attended" in out
    err_line = next(l for l in out.splitlines() if l.startswith("error vs reference sparse"))
    assert float(err_line.split(":")[-1]) < 1e-4


def test_bench_cli_cpu_sweep(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_sparse_attention_ops", ROOT / "benchmarks" / "bench_sparse_attention_ops.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_sparse_attention_ops"] = bench   # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "out.tsv"
    rc = bench.main(["--cpu", "--sections", "topk,index,prefill", "--topk-shapes", "64x8", "--topk-k", "4",
                     "--seqs", "256", "--dry-run-ms", "1", "--repeat-ms", "5", "-o", str(out),
                     "--plot", str(tmp_path / "plot.png")])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("section\tshape\tdtype\tmedian_ms")
    sections = {l.split("\t")[0] for l in lines[1:]}
    assert {"topk", "topk_copy", "index"} <= sections
    assert (tmp_path / "plot.png").stat().st_size > 1000

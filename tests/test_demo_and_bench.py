"""The demo and the benchmark CLI stay alive (tiny CPU runs)."""

import importlib.util
import pathlib
import sys

import pytest

import msa_jax.demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_on_cpu(capsys):
    assert msa_jax.demo.main(["--cpu", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "error vs reference sparse attention" in out and "keys attended" in out
    err_line = next(l for l in out.splitlines() if l.startswith("error vs reference sparse"))
    assert float(err_line.split(":")[-1]) < 1e-4


def _load_bench():
    if "bench_sparse_attention_ops" in sys.modules:
        return sys.modules["bench_sparse_attention_ops"]
    spec = importlib.util.spec_from_file_location("bench_sparse_attention_ops",
                                                  ROOT / "benchmarks" / "bench_sparse_attention_ops.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_sparse_attention_ops"] = bench   # dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


def test_bench_cli_cpu_sweep(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "out.tsv"
    rc = bench.main(["--cpu", "--sections", "topk,index,prefill", "--topk-shapes", "64x8", "--topk-k", "4",
                     "--seqs", "256", "--dry-run-ms", "1", "--repeat-ms", "5", "--batch-ms", "5", "-o", str(out),
                     "--plot", str(tmp_path / "plot.png")])
    assert rc == 0
    assert bench.BATCH_MS == 100.0   # --batch-ms applies to that run only
    lines = out.read_text().splitlines()
    assert lines[0].startswith("section\tshape\tdtype\tmedian_ms")
    sections = {l.split("\t")[0] for l in lines[1:]}
    assert {"topk", "topk_copy", "index"} <= sections
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_bench_sparse_vs_dense_row(tmp_path):
    """--sparse-vs-dense adds, per length, a sparse_prefill row whose baseline is our dense kernel
    on the same inputs (the issue's 70% target compares the two rates at one length)."""
    bench = _load_bench()
    out = tmp_path / "out.tsv"
    rc = bench.main(["--cpu", "--sections", "sparse_prefill", "--seqs", "256", "--sparse-vs-dense",
                     "--sparse-baseline-max-seq", "1", "--dry-run-ms", "1", "--repeat-ms", "5",
                     "--batch-ms", "5", "-o", str(out)])
    assert rc == 0
    rows = [l.split("\t") for l in out.read_text().splitlines()[1:]]
    dense = [r for r in rows if r[0] == "sparse_prefill" and r[8].startswith("ours_dense(")]
    assert len(dense) == 1 and float(dense[0][9]) > 0 and float(dense[0][10]) > 0


def test_bench_e2e_index_chunk_row(tmp_path):
    """--index-chunk chunks the index branch only of e2e rows longer than it, and names the chunk
    in their shape (the 1M row needs it: one pass would hold 128 GiB of block scores)."""
    bench = _load_bench()
    out = tmp_path / "out.tsv"
    rc = bench.main(["--cpu", "--sections", "e2e", "--seqs", "200,300", "--index-chunk", "256",
                     "--dry-run-ms", "1", "--repeat-ms", "5", "--batch-ms", "5", "-o", str(out)])
    assert rc == 0
    shapes = [l.split("\t")[1] for l in out.read_text().splitlines()[1:]]
    assert len(shapes) == 2
    assert "index_chunk" not in shapes[0] and shapes[1].endswith(",index_chunk=256")


def test_plain_xla_sparse_decode_baseline_is_msa():
    """The sparse_decode baseline computes the same thing as the MSA decode step."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import msa_jax
    from msa_jax import reference as ref

    bench = _load_bench()
    rng = np.random.default_rng(0)
    B, L, hq, hkv, d, di = 2, 700, 8, 2, 64, 64
    q, k, v, pt, _, ex = bench._paged_decode_inputs(jax.devices("cpu")[0], B, L, hq, hkv, d, jnp.float32, rng,
                                                    index_dim=di)
    q = q.astype(jnp.float32)
    lens = jnp.asarray([700, 300], jnp.int32)
    plan = msa_jax.plan_decode(B, L, num_q_heads=hq, num_kv_heads=hkv, head_dim=d)
    ids = ref.topk_select(ref.block_scores(ex["q_idx"], ex["k_idx"], plan, page_table=pt, kv_lens=lens), 3, plan,
                          kv_lens=lens)
    want = ref.decode(q, k, v, pt, lens, plan, block_ids=ids)
    got = bench.xla_sparse_decode_step(q, ex["q_idx"], ex["k_idx"], k, v, pt, lens, k_sel=3, page=128)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bench_batch_ms_must_be_positive():
    bench = _load_bench()
    with pytest.raises(SystemExit):
        bench.parse(["--cpu", "--batch-ms", "0"])

"""The GPU pass schedule of msa_sparse_prefill, checked on the CPU (no kernel runs here).

* The wrapper's rules (q_chunk, q_ranges, scratch size: msa_jax/sparse_prefill.py) against
  hand-computed values and against the C++ launcher's own functions
  (cuda/sparse_prefill/sparse_prefill.h, compiled with the host compiler when the CUDA headers
  are found).
* A host model of the reverse-CSR build (cuda/sparse_prefill/csr_build.cu: setup, mark,
  scan_fill tile by tile, with the kernels' index arithmetic) against a brute-force inversion of
  random block ids, for q_ranges R = 1 and R > 1: every valid (row, kv head, slot) gives exactly
  one entry of one work item of its (head, block), whatever R; the items come in
  (head, query range, block) order and touch the rows of their range only.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess

import numpy as np
import pytest

sp = importlib.import_module("msa_jax.sparse_prefill")   # the module (msa_jax.sparse_prefill is also the op)

# ----------------------------------------------------------------- the wrapper's rules


def _old_scratch_bytes(T, Hq, Hkv, D, K, total_blocks, q_chunk, B):
    """The scratch size before query ranges (q_ranges = 1 must keep it)."""
    a = sp._a256
    tc = min(q_chunk, max(T, 1))
    N = Hkv * total_blocks
    W = -(-tc // 32)
    E = tc * Hkv * K
    P = max(1, 128 // (Hq // Hkv))
    WI = -(-E // P) + min(N, E)
    return (a(4 * (4 * B + 2)) + a(4 * N) + a(4 * (N + 1)) + a(4 * N * W) + a(4 * E) + 256 + a(32 * WI)
            + a(4 * tc * Hq * K) + a(2 * tc * Hq * K * D))


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("MSA_JAX_SPARSE_PREFILL_Q_RANGES", raising=False)
    monkeypatch.delenv("MSA_JAX_SPARSE_PREFILL_Q_CHUNK", raising=False)


def _qr(T, Hq, Hkv, D, q_chunk, K=16, nb=1, bs=128, kv_bytes=2):
    return sp.sparse_prefill_q_ranges(T, Hq, Hkv, D, K, q_chunk, nb, bs, kv_bytes)


def test_q_ranges_rule(no_env):
    qc, qr = sp.sparse_prefill_q_chunk, _qr
    # Q working set (nb = 1: the K/V bound does not bind). 64q/4kv, d128, k16: 8192-row passes;
    # 8192 rows x 16 heads x 256 B = 32 MiB of Q per kv head.
    for T in (32768, 131072, 524288):
        assert qc(T, 64, 128, 16) == 8192
        assert qr(T, 64, 4, 128, 8192) == 4
    assert qr(32768, 64, 8, 128, 8192) == 2        # G = 8: 16 MiB
    assert qr(32768, 64, 64, 128, 8192) == 1       # G = 1: 2 MiB
    assert qr(32768, 64, 4, 64, 8192) == 2         # D = 64: 16 MiB
    assert qr(8193, 64, 4, 128, 8192) == 4
    assert qr(2049, 64, 4, 128, 8192) == 2         # one pass of 2049 rows: ceil(2049 / 2048)
    assert qr(2048, 64, 4, 128, 8192) == 1
    assert qr(100, 64, 4, 128, 8192) == 1
    assert qr(0, 64, 4, 128, 8192) == 1
    assert qr(40000, 2, 2, 64, qc(40000, 2, 64, 4), K=4) == 1
    # G = 128, D = 128, one slot: 65536-row passes, 256 rows per 8 MiB: capped at 16.
    assert qc(65536, 128, 128, 1) == 65536
    assert qr(65536, 128, 1, 128, 65536, K=1) == 16
    assert qr(4096, 128, 1, 128, 65536, K=1) == 16 and qr(4095, 128, 1, 128, 65536, K=1) == 16
    assert qr(3841, 128, 1, 128, 65536, K=1) == 16 and qr(3840, 128, 1, 128, 65536, K=1) == 15
    # The K/V re-read bound: (R - 1) sweeps of Hkv x total_blocks K/V blocks <= half the Q gathers
    # (8192 x 64 x 128 x 2 x 16 = 2 GiB per pass). total_blocks = ceil(T / 128) + 1 (dense, B = 1).
    nb = lambda T, bs=128: -(-T // bs) + 1  # noqa: E731
    assert qr(32768, 64, 4, 128, 8192, nb=nb(32768)) == 4       # 67 MB per sweep
    assert qr(131072, 64, 4, 128, 8192, nb=nb(131072)) == 4     # 269 MB per sweep: 3 extra <= 1 GiB
    assert qr(262144, 64, 4, 128, 8192, nb=nb(262144)) == 2     # 537 MB
    assert qr(524288, 64, 4, 128, 8192, nb=nb(524288)) == 1     # 1.07 GB > 1 GiB
    assert qr(524288, 64, 4, 128, 8192, nb=nb(524288), kv_bytes=1) == 2   # fp8 K/V: half the bytes
    assert qr(32768, 64, 4, 128, 8192, nb=nb(32768, 64), bs=64) == 4
    assert qr(32768, 64, 4, 128, 8192, nb=0) == 4                  # no blocks: no bound
    # Bounds: 1 <= R <= min(16, ceil(Tc / 32)); the smallest R that fits 8 MiB unless bounded.
    rng = np.random.default_rng(1)
    for _ in range(300):
        hkv, g, d = int(rng.integers(1, 9)), int(rng.choice([1, 4, 16, 128])), int(rng.choice([64, 128]))
        T, q_chunk, K = int(rng.integers(0, 10 ** 6)), int(rng.integers(1, 70000)), int(rng.integers(1, 33))
        nbl, bs, kvb = int(rng.integers(0, 10000)), int(rng.choice([64, 128])), int(rng.choice([1, 2]))
        R = qr(T, hkv * g, hkv, d, q_chunk, K=K, nb=nbl, bs=bs, kv_bytes=kvb)
        R0 = qr(T, hkv * g, hkv, d, q_chunk, K=K, nb=0)
        tc = min(q_chunk, max(T, 1))
        assert 1 <= R <= R0 <= min(16, -(-tc // 32))
        assert R0 == 1 or -(-tc // (R0 - 1)) * g * d * 2 > (8 << 20)           # the smallest R that fits
        assert -(-tc // R0) * g * d * 2 <= (8 << 20) or R0 == 16
        kvs = hkv * nbl * bs * d * 2 * kvb
        assert R == 1 or 2 * (R - 1) * kvs <= tc * hkv * g * d * 2 * K          # the K/V bound
        assert R == R0 or 2 * R * kvs > tc * hkv * g * d * 2 * K


def test_q_ranges_env_override(monkeypatch):
    monkeypatch.setenv("MSA_JAX_SPARSE_PREFILL_Q_RANGES", "3")
    assert _qr(32768, 64, 4, 128, 8192) == 3
    assert _qr(100, 64, 4, 128, 8192) == 3   # the layout clamps it (see below)
    assert _qr(524288, 64, 4, 128, 8192, nb=4097) == 3
    monkeypatch.setenv("MSA_JAX_SPARSE_PREFILL_Q_RANGES", "0")
    assert _qr(32768, 64, 4, 128, 8192) == 1
    monkeypatch.setenv("MSA_JAX_SPARSE_PREFILL_Q_RANGES", "")
    assert _qr(32768, 64, 4, 128, 8192) == 4


SCRATCH_CASES = [
    # T, Hq, Hkv, D, K, total_blocks, q_chunk, B
    (32768, 64, 4, 128, 16, 257, 8192, 1),
    (131072, 64, 4, 128, 16, 1025, 8192, 1),
    (1000, 16, 2, 64, 6, 40, 333, 3),
    (100, 8, 2, 128, 4, 3, 8192, 2),
    (40000, 2, 2, 64, 4, 313, 40000, 1),
    (0, 8, 2, 64, 4, 1, 8192, 1),
    (1, 8, 8, 64, 1, 1, 1, 1),
]


@pytest.mark.parametrize("case", SCRATCH_CASES)
def test_scratch_bytes_q_ranges(case):
    T, Hq, Hkv, D, K, nb, qc, B = case
    sb = sp.sparse_prefill_scratch_bytes
    assert sb(*case) == sb(*case, 1) == _old_scratch_bytes(*case)
    W = -(-min(qc, max(T, 1)) // 32)
    for R in (2, 3, 4, 7, 16):
        Wr = -(-W // min(R, W))
        Re = -(-W // Wr)
        assert Re <= min(R, W) and (Re - 1) * Wr < W <= Re * Wr
        # Only the lists (x Re, Wr words each) and the work-item bound change.
        got = sb(*case, R)
        assert got >= sb(*case)
        assert sb(*case, R) == sb(*case, Re)            # no empty trailing range
    assert sb(*case, 10 ** 6) == sb(*case, W)           # clamped to W ranges of one word


def test_scratch_bytes_32k_value():
    # 64q/4kv, d128, k16, 32K: R = 4 -> Wr = 64, N = 4 * 4 * 257 lists.
    a = sp._a256
    tc, N, Wr, E, P = 8192, 4 * 4 * 257, 64, 8192 * 4 * 16, 8
    WI = -(-E // P) + min(N, E)
    want = (a(4 * 6) + a(4 * N) + a(4 * (N + 1)) + a(4 * N * Wr) + a(4 * E) + 256 + a(32 * WI)
            + a(4 * tc * 64 * 16) + a(2 * tc * 64 * 16 * 128))
    assert sp.sparse_prefill_scratch_bytes(32768, 64, 4, 128, 16, 257, 8192, 1, 4) == want


def _cuda_include():
    for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if d and os.path.exists(os.path.join(d, "include", "cuda_runtime_api.h")):
            return os.path.join(d, "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        d = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include")
        if os.path.exists(os.path.join(d, "cuda_runtime_api.h")):
            return d
    return None


def test_rules_mirror_the_launcher(tmp_path, no_env):
    """sparse_prefill_q_chunk / q_ranges / scratch_bytes equal the C++ functions of
    cuda/sparse_prefill/sparse_prefill.h (compiled here with the host compiler)."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    inc = _cuda_include()
    if cxx is None or inc is None:
        pytest.skip("needs a host C++ compiler and the CUDA headers")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(repo, "cuda", "sparse_prefill", "sparse_prefill.h")):
        pytest.skip("source tree not found")
    rng = np.random.default_rng(0)
    cases = [c + (R, 128, 2) for c in SCRATCH_CASES for R in (0, 1, 2, 3, 4, 16, 1000)]
    cases += [(T, 64, 4, 128, 16, -(-T // bs) + 1, 8192, 1, 1, bs, kvb)
              for T in (32768, 131072, 262144, 524288) for bs in (64, 128) for kvb in (1, 2)]
    for _ in range(100):
        hkv = int(rng.choice([1, 2, 4, 8]))
        g = int(rng.choice([1, 2, 4, 8, 16, 64, 128]))
        T = int(rng.integers(0, 300000))
        cases.append((T, hkv * g, hkv, int(rng.choice([64, 128])), int(rng.integers(1, 33)),
                      int(rng.integers(0, 3000)), int(rng.integers(1, 20000)), int(rng.integers(0, 9)),
                      int(rng.integers(1, 40)), int(rng.choice([64, 128])), int(rng.choice([1, 2]))))
    src = tmp_path / "mirror.cc"
    src.write_text("""
#include <cstdio>
#include "cuda/sparse_prefill/sparse_prefill.h"
using namespace msa::cuda;
int main() {
  long long T, Hq, Hkv, D, K, nb, qc, B, R, bs, kvb;
  while (std::scanf("%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld", &T, &Hq, &Hkv, &D, &K, &nb, &qc, &B,
                    &R, &bs, &kvb) == 11)
    std::printf("%lld %lld %lld\\n", (long long)sparse_prefill_q_chunk(T, Hq, D, K),
                (long long)sparse_prefill_q_ranges(T, Hq, Hkv, D, K, qc, nb, bs, kvb),
                (long long)sparse_prefill_scratch_bytes(T, Hq, Hkv, D, K, nb, qc, B, R));
  return 0;
}
""")
    exe = tmp_path / "mirror"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{repo}", f"-I{inc}", str(src), "-o", str(exe)], check=True,
                   timeout=300)
    inp = "".join(" ".join(map(str, c)) + "\n" for c in cases)
    out = subprocess.run([str(exe)], input=inp, capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [tuple(map(int, line.split())) for line in out.splitlines()]
    assert len(rows) == len(cases)
    for c, (cq, cr, cs) in zip(cases, rows):
        T, Hq, Hkv, D, K, nb, qc, B, R, bs, kvb = c
        assert cq == sp.sparse_prefill_q_chunk(T, Hq, D, K), c
        assert cr == sp.sparse_prefill_q_ranges(T, Hq, Hkv, D, K, qc, nb, bs, kvb), c
        assert cs == sp.sparse_prefill_scratch_bytes(T, Hq, Hkv, D, K, nb, qc, B, R), c


# ----------------------------------------------------------------- host model of the CSR build

TILE_WORDS, MAX_LISTS_PER_TILE = 1024, 256   # csr_build.cu: kTileWords, kMaxListsPerTile


def _layout(T, Hq, Hkv, K, nb, q_chunk, q_ranges):
    tc = min(q_chunk, max(T, 1))
    W = -(-tc // 32)
    Wr = -(-W // min(q_ranges, W))
    R = -(-W // Wr)
    N = Hkv * R * nb
    E = tc * Hkv * K
    P = max(1, 128 // (Hq // Hkv))
    lpt = min(MAX_LISTS_PER_TILE, max(1, TILE_WORDS // Wr))
    return dict(tc=tc, Wr=Wr, R=R, N=N, E=E, P=P, lpt=lpt, n_tiles=-(-N // lpt))


def _setup(q_indptr, kv_indptr, kv_lens, *, T, nb, bs, paged, cap_paged, dense_rows):
    B = len(kv_lens)
    qe = np.clip(np.maximum.accumulate(np.asarray(q_indptr, np.int64)), 0, T)
    kvb, ln, nblk = np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B, np.int64)
    for b in range(B):
        if paged:
            cap = cap_paged
        else:
            kb = min(max(kv_indptr[b], 0), dense_rows)
            ke = min(max(kv_indptr[b + 1], kb), dense_rows)
            kvb[b], cap = kb, ke - kb
        ln[b] = min(max(kv_lens[b], 0), cap)
        nblk[b] = -(-ln[b] // bs)
    boff = np.clip(np.concatenate([[0], np.cumsum(nblk)]), 0, nb)
    return qe, ln, boff


def _seq_of_row(qe, t):
    B = len(qe) - 1
    if B <= 0 or t < qe[0] or t >= qe[B]:
        return -1
    return int(np.searchsorted(qe, t, side="right") - 1)


def _seq_of_block(boff, gb):
    lo, hi = 0, len(boff) - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if boff[mid] <= gb:
            lo = mid
        else:
            hi = mid
    return lo


def _visible(ids, qe, ln, boff, bs, causal):
    """[T, Hkv, K] bool: the slots mark keeps (valid, visible, first slot of its id), and the
    global block of each slot's id."""
    T, Hkv, K = ids.shape
    vis = np.zeros(T, np.int64)
    gbase = np.zeros(T, np.int64)
    for t in range(T):
        b = _seq_of_row(qe, t)
        if b < 0:
            continue
        L, ql = ln[b], qe[b + 1] - qe[b]
        pos = L - ql + (t - qe[b])
        nbk = boff[b + 1] - boff[b]
        gbase[t] = boff[b]
        vis[t] = nbk if not causal else (0 if pos < 0 else min(pos // bs + 1, nbk))
    ok = (ids >= 0) & (ids < vis[:, None, None])
    for s in range(1, K):
        ok[:, :, s] &= ~(ids[:, :, :s] == ids[:, :, s:s + 1]).any(axis=2)
    return ok, gbase


def csr_model(ids, lay, qe, ln, boff, *, nb, bs, causal, Hkv, K):
    """Per pass: (work items [(list, g, b, c, e_begin, e_count)], entries), as mark + scan_fill
    build them (tile by tile, bitmap words in the kernels' layout)."""
    T = ids.shape[0]
    tc, Wr, R, N, P, lpt = lay["tc"], lay["Wr"], lay["R"], lay["N"], lay["P"], lay["lpt"]
    ok, gbase = _visible(ids, qe, ln, boff, bs, causal)
    bitmap = np.zeros(N * Wr, np.uint64)  # setup's memset; uint64 holding 32-bit words
    passes = []
    for t0 in range(0, T, tc):
        tcp = min(tc, T - t0)
        # mark: bit of (row, g, slot) -> list (g, r, gbase + c), word (tl % 32 Wr) / 32.
        rpr = Wr * 32
        for tl in range(tcp):
            t = t0 + tl
            r, tr = divmod(tl, rpr)
            assert r < R
            for g in range(Hkv):
                for s in range(K):
                    if ok[t, g, s]:
                        l = (g * R + r) * nb + gbase[t] + ids[t, g, s]
                        assert 0 <= l < N
                        bitmap[l * Wr + (tr >> 5)] |= np.uint64(1 << (tr & 31))
        # scan_fill, tile by tile (the look-back prefix is the running sum over tiles).
        items, entries = [], []
        for tile in range(lay["n_tiles"]):
            l0 = tile * lpt
            nl = min(lpt, N - l0)
            words = bitmap[l0 * Wr:(l0 + nl) * Wr]
            counts = [sum(bin(int(x)).count("1") for x in words[i * Wr:(i + 1) * Wr]) for i in range(nl)]
            e_tile = len(entries)
            excl = 0
            for i in range(nl):
                l = l0 + i
                gb, gr = l % nb, l // nb
                g, r = gr // R, gr % R
                b = _seq_of_block(boff, gb)
                c = gb - boff[b]
                n = counts[i]
                for kk in range(-(-n // P)):
                    items.append((l, g, r, b, c, e_tile + excl + kk * P, min(P, n - kk * P)))
                excl += n
            for f, x in enumerate(words):
                x = int(x)
                if not x:
                    continue
                li = f // Wr
                gr = (l0 + li) // nb
                roff = (gr % R) * Wr * 32
                g = gr // R
                c = (l0 + li) % nb - boff[_seq_of_block(boff, (l0 + li) % nb)]
                for bit in range(32):
                    if x >> bit & 1:
                        tl = min(roff + (f - li * Wr) * 32 + bit, tcp - 1)
                        row = ids[t0 + tl, g]
                        slot = int(np.nonzero(row == c)[0][0])
                        entries.append(tl * K + slot)
            bitmap[l0 * Wr:(l0 + nl) * Wr] = 0   # cleared for the next pass
        assert not bitmap.any()
        e = tcp * Hkv * K
        assert len(items) <= -(-e // P) + min(N, e)
        assert len(entries) <= lay["E"]
        passes.append((t0, items, entries))
    return passes, ok, gbase


def _brute(ids, ok, gbase, boff, t0, tcp):
    """Sorted (g, b, c, t_local, slot) of the valid slots of rows [t0, t0 + tcp)."""
    out = []
    for tl in range(tcp):
        t = t0 + tl
        for g, s in zip(*np.nonzero(ok[t])):
            gb = gbase[t] + ids[t, g, s]
            b = _seq_of_block(boff, gb)
            out.append((int(g), b, int(gb - boff[b]), tl, int(s)))
    return sorted(out)


MODEL_CASES = [
    # qo_lens, kv_lens, Hq, Hkv, K, block_size, paged, causal, q_chunk
    ([300, 77, 1], [300, 500, 129], 8, 2, 6, 128, False, True, 100000),
    ([513, 200], [1000, 200], 32, 2, 8, 128, True, True, 100000),
    ([300, 70], [450, 70], 8, 2, 6, 64, False, True, 100000),
    ([333, 90], [500, 400], 16, 2, 4, 128, False, True, 128),     # several passes, last one short
    ([333, 90], [500, 400], 4, 2, 4, 64, True, True, 33),          # passes of 33 rows: W = 2
    ([700, 300], [900, 300], 64, 4, 8, 128, False, False, 100000),  # not causal
    ([1200], [1500], 16, 1, 3, 64, False, True, 1100),             # Tc not a multiple of 32 R
]


@pytest.mark.parametrize("ranges", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("case", range(len(MODEL_CASES)))
def test_csr_model_matches_brute_force(case, ranges):
    qo, kv, Hq, Hkv, K, bs, paged, causal, q_chunk = MODEL_CASES[case]
    rng = np.random.default_rng(case * 10 + ranges)
    B, T = len(qo), sum(qo)
    q_indptr = np.concatenate([[0], np.cumsum(qo)])
    kv_indptr = np.concatenate([[0], np.cumsum(kv)])
    max_pages = max(-(-x // bs) for x in kv) + 2
    nb = sp.sparse_prefill_total_blocks(paged, B, bs, int(kv_indptr[-1]), max_pages)
    nblk = -(-max(kv) // bs)
    ids = rng.integers(0, nblk, size=(T, Hkv, K)).astype(np.int64)
    r = rng.random(ids.shape)
    ids[r < 0.15] = -1
    ids[(r >= 0.15) & (r < 0.2)] = nblk + 3
    ids[(r >= 0.2) & (r < 0.23)] = -7
    ids[: T // 7, :, 0] = 0                      # a hot block: long lists
    lay = _layout(T, Hq, Hkv, K, nb, q_chunk, ranges)
    qe, ln, boff = _setup(q_indptr, kv_indptr, kv, T=T, nb=nb, bs=bs, paged=paged, cap_paged=max_pages * bs,
                          dense_rows=int(kv_indptr[-1]))
    passes, ok, gbase = csr_model(ids, lay, qe, ln, boff, nb=nb, bs=bs, causal=causal, Hkv=Hkv, K=K)
    assert len(passes) == -(-T // lay["tc"])
    rows_per_range = lay["Wr"] * 32
    for t0, items, entries in passes:
        tcp = min(lay["tc"], T - t0)
        got = []
        for (l, g, r, b, c, e0, n) in items:
            assert 1 <= n <= lay["P"] and e0 + n <= len(entries)
            tls = [entries[e] // K for e in range(e0, e0 + n)]
            assert tls == sorted(tls) and len(set(tls)) == n          # rows ascending, distinct
            assert all(r * rows_per_range <= x < (r + 1) * rows_per_range for x in tls)  # its range only
            got += [(g, b, c, entries[e] // K, entries[e] % K) for e in range(e0, e0 + n)]
        # Items in (g, r, block) list order; entries contiguous in item order.
        keys = [(g, r, boff[b] + c) for (l, g, r, b, c, e0, n) in items]
        assert keys == sorted(keys)
        assert [it[0] for it in items] == sorted(it[0] for it in items)
        assert [it[5] for it in items] == sorted(it[5] for it in items)
        assert sum(it[6] for it in items) == len(entries)
        assert sorted(got) == _brute(ids, ok, gbase, boff, t0, tcp)


def test_csr_model_one_range_is_the_old_order():
    """R = 1: lists (g, block) as before, every item's rows from the whole pass."""
    qo, kv, Hq, Hkv, K, bs, paged, causal, q_chunk = MODEL_CASES[0]
    rng = np.random.default_rng(3)
    B, T = len(qo), sum(qo)
    q_indptr = np.concatenate([[0], np.cumsum(qo)])
    kv_indptr = np.concatenate([[0], np.cumsum(kv)])
    nb = sp.sparse_prefill_total_blocks(False, B, bs, int(kv_indptr[-1]), 0)
    ids = rng.integers(0, 4, size=(T, Hkv, K)).astype(np.int64)
    lay = _layout(T, Hq, Hkv, K, nb, q_chunk, 1)
    assert lay["R"] == 1 and lay["N"] == Hkv * nb and lay["Wr"] == -(-T // 32)
    qe, ln, boff = _setup(q_indptr, kv_indptr, kv, T=T, nb=nb, bs=bs, paged=False, cap_paged=0,
                          dense_rows=int(kv_indptr[-1]))
    passes, _, _ = csr_model(ids, lay, qe, ln, boff, nb=nb, bs=bs, causal=causal, Hkv=Hkv, K=K)
    (_, items, _), = passes
    assert all(l == g * nb + boff[b] + c for (l, g, r, b, c, e0, n) in items)

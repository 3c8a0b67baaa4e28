"""MSA main branch: block-sparse prefill attention (``msa_sparse_prefill``)."""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp

from msa_jax import _common as c
from msa_jax import _ffi  # noqa: F401
from msa_jax.plan import PrefillPlan

__all__ = ["sparse_prefill"]


# GPU pass schedule (mirror of cuda/sparse_prefill/sparse_prefill.h): queries are
# processed in passes of q_chunk rows so that the per-slot partial O of one pass
# stays within 2 GiB (fewer passes: each has a fixed cost); the scratch output
# holds one pass's bitmaps, look-back state, work list and partials. Shapes only.
# MSA_JAX_SPARSE_PREFILL_Q_CHUNK overrides q_chunk (tests use it to force several
# passes). Each pass's work is ordered by (kv head, query range, KV block) with
# q_ranges ranges of rows per pass, so that the query rows the main kernel
# gathers at once stay in L2; MSA_JAX_SPARSE_PREFILL_Q_RANGES overrides
# q_ranges (A/B runs; the outputs are the same bits for every value).
def _a256(x: int) -> int:
    return -(-x // 256) * 256


def sparse_prefill_total_blocks(paged: bool, batch: int, block_size: int, dense_rows: int, max_pages: int) -> int:
    return batch * max_pages if paged else -(-dense_rows // block_size) + batch


def sparse_prefill_q_chunk(T: int, Hq: int, D: int, K: int) -> int:
    env = os.environ.get("MSA_JAX_SPARSE_PREFILL_Q_CHUNK")
    if env:
        return max(1, int(env))
    per_q = Hq * K * D * 2
    c = max(32, (2**31 // per_q) // 32 * 32)
    return max(1, min(T, c))


_Q_RANGE_BYTES = 8 << 20   # one KV head's query rows of one range (kSparsePrefillQRangeBytes)
_MAX_Q_RANGES = 16         # kSparsePrefillMaxQRanges


def sparse_prefill_q_ranges(T: int, Hq: int, Hkv: int, D: int, K: int, q_chunk: int, total_blocks: int,
                            block_size: int, kv_bytes: int = 2) -> int:
    """Query ranges per pass: the smallest R whose ceil(Tc / R) rows x G heads x D x 2 bytes of one
    KV head's queries fit 8 MiB, in [1, min(16, ceil(Tc / 32))]; then at most 1 + Qg / (2 KVs) so
    that the K/V blocks each extra range re-reads (KVs = Hkv x total_blocks x block_size x D x 2 x
    kv_bytes per sweep) stay below half of the pass's Q gathers (Qg = Tc x Hq x D x 2 x K)."""
    env = os.environ.get("MSA_JAX_SPARSE_PREFILL_Q_RANGES")
    if env:
        return max(1, int(env))
    tc = min(q_chunk, max(T, 1))
    rows = max(1, _Q_RANGE_BYTES // ((Hq // Hkv) * D * 2))
    r = min(-(-tc // rows), -(-tc // 32), _MAX_Q_RANGES)
    kvs = Hkv * total_blocks * block_size * D * 2 * kv_bytes
    if kvs > 0:
        r = min(r, 1 + (tc * Hq * D * 2 * K) // (2 * kvs))
    return max(1, r)


def sparse_prefill_scratch_bytes(T, Hq, Hkv, D, K, total_blocks, q_chunk, B, q_ranges=1) -> int:
    if q_ranges < 1:
        return -1   # as the C++ layout (the handler rejects q_ranges < 1)
    tc = min(q_chunk, max(T, 1))
    W = -(-tc // 32)
    Wr = -(-W // min(q_ranges, W))   # bitmap words per list (one query range)
    R = -(-W // Wr)                  # ranges actually used (no empty trailing range)
    N = Hkv * R * total_blocks
    E = tc * Hkv * K
    P = max(1, 128 // (Hq // Hkv))
    WI = -(-E // P) + min(N, E)
    return (_a256(4 * (4 * B + 2)) + _a256(4 * N) + _a256(4 * (N + 1)) + _a256(4 * N * Wr) + _a256(4 * E) + 256
            + _a256(32 * WI) + _a256(4 * tc * Hq * K) + _a256(2 * tc * Hq * K * D))


def check_block_ids(op: str, block_ids, rows: int, plan) -> None:
    c.check_array(op, "block_ids", block_ids, rank=3, dtypes=(jnp.int32,))
    c.check_dim(op, "block_ids", block_ids, 0, rows, "the plan's query tokens")
    c.check_dim(op, "block_ids", block_ids, 1, plan.num_kv_heads, "num_kv_heads")
    if block_ids.shape[2] < 1:
        raise ValueError(f"{op}: block_ids needs at least one slot, got shape {c.shape_str(block_ids)}")


def sparse_prefill(q, k, v, block_ids, plan: PrefillPlan, *, page_table=None, scale: Optional[float] = None,
                   k_scale: float = 1.0, v_scale: float = 1.0, return_lse: bool = False):
    """Exact attention of every query head over the visible tokens of its group's selected blocks.

    Args:
      q: ``[T, Hq, D]``; k, v: dense ``[Tk, Hkv, D]`` or paged ``[num_pages, Hkv, page_size, D]``
        (q's dtype or float8_e4m3fn with ``k_scale`` / ``v_scale``).
      block_ids: ``[T, Hkv, K] int32`` per query token and KV group (from :func:`topk_select`);
        ``-1``, out-of-range ids and repeats are skipped.
      plan: a :class:`PrefillPlan`; ``page_table [B, max_pages] int32`` for paged plans.

    Returns ``o [T, Hq, D]`` (and ``lse [T, Hq] float32`` with ``return_lse``). A row whose
    selection holds no visible token gets ``o = 0`` and ``lse = -inf``.
    """
    op = "sparse_prefill"
    c.check_plan(op, plan, (PrefillPlan,))
    c.check_q_and_kv(op, q, (("k", k), ("v", v)), plan, page_table, rows_what="the plan's total query tokens")
    T, Hq, D = q.shape
    check_block_ids(op, block_ids, T, plan)
    q_indptr, kv_indptr, kv_lens = c.seq_arrays(op, plan)
    pt = page_table if plan.paged else c.dummy_page_table(plan)
    K = block_ids.shape[2]
    total_blocks = sparse_prefill_total_blocks(plan.paged, plan.batch_size, plan.block_size, k.shape[0],
                                               pt.shape[1])
    q_chunk = sparse_prefill_q_chunk(T, Hq, D, K)
    q_ranges = sparse_prefill_q_ranges(T, Hq, plan.num_kv_heads, D, K, q_chunk, total_blocks, plan.block_size,
                                       jnp.dtype(k.dtype).itemsize)
    scratch = sparse_prefill_scratch_bytes(T, Hq, plan.num_kv_heads, D, K, total_blocks, q_chunk, plan.batch_size,
                                           q_ranges)
    call = jax.ffi.ffi_call(
        "msa_sparse_prefill",
        (jax.ShapeDtypeStruct((T, Hq, D), q.dtype), jax.ShapeDtypeStruct((T, Hq), jnp.float32),
         jax.ShapeDtypeStruct((scratch,), jnp.uint8)),
        vmap_method="sequential")
    attributes = c.attrs(scale=c.default_scale(scale, D), k_scale=float(k_scale), v_scale=float(v_scale),
                         causal=plan.causal, paged=plan.paged, block_size=plan.block_size, q_chunk=q_chunk,
                         q_ranges=q_ranges)

    @c.inference_only(op)
    def run(q, k, v, block_ids, pt):
        return call(q, k, v, block_ids, q_indptr, kv_indptr, kv_lens, pt, **attributes)[:2]

    o, lse = run(q, k, v, block_ids, pt)
    return (o, lse) if return_lse else o

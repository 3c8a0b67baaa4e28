"""Paged decode attention, dense or sparse (``msa_decode``)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from msa_jax import _common as c
from msa_jax import _ffi  # noqa: F401
from msa_jax.plan import DecodePlan
from msa_jax.sparse_prefill import check_block_ids

__all__ = ["decode"]


def decode(q, k_cache, v_cache, page_table, kv_lens, plan: DecodePlan, *, block_ids=None,
           scale: Optional[float] = None, k_scale: float = 1.0, v_scale: float = 1.0,
           return_lse: bool = False):
    """One decode step of attention over a paged cache.

    Args:
      q: ``[B, Hq, D]``, one query token per request, at position ``kv_lens[b] - 1`` (append
        the token's K/V first, e.g. with :func:`append_kv`).
      k_cache, v_cache: ``[num_pages, Hkv, page_size, D]`` (q's dtype or float8_e4m3fn).
      page_table: ``[B, >= plan.max_pages] int32``; out-of-range page ids are skipped.
      kv_lens: ``[B] int32`` runtime lengths (clipped to the page table's capacity; 0 gives o = 0).
      plan: a :class:`DecodePlan` (capacities only: lengths never trigger recompilation).
      block_ids: None for dense decode over every page up to ``kv_len``, or ``[B, Hkv, K] int32``
        selected blocks (= pages) for sparse decode; -1 / out-of-range ids are skipped.

    Returns ``o [B, Hq, D]`` (and ``lse [B, Hq] float32`` with ``return_lse``).
    """
    op = "decode"
    c.check_plan(op, plan, (DecodePlan,))
    c.check_array(op, "q", q, rank=3, dtypes=c.FLOAT_DTYPES)
    B, Hq, D = q.shape
    c.check_dim(op, "q", q, 0, plan.batch_size, "the plan's batch_size")
    c.check_dim(op, "q", q, 1, plan.num_q_heads, "num_q_heads")
    c.check_dim(op, "q", q, 2, plan.head_dim, "head_dim")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        c.check_kv_cache(op, name, x, plan, heads=plan.num_kv_heads, head_dim=D, page_table=page_table)
        c.check_kv_dtype(op, name, x, q.dtype)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{op}: k_cache and v_cache must have the same shape")
    _, _, lens = c.seq_arrays(op, plan, kv_lens)
    sparse = block_ids is not None
    if sparse:
        check_block_ids(op, block_ids, B, plan)
    else:
        block_ids = jnp.zeros((B, plan.num_kv_heads, 0), jnp.int32)
    call = jax.ffi.ffi_call(
        "msa_decode",
        (jax.ShapeDtypeStruct((B, Hq, D), q.dtype), jax.ShapeDtypeStruct((B, Hq), jnp.float32)),
        vmap_method="sequential")
    attributes = c.attrs(scale=c.default_scale(scale, D), k_scale=float(k_scale), v_scale=float(v_scale),
                         sparse=sparse)

    @c.inference_only(op)
    def run(q, k_cache, v_cache, page_table, lens, block_ids):
        return call(q, k_cache, v_cache, page_table, lens, block_ids, **attributes)

    o, lse = run(q, k_cache, v_cache, page_table, lens, block_ids)
    return (o, lse) if return_lse else o

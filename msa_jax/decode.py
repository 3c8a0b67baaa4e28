"""Paged decode attention, dense or sparse (``msa_decode``)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from msa_jax import _common as c
from msa_jax import _ffi  # noqa: F401
from msa_jax.plan import DecodePlan
from msa_jax.sparse_prefill import check_block_ids

__all__ = ["decode", "decode_num_splits", "decode_scratch_bytes"]


# Split-K schedule of the GPU kernel, from static shapes only (mirror of
# cuda/decode/decode.h): about 2048 CTAs, >= 4 pages and <= 1024 pages (or
# selected blocks) per split; partials (f32 o and lse) go to a scratch output.
def decode_num_splits(batch: int, num_kv_heads: int, max_pages: int, topk: int, *,
                      cta_target: Optional[int] = None, min_pages: Optional[int] = None) -> int:
    """Split-K count of :func:`decode` from static shapes (mirror of cuda/decode/decode.h).

    Dense (topk == 0): aim at ~1024 CTAs with >= 16 pages per split; sparse (topk > 0): ~2048
    CTAs with >= 4 of the K pages per split. (cta_target, min_pages override the constants, for
    benchmarks/tune_decode_splits.py.)
    """
    n = topk if topk > 0 else max_pages
    if n <= 0:
        return 1
    if cta_target is None:
        cta_target = 2048 if topk > 0 else 1024
    if min_pages is None:
        min_pages = 4 if topk > 0 else 16
    s = -(-cta_target // max(batch * num_kv_heads, 1))
    s = min(s, -(-n // min_pages), 1024)
    return max(s, -(-n // 1024), 1)


def decode_scratch_bytes(batch: int, num_q_heads: int, head_dim: int, num_splits: int) -> int:
    if num_splits <= 1:
        return 0
    return -(-(batch * num_q_heads * num_splits * 4) // 256) * 256 + batch * num_q_heads * num_splits * head_dim * 4


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
    c.check_q_and_kv(op, q, (("k_cache", k_cache), ("v_cache", v_cache)), plan, page_table,
                     rows_what="the plan's batch_size")
    B, Hq, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{op}: k_cache and v_cache must have the same shape")
    _, _, lens = c.seq_arrays(op, plan, kv_lens)
    sparse = block_ids is not None
    if sparse:
        check_block_ids(op, block_ids, B, plan)
    else:
        block_ids = jnp.zeros((B, plan.num_kv_heads, 0), jnp.int32)
    splits = decode_num_splits(B, plan.num_kv_heads, page_table.shape[1], block_ids.shape[2])
    call = jax.ffi.ffi_call(
        "msa_decode",
        (jax.ShapeDtypeStruct((B, Hq, D), q.dtype), jax.ShapeDtypeStruct((B, Hq), jnp.float32),
         jax.ShapeDtypeStruct((decode_scratch_bytes(B, Hq, D, splits),), jnp.uint8)),
        vmap_method="sequential")
    attributes = c.attrs(scale=c.default_scale(scale, D), k_scale=float(k_scale), v_scale=float(v_scale),
                         sparse=sparse, num_splits=splits)

    @c.inference_only(op)
    def run(q, k_cache, v_cache, page_table, lens, block_ids):
        return call(q, k_cache, v_cache, page_table, lens, block_ids, **attributes)[:2]

    o, lse = run(q, k_cache, v_cache, page_table, lens, block_ids)
    return (o, lse) if return_lse else o

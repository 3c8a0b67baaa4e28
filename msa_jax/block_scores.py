"""Index branch: per-block max of index scores (``msa_block_scores``)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from msa_jax import _common as c
from msa_jax import _ffi  # noqa: F401

__all__ = ["block_scores"]


def check_block_scores_inputs(op: str, q_idx, k_idx, plan, page_table) -> None:
    """block_scores' trace-time checks of q_idx / k_idx / page_table against ``plan`` (also
    run by sparse_attention's chunked index branch on the whole plan before it slices)."""
    c.check_plan(op, plan)
    c.check_array(op, "q_idx", q_idx, rank=3, dtypes=c.FLOAT_DTYPES)
    Di = q_idx.shape[2]
    c.check_dim(op, "q_idx", q_idx, 0, plan.total_q, "the plan's query tokens")
    c.check_dim(op, "q_idx", q_idx, 1, plan.num_kv_heads, "num_kv_heads (one index head per KV group)")
    if Di % 8:
        raise ValueError(f"{op}: the index head dim ({Di}) must be a multiple of 8")
    if plan.paged:
        c.check_kv_cache(op, "k_idx", k_idx, plan, heads=1, head_dim=Di, page_table=page_table)
    else:
        c.check_array(op, "k_idx", k_idx, rank=2, dtypes=c.KV_DTYPES)
        c.check_dim(op, "k_idx", k_idx, 0, plan.total_kv, "the plan's total kv tokens")
        c.check_dim(op, "k_idx", k_idx, 1, Di, "q_idx's head dim")
        if page_table is not None:
            raise TypeError(f"{op}: page_table given but the plan is dense")
    c.check_kv_dtype(op, "k_idx", k_idx, q_idx.dtype)


def block_scores(q_idx, k_idx, plan, *, page_table=None, kv_lens=None, scale: Optional[float] = None,
                 k_scale: float = 1.0):
    """MSA index branch: ``scores [T, Hkv, plan.num_blocks] float32``.

    ``scores[t, g, b]`` is the max over the causally visible tokens ``j`` of block ``b`` of
    ``scale * q_idx[t, g] . k_idx[j]`` (no softmax, no exp), ``-inf`` where no token of
    the block is visible.

    Args:
      q_idx: ``[T, Hkv, Di]`` one index query head per KV group (decode plans: ``T = B``).
      k_idx: the shared index-key head: dense ``[Tk, Di]``, or a paged cache
        ``[num_pages, 1, page_size, Di]`` (same page table as the K/V cache). q's dtype or
        float8_e4m3fn (dequantised with ``k_scale``).
      plan: a :class:`PrefillPlan`, or a :class:`DecodePlan` plus runtime ``kv_lens [B] int32``
        (one query token per request at position ``kv_len - 1``).
      scale: default ``1/sqrt(Di)``.
    """
    op = "block_scores"
    check_block_scores_inputs(op, q_idx, k_idx, plan, page_table)
    T, H, Di = q_idx.shape
    q_indptr, kv_indptr, lens = c.seq_arrays(op, plan, kv_lens)
    pt = page_table if plan.paged else c.dummy_page_table(plan)
    call = jax.ffi.ffi_call("msa_block_scores",
                            jax.ShapeDtypeStruct((T, H, plan.num_blocks), jnp.float32),
                            vmap_method="sequential")
    attributes = c.attrs(scale=c.default_scale(scale, Di), k_scale=float(k_scale), causal=plan.causal,
                         paged=plan.paged, block_size=plan.block_size)

    @c.inference_only(op)
    def run(q_idx, k_idx, pt, lens):
        return call(q_idx, k_idx, q_indptr, kv_indptr, lens, pt, **attributes)

    return run(q_idx, k_idx, pt, lens)

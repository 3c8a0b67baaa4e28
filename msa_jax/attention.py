"""Dense / paged prefill attention (``msa_attention``)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from msa_jax import _common as c
from msa_jax import _ffi  # noqa: F401  (registers the targets)
from msa_jax.plan import PrefillPlan

__all__ = ["attention"]


def attention(q, k, v, plan: PrefillPlan, *, page_table=None, scale: Optional[float] = None,
              k_scale: float = 1.0, v_scale: float = 1.0, return_lse: bool = False,
              return_block_max: bool = False):
    """Exact softmax attention over a ragged prefill batch.

    Args:
      q: ``[T, Hq, D]`` (float32, bfloat16 or float16), sequences packed as in ``plan``.
      k, v: dense ``[Tk, Hkv, D]`` or paged ``[num_pages, Hkv, page_size, D]``, in q's dtype
        or float8_e4m3fn (dequantised with the per-tensor ``k_scale`` / ``v_scale``).
      plan: a :class:`PrefillPlan` (causal is bottom-right).
      page_table: ``[B, max_pages] int32`` for paged plans; out-of-range page ids are skipped.
      scale: softmax scale, default ``1/sqrt(D)``.
      return_lse: also return ``lse [T, Hq] float32`` (natural log; -inf for rows that see nothing).
      return_block_max: also return ``block_max [T, Hq, plan.num_blocks] float32``: the per-block
        max of the scaled scores over visible keys (upstream ``output_maxscore``), -inf where none.

    Returns ``o [T, Hq, D]`` in q's dtype, followed by the requested extras.
    """
    op = "attention"
    c.check_plan(op, plan, (PrefillPlan,))
    c.check_q_and_kv(op, q, (("k", k), ("v", v)), plan, page_table, rows_what="the plan's total query tokens")
    T, Hq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {c.shape_str(k)} and {c.shape_str(v)}")
    q_indptr, kv_indptr, kv_lens = c.seq_arrays(op, plan)
    pt = page_table if plan.paged else c.dummy_page_table(plan)
    nb = plan.num_blocks if return_block_max else 0
    call = jax.ffi.ffi_call(
        "msa_attention",
        (jax.ShapeDtypeStruct((T, Hq, D), q.dtype),
         jax.ShapeDtypeStruct((T, Hq), jnp.float32),
         jax.ShapeDtypeStruct((T, Hq, nb), jnp.float32)),
        vmap_method="sequential")
    attributes = c.attrs(scale=c.default_scale(scale, D), k_scale=float(k_scale), v_scale=float(v_scale),
                         causal=plan.causal, paged=plan.paged, block_size=plan.block_size)

    @c.inference_only(op)
    def run(q, k, v, pt):
        return call(q, k, v, q_indptr, kv_indptr, kv_lens, pt, **attributes)

    o, lse, block_max = run(q, k, v, pt)
    extras = ([lse] if return_lse else []) + ([block_max] if return_block_max else [])
    return (o, *extras) if extras else o

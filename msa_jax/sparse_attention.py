"""The whole MSA layer: index branch -> top-k block selection -> block-sparse attention."""

from __future__ import annotations

from typing import Optional

from msa_jax.block_scores import block_scores
from msa_jax.plan import PrefillPlan
from msa_jax.sparse_prefill import sparse_prefill
from msa_jax.topk_select import topk_select

__all__ = ["sparse_attention"]


def sparse_attention(q, k, v, q_idx, k_idx, plan: PrefillPlan, *, topk: int = 16, local_blocks: int = 1,
                     sink_blocks: int = 0, page_table=None, scale: Optional[float] = None,
                     index_scale: Optional[float] = None, k_scale: float = 1.0, v_scale: float = 1.0,
                     index_k_scale: float = 1.0, return_block_ids: bool = False):
    """MiniMax Sparse Attention for a ragged prefill batch (the entry point for models).

    Args:
      q: ``[T, Hq, D]``; k, v: dense ``[Tk, Hkv, D]`` or paged ``[num_pages, Hkv, page_size, D]``.
      q_idx: ``[T, Hkv, Di]`` index queries, one head per KV group.
      k_idx: the shared index-key head, dense ``[Tk, Di]`` or paged ``[num_pages, 1, page_size, Di]``
        (paged caches share ``page_table``).
      plan: a :class:`PrefillPlan`; blocks are ``plan.block_size`` tokens (pages when paged).
      topk: blocks per query token and group (local and sink blocks use slots).
      scale / index_scale: softmax / index scales (defaults ``1/sqrt(D)``, ``1/sqrt(Di)``).
      return_block_ids: also return the ``[T, Hkv, topk]`` selection.

    Returns ``o [T, Hq, D]`` (and the block ids).
    """
    scores = block_scores(q_idx, k_idx, plan, page_table=page_table, scale=index_scale,
                          k_scale=index_k_scale)
    ids = topk_select(scores, topk, plan, local_blocks=local_blocks, sink_blocks=sink_blocks)
    o = sparse_prefill(q, k, v, ids, plan, page_table=page_table, scale=scale, k_scale=k_scale,
                       v_scale=v_scale)
    return (o, ids) if return_block_ids else o

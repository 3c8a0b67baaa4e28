"""One MSA decode step over paged caches: append -> index branch -> top-k -> sparse decode."""

from __future__ import annotations

from typing import Optional

from msa_jax.append_kv import append_cache
from msa_jax.block_scores import block_scores
from msa_jax.decode import decode
from msa_jax.plan import DecodePlan
from msa_jax.topk_select import topk_select

__all__ = ["sparse_decode_step"]


def sparse_decode_step(q, k_new, v_new, q_idx, k_idx_new, k_cache, v_cache, k_idx_cache, page_table, kv_lens,
                       plan: DecodePlan, *, topk: int = 16, local_blocks: int = 1, sink_blocks: int = 0,
                       scale: Optional[float] = None, index_scale: Optional[float] = None, k_scale: float = 1.0,
                       v_scale: float = 1.0, index_k_scale: float = 1.0, dense: bool = False):
    """Decode one token per request with MSA; every piece is one FFI call, so the step is jit-
    and CUDA-graph friendly (lengths are runtime arrays; nothing recompiles as they change).

    Args:
      q: ``[B, Hq, D]``; k_new, v_new: ``[B, Hkv, D]`` this token's K/V; q_idx: ``[B, Hkv, Di]``;
        k_idx_new: ``[B, 1, Di]`` this token's index key.
      k_cache, v_cache: ``[num_pages, Hkv, page_size, D]``; k_idx_cache: ``[num_pages, 1, page_size, Di]``
        (donate them to update in place).
      page_table: ``[B, max_pages] int32``; kv_lens: ``[B] int32`` tokens already cached.
      dense: skip the index branch and attend to every page (dense decode).

    Returns ``(o [B, Hq, D], k_cache, v_cache, k_idx_cache, kv_lens + 1)``.
    """
    k_cache = append_cache(k_cache, k_new, page_table, kv_lens, scale=k_scale)
    v_cache = append_cache(v_cache, v_new, page_table, kv_lens, scale=v_scale)
    k_idx_cache = append_cache(k_idx_cache, k_idx_new, page_table, kv_lens, scale=index_k_scale)
    lens = kv_lens + 1
    ids = None
    if not dense:
        scores = block_scores(q_idx, k_idx_cache, plan, page_table=page_table, kv_lens=lens, scale=index_scale,
                              k_scale=index_k_scale)
        ids = topk_select(scores, topk, plan, local_blocks=local_blocks, sink_blocks=sink_blocks, kv_lens=lens)
    o = decode(q, k_cache, v_cache, page_table, lens, plan, block_ids=ids, scale=scale, k_scale=k_scale,
               v_scale=v_scale)
    return o, k_cache, v_cache, k_idx_cache, lens

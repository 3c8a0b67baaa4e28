"""The whole MSA layer: index branch -> top-k block selection -> block-sparse attention."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from msa_jax import _common as c
from msa_jax.block_scores import block_scores, check_block_scores_inputs
from msa_jax.plan import PrefillPlan
from msa_jax.sparse_prefill import sparse_prefill
from msa_jax.topk_select import topk_select

__all__ = ["sparse_attention"]


def sparse_attention(q, k, v, q_idx, k_idx, plan: PrefillPlan, *, topk: int = 16, local_blocks: int = 1,
                     sink_blocks: int = 0, page_table=None, scale: Optional[float] = None,
                     index_scale: Optional[float] = None, k_scale: float = 1.0, v_scale: float = 1.0,
                     index_k_scale: float = 1.0, return_block_ids: bool = False,
                     index_chunk: Optional[int] = None):
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
      index_chunk: run the index branch (block scores + top-k selection) over at most this
        many query tokens at a time (None: all ``T`` at once). It bounds the index branch's
        peak memory, the fp32 block scores ``T_chunk x Hkv x num_blocks x 4`` bytes (at
        ``T`` = 1M tokens, 4 groups and 128-token blocks a single pass needs 128 GiB; 64K-token
        chunks need 8 GiB). Chunks may cut sequences anywhere; each chunk runs on a sub-plan of
        the pieces it holds (same key positions, so the same visible keys, local and sink
        blocks), the chunks run one after another, and ``sparse_prefill`` runs once on the
        whole selection. The block ids and ``o`` are bit-identical to the single pass.
        (When the whole batch has at most 16 ``(token, group)`` rows per sequence, the GPU's
        decode-shaped index kernel runs; its scores are at most ``64 * B * num_blocks`` bytes
        and ``index_chunk`` is ignored.)

    Returns ``o [T, Hq, D]`` (and the block ids).
    """
    sel = {"topk": topk, "local_blocks": local_blocks, "sink_blocks": sink_blocks, "index_scale": index_scale,
           "index_k_scale": index_k_scale}
    if index_chunk is None:
        ids = _select(q_idx, k_idx, plan, page_table, **sel)
    else:
        ids = _chunked_selection(q_idx, k_idx, plan, index_chunk, page_table=page_table, **sel)
    o = sparse_prefill(q, k, v, ids, plan, page_table=page_table, scale=scale, k_scale=k_scale,
                       v_scale=v_scale)
    return (o, ids) if return_block_ids else o


def _select(q_idx, k_idx, plan, page_table, *, topk, local_blocks, sink_blocks, index_scale, index_k_scale):
    """The index branch on one plan: block scores, then the top-k selection."""
    scores = block_scores(q_idx, k_idx, plan, page_table=page_table, scale=index_scale, k_scale=index_k_scale)
    return topk_select(scores, topk, plan, local_blocks=local_blocks, sink_blocks=sink_blocks)


# ---- chunked index branch ---------------------------------------------------------------

def _decode_shaped_scores(total_q: int, heads: int, batch: int) -> bool:
    """Whether msa_block_scores runs its decode-shaped GPU kernel (static: shapes only).

    Mirror of ``uses_decode_kernel`` in cuda/block_scores/block_scores.cu. The two kernels
    may round scores differently, so every chunk must use the kernel of the single pass.
    """
    return total_q * heads <= 16 * batch


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Static description of one query chunk ``[start, stop)`` of the flattened tokens."""

    start: int
    stop: int
    seqs: tuple[int, ...]          # sequences the chunk overlaps (consecutive)
    plan: PrefillPlan              # the sub-plan (plus a padding sequence when ``pad``)
    key_ranges: tuple[tuple[int, int], ...]  # dense: merged k_idx row ranges of the pieces
    pad: int                       # rows of the padding sequence (0: none)


def _chunks(plan: PrefillPlan, index_chunk: int) -> list[_Chunk]:
    """Cut the flattened query tokens into chunks of ``index_chunk`` and plan each chunk.

    The piece ``[s, e)`` (local query indices) of sequence ``j`` (``q_len Lq``, ``kv_len Lk``)
    is planned as a sequence with ``q_len e - s`` and ``kv_len Lk - (Lq - e)`` (causal; else
    ``Lk``): bottom-right, its query ``i`` sits at position ``Lk - Lq + s + i``, as in the full
    plan, and it keeps the sequence's first key, so block ids are the same block numbers.
    """
    q_ind = plan.q_indptr()
    kv_ind = np.concatenate([[0], np.cumsum(plan.kv_lens)])
    H = plan.num_kv_heads
    T = plan.total_q
    out = []
    j = 0
    for a in range(0, T, index_chunk):
        b = min(a + index_chunk, T)
        while q_ind[j + 1] <= a:
            j += 1
        seqs, qo, kv, ranges = [], [], [], []
        jj = j
        while jj < plan.batch_size and q_ind[jj] < b:
            s, e = max(a, int(q_ind[jj])) - int(q_ind[jj]), min(b, int(q_ind[jj + 1])) - int(q_ind[jj])
            lq, lk = plan.qo_lens[jj], plan.kv_lens[jj]
            kvp = lk - (lq - e) if plan.causal else lk
            seqs.append(jj)
            qo.append(e - s)
            kv.append(kvp)
            lo = int(kv_ind[jj])
            if ranges and ranges[-1][1] == lo:
                ranges[-1] = (ranges[-1][0], lo + kvp)
            else:
                ranges.append((lo, lo + kvp))
            jj += 1
        # Keep the GPU kernel of the single pass: a chunk of few rows per sequence gets a
        # padding sequence (its rows see no key and are dropped) to reach > 16 rows each.
        pad = 0
        if _decode_shaped_scores(b - a, H, len(seqs)):
            pad = 16 * (len(seqs) + 1) // H + 1 - (b - a)
            qo.append(pad)
            kv.append(pad)
        sub = dataclasses.replace(plan, qo_lens=tuple(qo), kv_lens=tuple(kv))
        out.append(_Chunk(a, b, tuple(seqs), sub, tuple(ranges), pad))
    return out


def _chunked_selection(q_idx, k_idx, plan, index_chunk, *, page_table, **sel):
    op = "sparse_attention"
    if isinstance(index_chunk, bool) or not isinstance(index_chunk, (int, np.integer)) or index_chunk < 1:
        raise ValueError(f"{op}: index_chunk must be a positive int (query tokens per index-branch chunk) "
                         f"or None (one pass), got {index_chunk!r}")
    index_chunk = int(index_chunk)
    c.check_plan(op, plan, (PrefillPlan,))
    # Checked on the whole plan before slicing (each chunk's block_scores sees only its sub-plan).
    check_block_scores_inputs(op, q_idx, k_idx, plan, page_table)

    T = plan.total_q
    if index_chunk >= T or _decode_shaped_scores(T, plan.num_kv_heads, plan.batch_size):
        return _select(q_idx, k_idx, plan, page_table, **sel)

    ids = []
    for ch in _chunks(plan, index_chunk):
        qi, ki, pt = q_idx, k_idx, page_table
        if ids:
            # Chunk i's inputs are sliced after chunk i-1's ids exist, so XLA cannot hoist the
            # chunks' block scores together: one chunk's scores are live at a time.
            if plan.paged:   # the cache is not sliced: only the page table is
                ids[-1], qi, pt = jax.lax.optimization_barrier((ids[-1], qi, pt))
            else:
                ids[-1], qi, ki = jax.lax.optimization_barrier((ids[-1], qi, ki))
        qi = qi[ch.start:ch.stop]
        if ch.pad:
            qi = jnp.concatenate([qi, jnp.zeros((ch.pad,) + qi.shape[1:], qi.dtype)])
        if plan.paged:
            pt = pt[ch.seqs[0]:ch.seqs[-1] + 1]
            if ch.pad:   # the padding sequence's pages are unresolvable: it sees nothing
                pt = jnp.concatenate([pt, jnp.full((1, pt.shape[1]), -1, pt.dtype)])
                if pt.shape[1] < ch.plan.max_pages:
                    pt = jnp.pad(pt, ((0, 0), (0, ch.plan.max_pages - pt.shape[1])), constant_values=-1)
        else:
            parts = [ki[lo:hi] for lo, hi in ch.key_ranges]
            if ch.pad:   # its keys: zero rows (they are dropped with its rows)
                parts.append(jnp.zeros((ch.pad,) + ki.shape[1:], ki.dtype))
            ki = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
            pt = None
        out = _select(qi, ki, ch.plan, pt, **sel)
        ids.append(out[:ch.stop - ch.start] if ch.pad else out)
    return ids[0] if len(ids) == 1 else jnp.concatenate(ids)

"""Pure ``jax.numpy`` reference of every msa_jax op (float32 math): the test oracle.

Written from the semantics in the docstrings and ``docs/ffi-contract.md``,
independently of the C++/CUDA code. Readable over fast: each op gathers every
sequence's keys into a padded ``[B, L, H, D]`` view, builds an explicit
visibility mask and computes full score matrices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.plan import DecodePlan, PrefillPlan

__all__ = ["attention", "block_scores", "topk_select", "sparse_prefill", "decode", "append_kv",
           "append_cache", "sparse_attention", "sparse_decode_step", "dense_attention"]

NEG_INF = -jnp.inf


def _f32(x, scale=1.0):
    return x.astype(jnp.float32) * jnp.float32(scale)


# --------------------------------------------------------------------------- layout


def _rows(plan):
    """Static (row_seq, row_i, q_len per seq) for the query rows of a plan."""
    if isinstance(plan, DecodePlan):
        B = plan.batch_size
        return np.arange(B), np.zeros(B, np.int64), np.ones(B, np.int64)
    qo = np.asarray(plan.qo_lens)
    row_seq = np.repeat(np.arange(len(qo)), qo)
    row_i = np.concatenate([np.arange(n) for n in qo])
    return row_seq, row_i, qo


def _kv_view(x, plan, page_table, kv_lens, scale):
    """Every sequence's tokens as ``[B, Lcap, H, D]`` float32 plus ``lens [B]`` and ``ok [B, Lcap]``.

    ``lens`` is the kv length clipped to capacity; ``ok`` marks tokens that are
    resolvable (below the length and, paged, on an in-range page).
    """
    B = plan.batch_size
    if plan.paged:
        num_pages, H, ps, D = x.shape
        P = page_table.shape[1]
        cap = P * ps
        j = np.arange(cap)
        pages = page_table[:, j // ps]                                   # [B, cap]
        in_range = (pages >= 0) & (pages < num_pages)
        view = _f32(x, scale)[jnp.clip(pages, 0, num_pages - 1), :, (j % ps)[None, :], :]  # [B, cap, H, D]
        caps = np.full(B, cap)
    else:
        kv_indptr = plan.kv_indptr()
        caps = np.diff(kv_indptr)
        cap = int(caps.max())
        j = np.arange(cap)
        idx = np.minimum(kv_indptr[:-1, None] + j[None, :], x.shape[0] - 1)
        view = _f32(x, scale)[idx]                                        # [B, cap, H, D]
        in_range = jnp.asarray(j[None, :] < caps[:, None])
    lens = plan.kv_lens_array() if kv_lens is None else kv_lens
    lens = jnp.clip(jnp.asarray(lens, jnp.int32), 0, jnp.asarray(caps, jnp.int32))
    ok = in_range & (jnp.arange(cap)[None, :] < lens[:, None])
    return view, lens, ok


def _visible(plan, lens, ok):
    """Visibility ``[T, Lcap]`` of every query row, and the rows' sequence ids."""
    row_seq, row_i, qo = _rows(plan)
    L = lens[row_seq]
    pos = L - jnp.asarray(qo[row_seq]) + jnp.asarray(row_i)
    vis = ok[row_seq]
    if plan.causal:
        vis = vis & (jnp.arange(ok.shape[1])[None, :] <= pos[:, None])
    return vis, row_seq, pos, L


def _per_sequence(plan, row_seq, fn):
    """Applies ``fn(rows, b)`` to each sequence's query rows (decode: all at once) and concatenates.

    Keeps memory at one sequence's ``[q_len, H, Lcap]`` instead of gathering keys per row.
    """
    if isinstance(plan, DecodePlan):
        return fn(slice(None), None)
    bounds = plan.q_indptr()
    return jnp.concatenate([fn(slice(int(bounds[b]), int(bounds[b + 1])), b)
                            for b in range(plan.batch_size)], axis=0)


def _scores(q, kview, plan, row_seq, group):
    """Unscaled scores ``[T, Hq, Lcap]`` of every row against its own sequence's keys."""
    keys = jnp.repeat(kview, group, axis=2)                               # [B, Lcap, Hq, D]

    def one(rows, b):
        if b is None:
            return jnp.einsum("thd,tjhd->thj", _f32(q), keys)
        return jnp.einsum("thd,jhd->thj", _f32(q[rows]), keys[b])

    return _per_sequence(plan, row_seq, one)


def _softmax_attend(s, vis, vview, plan, row_seq, group, out_dtype):
    """Masked softmax of ``s [T, Hq, Lcap]`` times V: ``(o, lse)``; empty rows give 0 and -inf."""
    s = jnp.where(vis, s, NEG_INF)
    m = jnp.max(s, axis=-1, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(vis, jnp.exp(s - m_safe), 0.0)
    l = jnp.sum(p, axis=-1)
    vals = jnp.repeat(vview, group, axis=2)                               # [B, Lcap, Hq, D]

    def one(rows, b):
        if b is None:
            return jnp.einsum("thj,tjhd->thd", p, vals)
        return jnp.einsum("thj,jhd->thd", p[rows], vals[b])

    o = _per_sequence(plan, row_seq, one) / jnp.where(l > 0, l, 1.0)[..., None]
    lse = jnp.where(l > 0, m[..., 0] + jnp.log(jnp.where(l > 0, l, 1.0)), NEG_INF)
    return o.astype(out_dtype), lse


def _block_max(s, vis, block_size, num_blocks):
    """Per-block max of ``s [T, H, Lcap]`` over visible tokens: ``[T, H, num_blocks]``."""
    s = jnp.where(vis, s, NEG_INF)
    cap = s.shape[-1]
    width = num_blocks * block_size
    if width > cap:
        s = jnp.pad(s, ((0, 0), (0, 0), (0, width - cap)), constant_values=-jnp.inf)
    s = s[..., :width].reshape(s.shape[0], s.shape[1], num_blocks, block_size)
    return jnp.max(s, axis=-1)


def _default_scale(scale, d):
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


# --------------------------------------------------------------------------- ops


def attention(q, k, v, plan: PrefillPlan, *, page_table=None, scale=None, k_scale=1.0, v_scale=1.0,
              return_lse=False, return_block_max=False):
    """Reference of :func:`msa_jax.attention`."""
    scale = _default_scale(scale, q.shape[-1])
    kview, lens, ok = _kv_view(k, plan, page_table, None, k_scale)
    vview, _, _ = _kv_view(v, plan, page_table, None, v_scale)
    vis, row_seq, _, _ = _visible(plan, lens, ok)
    s = scale * _scores(q, kview, plan, row_seq, plan.group_size)
    vis3 = vis[:, None, :]
    o, lse = _softmax_attend(s, vis3, vview, plan, row_seq, plan.group_size, q.dtype)
    extras = [lse] if return_lse else []
    if return_block_max:
        extras.append(_block_max(s, vis3, plan.block_size, plan.num_blocks))
    return (o, *extras) if extras else o


def block_scores(q_idx, k_idx, plan, *, page_table=None, kv_lens=None, scale=None, k_scale=1.0):
    """Reference of :func:`msa_jax.block_scores`: ``[T, Hkv, num_blocks]`` float32."""
    scale = _default_scale(scale, q_idx.shape[-1])
    k4 = k_idx[:, None, :] if k_idx.ndim == 2 else k_idx                  # dense [Tk, 1, Di]
    kview, lens, ok = _kv_view(k4, plan, page_table, kv_lens, k_scale)
    vis, row_seq, _, _ = _visible(plan, lens, ok)
    s = scale * _scores(q_idx, kview, plan, row_seq, q_idx.shape[1])
    return _block_max(s, vis[:, None, :], plan.block_size, plan.num_blocks)


def _order_key(x):
    """uint32 key ordering float32 values (-0.0 equal to +0.0), NaN lowest."""
    x = jnp.where(x == 0, jnp.float32(0), x.astype(jnp.float32))
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    key = jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(0x80000000))
    return jnp.where(jnp.isnan(x), jnp.uint32(0), key)


def topk_select(scores, topk: int, plan, *, local_blocks: int = 1, sink_blocks: int = 0, kv_lens=None):
    """Reference of :func:`msa_jax.topk_select`: ``[T, H, topk]`` int32, ascending, -1 padded."""
    T, H, NB = scores.shape
    bs = plan.block_size
    row_seq, row_i, qo = _rows(plan)
    lens = plan.kv_lens_array() if kv_lens is None else kv_lens
    # No cache here: a length is clipped to the blocks the scores have.
    L = jnp.clip(jnp.asarray(lens, jnp.int32), 0, NB * bs)[row_seq]
    pos = L - jnp.asarray(qo[row_seq]) + jnp.asarray(row_i)
    nblk = (L + bs - 1) // bs
    if plan.causal:
        nvis = jnp.where(pos < 0, 0, jnp.minimum(nblk, pos // bs + 1))
    else:
        nvis = nblk
    nvis = jnp.minimum(nvis, NB)[:, None, None]                           # [T, 1, 1]
    ids = jnp.arange(NB)[None, None, :]
    visible = ids < nvis
    forced = visible & ((ids >= nvis - local_blocks) | (ids < sink_blocks))
    category = jnp.where(forced, 0, jnp.where(visible, jnp.where(jnp.isnan(scores), 2, 1), 3))
    rank_key = jnp.where(category == 1, ~_order_key(scores), jnp.uint32(0))
    ids_b = jnp.broadcast_to(ids, scores.shape)
    order = jnp.lexsort((ids_b, rank_key, category), axis=-1)[..., :topk]
    chosen_cat = jnp.take_along_axis(category, order, axis=-1)
    chosen = jnp.where(chosen_cat < 3, order, NB + 1)
    chosen = jnp.sort(chosen, axis=-1)
    out = jnp.where(chosen > NB, -1, chosen).astype(jnp.int32)
    if topk > NB:
        out = jnp.pad(out, ((0, 0), (0, 0), (0, topk - NB)), constant_values=-1)
    return out


def _selected_tokens(block_ids, L, bs, cap):
    """``[T, Hkv, Lcap]`` mask of tokens in the valid selected blocks of each row."""
    nblk = (L + bs - 1) // bs
    valid = (block_ids >= 0) & (block_ids < nblk[:, None, None])
    token_block = jnp.arange(cap) // bs
    hit = (block_ids[..., None] == token_block[None, None, None, :]) & valid[..., None]
    return jnp.any(hit, axis=2)


def sparse_prefill(q, k, v, block_ids, plan, *, page_table=None, scale=None, k_scale=1.0, v_scale=1.0,
                   return_lse=False, kv_lens=None):
    """Reference of :func:`msa_jax.sparse_prefill` (and sparse decode with a DecodePlan)."""
    scale = _default_scale(scale, q.shape[-1])
    kview, lens, ok = _kv_view(k, plan, page_table, kv_lens, k_scale)
    vview, _, _ = _kv_view(v, plan, page_table, kv_lens, v_scale)
    vis, row_seq, _, L = _visible(plan, lens, ok)
    sel = _selected_tokens(block_ids, L, plan.block_size, ok.shape[1])    # [T, Hkv, Lcap]
    vis3 = jnp.repeat(sel, plan.group_size, axis=1) & vis[:, None, :]
    s = scale * _scores(q, kview, plan, row_seq, plan.group_size)
    o, lse = _softmax_attend(s, vis3, vview, plan, row_seq, plan.group_size, q.dtype)
    return (o, lse) if return_lse else o


def decode(q, k_cache, v_cache, page_table, kv_lens, plan: DecodePlan, *, block_ids=None, scale=None,
           k_scale=1.0, v_scale=1.0, return_lse=False):
    """Reference of :func:`msa_jax.decode`: one query per request at position ``kv_len - 1``."""
    scale = _default_scale(scale, q.shape[-1])
    kview, lens, ok = _kv_view(k_cache, plan, page_table, kv_lens, k_scale)
    vview, _, _ = _kv_view(v_cache, plan, page_table, kv_lens, v_scale)
    vis, row_seq, _, L = _visible(plan, lens, ok)
    vis3 = vis[:, None, :]
    if block_ids is not None:
        sel = _selected_tokens(block_ids, L, plan.page_size, ok.shape[1])
        vis3 = jnp.repeat(sel, plan.group_size, axis=1) & vis3
    s = scale * _scores(q, kview, plan, row_seq, plan.group_size)
    o, lse = _softmax_attend(s, vis3, vview, plan, row_seq, plan.group_size, q.dtype)
    return (o, lse) if return_lse else o


def _quantize(x, dtype):
    x = x.astype(jnp.float32)
    if jnp.dtype(dtype) == jnp.dtype(jnp.float8_e4m3fn):
        x = jnp.where(jnp.isnan(x), x, jnp.clip(x, -448.0, 448.0))       # saturate, keep NaN
    return x.astype(dtype)


def append_cache(cache, new, page_table, positions, *, scale=1.0):
    """Reference of :func:`msa_jax.append_cache`: returns the updated cache."""
    if new.ndim == 3:
        new = new[:, None]
    num_pages, H, ps, D = cache.shape
    B, S = new.shape[:2]
    P = page_table.shape[1]
    p = positions[:, None] + jnp.arange(S)[None, :]                       # [B, S]
    page_idx = p // ps
    page = jnp.take_along_axis(page_table, jnp.clip(page_idx, 0, P - 1), axis=1)
    ok = (positions[:, None] >= 0) & (page_idx < P) & (page >= 0) & (page < num_pages)
    vals = _quantize(new.astype(jnp.float32) / jnp.float32(scale), cache.dtype)  # [B, S, H, D]
    # Invalid writes go to an extra dummy page that is dropped afterwards.
    page = jnp.where(ok, page, num_pages)
    slot = jnp.where(ok, p % ps, 0)
    padded = jnp.concatenate([cache, jnp.zeros((1, H, ps, D), cache.dtype)], axis=0)
    padded = padded.at[page[..., None], jnp.arange(H)[None, None, :], slot[..., None]].set(vals)
    return padded[:num_pages]


def append_kv(k_cache, v_cache, k_new, v_new, page_table, positions, *, k_scale=1.0, v_scale=1.0):
    """Reference of :func:`msa_jax.append_kv`."""
    return (append_cache(k_cache, k_new, page_table, positions, scale=k_scale),
            append_cache(v_cache, v_new, page_table, positions, scale=v_scale))


def sparse_attention(q, k, v, q_idx, k_idx, plan, *, topk=16, local_blocks=1, sink_blocks=0,
                     page_table=None, scale=None, index_scale=None, return_block_ids=False):
    """Reference of :func:`msa_jax.sparse_attention` (index branch + selection + main branch)."""
    scores = block_scores(q_idx, k_idx, plan, page_table=page_table, scale=index_scale)
    ids = topk_select(scores, topk, plan, local_blocks=local_blocks, sink_blocks=sink_blocks)
    o = sparse_prefill(q, k, v, ids, plan, page_table=page_table, scale=scale)
    return (o, ids) if return_block_ids else o


def sparse_decode_step(q, k_new, v_new, q_idx, k_idx_new, k_cache, v_cache, k_idx_cache, page_table, kv_lens,
                       plan, *, topk=16, local_blocks=1, sink_blocks=0, scale=None, index_scale=None,
                       k_scale=1.0, v_scale=1.0, index_k_scale=1.0, dense=False):
    """Reference of :func:`msa_jax.sparse_decode_step`."""
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


def dense_attention(q, k, v, plan, *, page_table=None, scale=None):
    """Plain causal attention over the whole sequence (what sparse attention approximates)."""
    return attention(q, k, v, plan, page_table=page_table, scale=scale)

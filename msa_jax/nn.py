"""Flax (NNX) attention module for MiniMax Sparse Attention, with a paged KV cache.

:class:`MSAAttention` is a GQA attention layer with MSA's index branch:

* main branch: ``q = x Wq [T, Hq, D]``, ``k = x Wk``, ``v = x Wv [T, Hkv, D]``, ``o Wo``;
* index branch: one index query head per KV head, ``q_idx = RMSNorm(x Wq_idx) [T, Hkv, Di]``,
  and one shared index key head ``k_idx = RMSNorm(x Wk_idx) [T, Di]``;
* optional partial rotary embedding (the first ``rotary_dim`` dims of every q / k / index
  q / index k head, NeoX half-rotation), positions taken from the plan in prefill and
  from the cache lengths in decode.

Prefill (``module(x, plan, cache=None)``) runs :func:`msa_jax.sparse_attention` over a
ragged :class:`~msa_jax.PrefillPlan` (``dense=True``: :func:`msa_jax.attention`) and,
given a cache, writes the prompt's K / V / index keys into it. Decode
(``module.decode(x, cache, plan)``) appends the step's token, scores the paged index-key
cache (:func:`msa_jax.block_scores` with runtime lengths), selects blocks
(:func:`msa_jax.topk_select`) and attends (:func:`msa_jax.decode` with ``block_ids``).

The cache (:class:`MSACache`) is a pytree of paged arrays ``[num_pages, H, page_size, D]``
(``page_size == block_size``), a page table and the lengths; donate it to ``jax.jit`` to
update it in place. Head counts are read from the parameter shapes, so the same module
code runs on one shard of the heads inside ``jax.shard_map`` (see :mod:`msa_jax.parallel`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

import msa_jax
from msa_jax.plan import DecodePlan, PrefillPlan

__all__ = ["MSAAttention", "MSACache", "apply_rotary", "contiguous_page_table"]

FP8 = jnp.float8_e4m3fn


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@struct.dataclass
class MSACache:
    """Paged cache of one attention layer (a pytree; donate it to update in place).

    k, v: ``[num_pages, Hkv, page_size, D]``; index_k: ``[num_pages, 1, page_size, Di]``
    (None for dense layers); page_table: ``[B, max_pages] int32``; kv_lens: ``[B] int32``
    tokens held per request.
    """

    k: jax.Array
    v: jax.Array
    index_k: Optional[jax.Array]
    page_table: jax.Array
    kv_lens: jax.Array

    @property
    def batch_size(self) -> int:
        return self.page_table.shape[0]

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def capacity(self) -> int:
        """Tokens per request the page table can address."""
        return self.page_table.shape[1] * self.page_size


def contiguous_page_table(batch_size: int, max_len: int, page_size: int) -> np.ndarray:
    """Request ``b`` owns pages ``[b * P, (b + 1) * P)``, ``P = ceil(max_len / page_size)``."""
    pages = _cdiv(max_len, page_size)
    return np.arange(batch_size * pages, dtype=np.int32).reshape(batch_size, pages)


def apply_rotary(x, positions, rotary_dim: int, theta: float = 10000.0):
    """NeoX-style rotary embedding of the first ``rotary_dim`` dims of the last axis.

    ``x [T, ..., d]``, ``positions [T]`` (int); computed in float32, returned in x's dtype.
    """
    if not rotary_dim:
        return x
    half = rotary_dim // 2
    inv_freq = theta ** (-np.arange(0, half, dtype=np.float32) * 2.0 / rotary_dim)
    ang = jnp.asarray(positions, jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]   # [T, half]
    ang = ang.reshape(ang.shape[:1] + (1,) * (x.ndim - 2) + ang.shape[1:])
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    xf = x.astype(jnp.float32)
    x1, x2, rest = xf[..., :half], xf[..., half:rotary_dim], xf[..., rotary_dim:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return out.astype(x.dtype)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 8)))
def _init_weights(key, H, Hq, Hkv, D, Di, dense, param_dtype):
    keys = jax.random.split(key, 6)
    init = lambda k, shape, fan_in: (jax.random.normal(k, shape, jnp.float32) / math.sqrt(fan_in)).astype(param_dtype)
    out = [init(keys[0], (H, Hq, D), H), init(keys[1], (H, Hkv, D), H), init(keys[2], (H, Hkv, D), H),
           init(keys[3], (Hq, D, H), Hq * D)]
    if not dense:
        out += [init(keys[4], (H, Hkv, Di), H), init(keys[5], (H, Di), H), jnp.ones((Di,), param_dtype),
                jnp.ones((Di,), param_dtype)]
    return out


class MSAAttention(nnx.Module):
    """GQA attention with MiniMax Sparse Attention (index branch + top-k blocks) and a paged cache.

    Args:
      hidden_size: model width.
      num_q_heads, num_kv_heads, head_dim: GQA shape (``head_dim`` a multiple of 8).
      index_dim: index-branch head dim ``Di`` (a multiple of 8; default ``head_dim``).
      topk: blocks attended per query token and KV group (1..64; local / sink blocks use slots).
      block_size: tokens per selection block; also the cache's page size.
      local_blocks, sink_blocks: always-selected trailing / leading blocks.
      rotary_dim: rotary dims per head (0: no rotary embedding); even and
        ``<= min(head_dim, index_dim)``; applied to q, k, index q and index k.
      rope_theta: rotary base.
      dense: plain dense attention (:func:`msa_jax.attention` / dense :func:`msa_jax.decode`);
        the layer then has no index branch (the first layers of an MSA model).
      cache_dtype: default dtype of :meth:`init_cache` (e.g. ``jnp.bfloat16`` or
        ``jnp.float8_e4m3fn``); default the compute dtype.
      k_scale, v_scale, index_k_scale: per-tensor scales of an fp8 cache (stored = value / scale).
      dtype: compute dtype (default: the input's); param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` (one ``params`` key is drawn).
    """

    def __init__(self, hidden_size: int, num_q_heads: int, num_kv_heads: int, head_dim: int, *,
                 index_dim: Optional[int] = None, topk: int = 16, block_size: int = 128,
                 local_blocks: int = 1, sink_blocks: int = 0, rotary_dim: int = 0,
                 rope_theta: float = 10000.0, dense: bool = False, cache_dtype: Any = None,
                 k_scale: float = 1.0, v_scale: float = 1.0, index_k_scale: float = 1.0,
                 dtype: Any = None, param_dtype: Any = jnp.float32, norm_eps: float = 1e-6,
                 rngs: nnx.Rngs):
        index_dim = head_dim if index_dim is None else int(index_dim)
        if num_q_heads % num_kv_heads:
            raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if head_dim % 8 or index_dim % 8:
            raise ValueError(f"head_dim ({head_dim}) and index_dim ({index_dim}) must be multiples of 8")
        if rotary_dim % 2 or rotary_dim < 0 or rotary_dim > head_dim or (not dense and rotary_dim > index_dim):
            raise ValueError(f"rotary_dim ({rotary_dim}) must be even and <= head_dim / index_dim")
        if not dense and not (1 <= topk <= 64 and local_blocks + sink_blocks <= topk):
            raise ValueError(f"topk ({topk}) must be in [1, 64] and hold local_blocks + sink_blocks")
        self.hidden_size = int(hidden_size)
        self.num_q_heads, self.num_kv_heads = int(num_q_heads), int(num_kv_heads)
        self.head_dim, self.index_dim = int(head_dim), index_dim
        self.topk, self.block_size = int(topk), int(block_size)
        self.local_blocks, self.sink_blocks = int(local_blocks), int(sink_blocks)
        self.rotary_dim, self.rope_theta = int(rotary_dim), float(rope_theta)
        self.dense = bool(dense)
        self.cache_dtype = cache_dtype
        self.k_scale, self.v_scale, self.index_k_scale = float(k_scale), float(v_scale), float(index_k_scale)
        self.dtype = dtype
        self.norm_eps = float(norm_eps)

        # Fixed sub-keys (one jitted init): a dense and a sparse layer built from the same key
        # share q/k/v/o.
        w = _init_weights(rngs.params(), int(hidden_size), int(num_q_heads), int(num_kv_heads),
                          int(head_dim), index_dim, bool(dense), jnp.dtype(param_dtype))
        self.wq, self.wk, self.wv, self.wo = (nnx.Param(a) for a in w[:4])
        if dense:
            self.wq_idx = self.wk_idx = self.q_idx_norm = self.k_idx_norm = None
        else:
            self.wq_idx, self.wk_idx, self.q_idx_norm, self.k_idx_norm = (nnx.Param(a) for a in w[4:])

    # ------------------------------------------------------------------ helpers

    @property
    def local_heads(self) -> tuple[int, int]:
        """(Hq, Hkv) of the parameters at hand: a shard's counts inside ``shard_map``."""
        return self.wq.shape[1], self.wk.shape[1]

    def plan_prefill(self, qo_lens: Sequence[int], kv_lens: Optional[Sequence[int]] = None, *,
                     paged: bool = False) -> PrefillPlan:
        """A :class:`PrefillPlan` for this layer (``kv_lens`` defaults to ``qo_lens``)."""
        hq, hkv = self.local_heads
        return msa_jax.plan_prefill(qo_lens, qo_lens if kv_lens is None else kv_lens, num_q_heads=hq,
                                    num_kv_heads=hkv, head_dim=self.head_dim,
                                    page_size=self.block_size if paged else None, block_size=self.block_size)

    def plan_decode(self, batch_size: int, max_len: int) -> DecodePlan:
        """A :class:`DecodePlan` for a cache of ``max_len`` tokens per request."""
        hq, hkv = self.local_heads
        return msa_jax.plan_decode(batch_size, max_len, num_q_heads=hq, num_kv_heads=hkv,
                                   head_dim=self.head_dim, page_size=self.block_size)

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None, *, page_table=None,
                   num_pages: Optional[int] = None) -> MSACache:
        """An empty cache. Default page table: request ``b`` owns a contiguous run of
        ``ceil(max_len / block_size)`` pages. A given ``page_table [B, P] int32`` needs
        ``num_pages`` (default ``max(page_table) + 1``)."""
        dtype = jnp.dtype(dtype or self.cache_dtype or self.dtype or jnp.float32)
        ps = self.block_size
        if page_table is None:
            page_table = contiguous_page_table(batch_size, max_len, ps)
            num_pages = page_table.size if num_pages is None else num_pages
        elif num_pages is None:
            num_pages = int(np.max(np.asarray(page_table))) + 1
        page_table = jnp.asarray(page_table, jnp.int32)
        if page_table.shape[0] != batch_size:
            raise ValueError(f"page_table has {page_table.shape[0]} rows, batch_size is {batch_size}")
        kv_shape = (num_pages, self.num_kv_heads, ps, self.head_dim)
        index_k = None if self.dense else jnp.zeros((num_pages, 1, ps, self.index_dim), dtype)
        return MSACache(jnp.zeros(kv_shape, dtype), jnp.zeros(kv_shape, dtype), index_k, page_table,
                        jnp.zeros((batch_size,), jnp.int32))

    def _check_plan(self, plan, kind) -> None:
        if not isinstance(plan, kind):
            raise TypeError(f"MSAAttention: expected a {kind.__name__}, got {type(plan).__name__}")
        hq, hkv = self.local_heads
        if (plan.num_q_heads, plan.num_kv_heads, plan.head_dim) != (hq, hkv, self.head_dim):
            raise ValueError(f"MSAAttention: the plan's heads ({plan.num_q_heads}, {plan.num_kv_heads}, "
                             f"{plan.head_dim}) differ from the layer's ({hq}, {hkv}, {self.head_dim})")
        if plan.block_size != self.block_size:
            raise ValueError(f"MSAAttention: the plan's block_size ({plan.block_size}) differs from the "
                             f"layer's ({self.block_size})")

    def _project(self, x, positions):
        """q [T,Hq,D], k, v [T,Hkv,D], q_idx [T,Hkv,Di] / None, k_idx [T,Di] / None in the compute dtype."""
        dt = jnp.dtype(self.dtype or x.dtype)
        x = x.astype(dt)
        w = lambda p: p[...].astype(dt)
        q = jnp.einsum("th,hnd->tnd", x, w(self.wq))
        k = jnp.einsum("th,hnd->tnd", x, w(self.wk))
        v = jnp.einsum("th,hnd->tnd", x, w(self.wv))
        q = apply_rotary(q, positions, self.rotary_dim, self.rope_theta)
        k = apply_rotary(k, positions, self.rotary_dim, self.rope_theta)
        if self.dense:
            return q, k, v, None, None
        qi = self._rms(jnp.einsum("th,hnd->tnd", x, w(self.wq_idx)), self.q_idx_norm)
        ki = self._rms(jnp.einsum("th,hd->td", x, w(self.wk_idx)), self.k_idx_norm)
        qi = apply_rotary(qi, positions, self.rotary_dim, self.rope_theta)
        ki = apply_rotary(ki, positions, self.rotary_dim, self.rope_theta)
        return q, k, v, qi, ki

    def _rms(self, x, scale):
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.norm_eps)
        return (xf * scale[...].astype(jnp.float32)).astype(x.dtype)

    def _out(self, o, out_dtype, tp_axis):
        y = jnp.einsum("tnd,ndh->th", o.astype(out_dtype), self.wo[...].astype(out_dtype))
        return jax.lax.psum(y, tp_axis) if tp_axis is not None else y

    @staticmethod
    def _attn_dtype(cache_dtype, dt):
        """Dtype for q: the cache's, unless the cache is fp8 (then the compute dtype)."""
        return dt if jnp.dtype(cache_dtype) == jnp.dtype(FP8) else jnp.dtype(cache_dtype)

    # ------------------------------------------------------------------ prefill

    def __call__(self, x, plan: PrefillPlan, cache: Optional[MSACache] = None, *,
                 tp_axis: Optional[str] = None):
        """Prefill a ragged batch: ``x [plan.total_q, hidden]`` -> ``[total_q, hidden]``.

        Without a cache the plan must be dense with ``qo_lens == kv_lens`` (K / V come from x).
        With a cache, the tokens are written at positions ``kv_len - qo_len + i`` of their
        request and ``(out, new_cache)`` is returned (cache lengths become ``plan.kv_lens``);
        a paged plan then attends over the cache (chunked prefill after a cached prefix),
        a dense plan (``qo_lens == kv_lens``) over the fresh K / V. ``tp_axis``: psum the
        output projection over this mesh axis (inside ``shard_map``, heads sharded).
        """
        self._check_plan(plan, PrefillPlan)
        if x.ndim != 2 or x.shape[0] != plan.total_q:
            raise ValueError(f"MSAAttention: x must be [{plan.total_q}, hidden], got {x.shape}")
        qo, kv = np.asarray(plan.qo_lens), np.asarray(plan.kv_lens)
        starts = kv - qo
        positions = np.concatenate([s + np.arange(n) for s, n in zip(starts, qo)]).astype(np.int32)
        q, k, v, qi, ki = self._project(x, positions)
        dt = q.dtype
        if plan.paged and cache is None:
            raise TypeError("MSAAttention: a paged plan needs a cache")
        if not plan.paged and not np.array_equal(qo, kv):
            raise ValueError("MSAAttention: a dense prefill plan needs qo_lens == kv_lens (K/V come from x); "
                             "use a paged plan with a cache for a cached prefix")
        new_cache = None
        if cache is not None:
            if cache.batch_size != plan.batch_size:
                raise ValueError(f"MSAAttention: the cache holds {cache.batch_size} requests, the plan "
                                 f"{plan.batch_size}")
            # [B, S] padded view of the ragged tokens; each request writes only to the pages its
            # plan length needs (its padding lands past kv_len in its own last page).
            S = int(qo.max())
            qptr = plan.q_indptr()
            idx = qptr[:-1, None] + np.minimum(np.arange(S)[None, :], qo[:, None] - 1)
            need = -(-kv // self.block_size)
            write_pt = jnp.where(jnp.asarray(np.arange(cache.page_table.shape[1])[None, :] < need[:, None]),
                                 cache.page_table, -1)
            pos0 = jnp.asarray(starts, jnp.int32)
            pad = lambda a: a[idx]
            kc = msa_jax.append_cache(cache.k, pad(k), write_pt, pos0, scale=self.k_scale)
            vc = msa_jax.append_cache(cache.v, pad(v), write_pt, pos0, scale=self.v_scale)
            ic = None
            if not self.dense:
                ic = msa_jax.append_cache(cache.index_k, pad(ki)[:, :, None, :], write_pt, pos0,
                                          scale=self.index_k_scale)
            new_cache = MSACache(kc, vc, ic, cache.page_table, jnp.asarray(kv, jnp.int32))
        if plan.paged:
            adt = self._attn_dtype(new_cache.k.dtype, dt)
            kw = dict(page_table=new_cache.page_table, k_scale=self.k_scale, v_scale=self.v_scale)
            if self.dense:
                o = msa_jax.attention(q.astype(adt), new_cache.k, new_cache.v, plan, **kw)
            else:
                o = msa_jax.sparse_attention(q.astype(adt), new_cache.k, new_cache.v, qi.astype(adt),
                                             new_cache.index_k, plan, topk=self.topk,
                                             local_blocks=self.local_blocks, sink_blocks=self.sink_blocks,
                                             index_k_scale=self.index_k_scale, **kw)
        elif self.dense:
            o = msa_jax.attention(q, k, v, plan)
        else:
            o = msa_jax.sparse_attention(q, k, v, qi, ki, plan, topk=self.topk, local_blocks=self.local_blocks,
                                         sink_blocks=self.sink_blocks)
        y = self._out(o, dt, tp_axis)
        return y if cache is None else (y, new_cache)

    # ------------------------------------------------------------------ decode

    def decode(self, x, cache: MSACache, plan: DecodePlan, *, tp_axis: Optional[str] = None):
        """One decode step: ``x [B, hidden]`` (the token at position ``cache.kv_lens``) ->
        ``(out [B, hidden], new_cache)`` with the token's K / V / index key appended (in place
        when the cache is donated) and ``kv_lens + 1``. Requests whose cache is full are not
        written (their length is clipped to the capacity).
        """
        self._check_plan(plan, DecodePlan)
        if x.ndim != 2 or x.shape[0] != plan.batch_size:
            raise ValueError(f"MSAAttention.decode: x must be [{plan.batch_size}, hidden], got {x.shape}")
        pos = cache.kv_lens
        q, k, v, qi, ki = self._project(x, pos)
        dt = q.dtype
        pt = cache.page_table
        kc, vc = msa_jax.append_kv(cache.k, cache.v, k, v, pt, pos, k_scale=self.k_scale, v_scale=self.v_scale)
        lens = jnp.minimum(pos + 1, cache.capacity).astype(jnp.int32)
        adt = self._attn_dtype(kc.dtype, dt)
        kw = dict(k_scale=self.k_scale, v_scale=self.v_scale)
        if self.dense:
            ic = None
            o = msa_jax.decode(q.astype(adt), kc, vc, pt, lens, plan, **kw)
        else:
            ic = msa_jax.append_cache(cache.index_k, ki[:, None, :], pt, pos, scale=self.index_k_scale)
            scores = msa_jax.block_scores(qi.astype(adt), ic, plan, page_table=pt, kv_lens=lens,
                                          k_scale=self.index_k_scale)
            ids = msa_jax.topk_select(scores, self.topk, plan, local_blocks=self.local_blocks,
                                      sink_blocks=self.sink_blocks, kv_lens=lens)
            o = msa_jax.decode(q.astype(adt), kc, vc, pt, lens, plan, block_ids=ids, **kw)
        return self._out(o, dt, tp_axis), MSACache(kc, vc, ic, pt, lens)

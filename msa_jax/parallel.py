"""Multi-device MSA with ``jax.shard_map``: tensor parallel over KV heads, data parallel over requests.

Layout on a mesh with a data axis ``dp`` and a tensor axis ``tp``:

* parameters of :class:`msa_jax.nn.MSAAttention`: ``wq``, ``wk``, ``wv`` and the index
  queries ``wq_idx`` are split over ``tp`` along their head axis (a shard holds whole GQA
  groups: its KV heads, their query heads and their index-query heads); ``wo`` is split
  over its head axis and the output projection is ``psum``-ed over ``tp``. The shared
  index-key head (``wk_idx``) and the norms are replicated; so is every other parameter
  (embedding, MLP, ... of a model: they are computed redundantly on the tp shards).
* caches (:class:`msa_jax.nn.MSACache`): K / V ``[num_pages, Hkv, page, D]`` split over
  pages by ``dp`` and over heads by ``tp``; the one-head index-key cache split over pages
  by ``dp`` and *replicated* over ``tp`` (every tp shard scores the blocks for its own
  index queries against the same keys); ``page_table`` and ``kv_lens`` split over
  requests by ``dp``. Each dp shard owns its pages: page tables hold *shard-local* page
  ids (:func:`local_page_table`).
* activations: requests (decode ``[B, ...]``) split by ``dp``.

So a decode step needs no communication but the ``psum`` of the attention output over
``tp``: no cache is ever gathered (the tests assert that the compiled decode step has no
``all-gather``).

``shard_map`` is the supported path; no ``custom_partitioning`` rule is provided. The
ops are opaque FFI custom calls whose metadata (plans: lengths, capacities, page
tables) is per *shard* — a sharded batch needs a per-shard plan and page ids that index
the shard's own pages, which automatic partitioning of a global call cannot express;
and GSPMD would otherwise be free to gather caches around the custom call. With
``shard_map`` the per-shard program is explicit and the only collective is the ``psum``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import msa_jax
from msa_jax.nn import MSAAttention, MSACache
from msa_jax.plan import DecodePlan, PrefillPlan

__all__ = ["make_mesh", "param_specs", "cache_specs", "local_page_table", "shard_module", "init_cache",
           "local_decode_plan", "local_prefill_plan", "decode_step", "prefill"]

_HEAD_SPLIT = {"wq": 1, "wk": 1, "wv": 1, "wq_idx": 1, "wo": 0}   # parameter name -> head axis


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def make_mesh(dp: int, tp: int, devices: Optional[Sequence[Any]] = None, axis_names=("dp", "tp")) -> Mesh:
    """A ``dp x tp`` mesh of the first ``dp * tp`` devices (default ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < dp * tp:
        raise ValueError(f"a {dp}x{tp} mesh needs {dp * tp} devices, have {len(devices)}")
    return Mesh(np.array(devices[: dp * tp]).reshape(dp, tp), axis_names)


def _is_cache(x) -> bool:
    return isinstance(x, MSACache)


def param_specs(state, *, tp_axis: str = "tp"):
    """PartitionSpecs (same tree as ``state = nnx.state(module)``): MSA head-sharded, rest replicated."""

    def spec(path, x):
        name = None
        for k in reversed(path):
            key = getattr(k, "key", getattr(k, "name", None))
            if isinstance(key, str) and key != "value":
                name = key
                break
        if name in _HEAD_SPLIT and tp_axis is not None:
            axes = [None] * x.ndim
            axes[_HEAD_SPLIT[name]] = tp_axis
            return P(*axes)
        return P()

    return jax.tree_util.tree_map_with_path(spec, state)


def cache_specs(caches, *, dp_axis: Optional[str] = "dp", tp_axis: Optional[str] = "tp"):
    """PartitionSpecs for a pytree of :class:`MSACache` (see the module docstring)."""

    def spec(c: MSACache):
        return MSACache(k=P(dp_axis, tp_axis), v=P(dp_axis, tp_axis),
                        index_k=None if c.index_k is None else P(dp_axis),
                        page_table=P(dp_axis), kv_lens=P(dp_axis))

    return jax.tree_util.tree_map(spec, caches, is_leaf=_is_cache)


def local_page_table(batch_size: int, max_len: int, page_size: int, dp: int) -> np.ndarray:
    """Contiguous per-shard page tables: request ``b`` of dp shard ``b // (B / dp)`` owns its
    shard's pages ``[i * P, (i + 1) * P)``, ``i = b % (B / dp)``, ``P = ceil(max_len / page_size)``.

    With the cache's page axis split over ``dp``, shard ``s`` holds global pages
    ``[s * (B / dp) * P, (s + 1) * (B / dp) * P)``: the same physical layout as the
    single-device table :func:`msa_jax.nn.contiguous_page_table`, with local ids.
    """
    if batch_size % dp:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of dp ({dp})")
    pages = _cdiv(max_len, page_size)
    local = batch_size // dp
    return np.tile(np.arange(local * pages, dtype=np.int32).reshape(local, pages), (dp, 1))


def _axis_size(mesh: Mesh, axis: Optional[str]) -> int:
    return 1 if axis is None else mesh.shape[axis]


def shard_module(module, mesh: Mesh, *, tp_axis: str = "tp"):
    """``(graphdef, state)`` of an nnx module with the state placed on ``mesh`` per :func:`param_specs`."""
    graphdef, state = nnx.split(module)
    specs = param_specs(state, tp_axis=tp_axis)
    state = jax.tree_util.tree_map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), state, specs)
    return graphdef, state


def init_cache(module, mesh: Mesh, batch_size: int, max_len: int, dtype: Any = None, *,
               dp_axis: str = "dp", tp_axis: str = "tp"):
    """Empty caches from ``module.init_cache`` (an MSAAttention or a model with the same method),
    with per-shard page tables and every array placed on ``mesh``."""
    dp = _axis_size(mesh, dp_axis)
    page_size = _page_size(module)
    pt = local_page_table(batch_size, max_len, page_size, dp)
    caches = module.init_cache(batch_size, max_len, dtype, page_table=pt, num_pages=pt.size)
    specs = cache_specs(caches, dp_axis=dp_axis, tp_axis=tp_axis)
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), caches, specs)


def _page_size(module) -> int:
    for _, m in nnx.iter_graph(module):
        if isinstance(m, MSAAttention):
            return m.block_size
    raise TypeError("the module holds no MSAAttention layer")


def local_decode_plan(plan: DecodePlan, dp: int, tp: int) -> DecodePlan:
    """The plan of one shard: ``B / dp`` requests, ``Hq / tp`` and ``Hkv / tp`` heads."""
    if plan.batch_size % dp or plan.num_kv_heads % tp:
        raise ValueError(f"batch ({plan.batch_size}) must divide by dp ({dp}) and num_kv_heads "
                         f"({plan.num_kv_heads}) by tp ({tp})")
    return msa_jax.plan_decode(plan.batch_size // dp, plan.max_kv_len, num_q_heads=plan.num_q_heads // tp,
                               num_kv_heads=plan.num_kv_heads // tp, head_dim=plan.head_dim,
                               page_size=plan.page_size)


def local_prefill_plan(plan: PrefillPlan, dp: int, tp: int) -> PrefillPlan:
    """One plan for every dp shard: slot ``j`` of each shard padded to the longest request
    ``j`` over the shards (fresh prompts: ``qo_lens == kv_lens``)."""
    if plan.qo_lens != plan.kv_lens:
        raise ValueError("sharded prefill needs fresh prompts (qo_lens == kv_lens)")
    if plan.batch_size % dp or plan.num_kv_heads % tp:
        raise ValueError(f"batch ({plan.batch_size}) must divide by dp ({dp}) and num_kv_heads "
                         f"({plan.num_kv_heads}) by tp ({tp})")
    lens = np.asarray(plan.qo_lens).reshape(dp, -1).max(axis=0)
    return msa_jax.plan_prefill(lens, lens, num_q_heads=plan.num_q_heads // tp,
                                num_kv_heads=plan.num_kv_heads // tp, head_dim=plan.head_dim,
                                page_size=plan.page_size, block_size=plan.block_size, causal=plan.causal)


def _specs_for(module, caches_like, dp_axis, tp_axis):
    _, state = nnx.split(module)
    return param_specs(state, tp_axis=tp_axis), cache_specs(caches_like, dp_axis=dp_axis, tp_axis=tp_axis)


def decode_step(module, mesh: Mesh, plan: DecodePlan, caches_like, *, dp_axis: str = "dp",
                tp_axis: str = "tp", donate: bool = True):
    """A jitted, ``shard_map``-ed decode step ``step(state, x, caches) -> (out, caches)``.

    ``module.decode(x, caches, local_plan, tp_axis=...)`` runs per shard (an
    :class:`~msa_jax.nn.MSAAttention`, or a model whose ``decode`` passes ``tp_axis`` on).
    ``plan`` is the global :class:`DecodePlan`; ``state`` from :func:`shard_module`,
    ``caches`` from :func:`init_cache` (``caches_like``: any caches of that structure,
    e.g. those, to derive the specs). ``x`` (``[B, ...]``) and ``out`` are split over
    requests by ``dp``; ``out`` is replicated over ``tp``. Caches are donated.
    """
    dp, tp = _axis_size(mesh, dp_axis), _axis_size(mesh, tp_axis)
    local = local_decode_plan(plan, dp, tp)
    graphdef = nnx.graphdef(module)
    pspecs, cspecs = _specs_for(module, caches_like, dp_axis, tp_axis)

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(pspecs, P(dp_axis), cspecs),
                       out_specs=(P(dp_axis), cspecs))
    def step(state, x, caches):
        return nnx.merge(graphdef, state).decode(x, caches, local, tp_axis=tp_axis)

    return jax.jit(step, donate_argnums=(2,) if donate else ())


def prefill(module, mesh: Mesh, plan: PrefillPlan, caches_like=None, *, dp_axis: str = "dp",
            tp_axis: str = "tp", donate: bool = True):
    """A jitted, ``shard_map``-ed prefill ``fn(state, x, caches) -> (out, caches)`` (or
    ``fn(state, x) -> out`` when ``caches_like`` is None).

    ``module(x, local_plan, caches, tp_axis=...)`` runs per shard and returns per-token
    outputs (an :class:`~msa_jax.nn.MSAAttention`). ``x [plan.total_q, ...]`` is the ragged
    batch of the global ``plan`` (fresh prompts, ``qo_lens == kv_lens``); requests
    ``[s * B/dp, (s+1) * B/dp)`` go to dp shard ``s``. Every shard runs the same plan
    (:func:`local_prefill_plan`: request slots right-padded to the longest over the
    shards; causal rows never see their padding), the padding is dropped from ``out``
    and the caches' ``kv_lens`` are set to the true lengths.
    """
    dp, tp = _axis_size(mesh, dp_axis), _axis_size(mesh, tp_axis)
    local = local_prefill_plan(plan, dp, tp)
    lens = np.asarray(plan.qo_lens).reshape(dp, -1)
    Bl, Tl = lens.shape[1], local.total_q
    lptr = local.q_indptr()
    gptr = plan.q_indptr()
    # padded (dp * Tl) rows <- global rows; global rows <- padded rows
    src = np.zeros(dp * Tl, np.int64)
    dst = np.zeros(plan.total_q, np.int64)
    for s in range(dp):
        for j in range(Bl):
            b, n = s * Bl + j, lens[s, j]
            rows = s * Tl + lptr[j] + np.arange(local.qo_lens[j])
            src[rows] = gptr[b] + np.minimum(np.arange(local.qo_lens[j]), n - 1)
            dst[gptr[b]: gptr[b] + n] = rows[:n]
    true_lens = jnp.asarray(np.asarray(plan.qo_lens, np.int32))
    graphdef = nnx.graphdef(module)
    _, state = nnx.split(module)
    pspecs = param_specs(state, tp_axis=tp_axis)

    if caches_like is None:
        @functools.partial(jax.shard_map, mesh=mesh, in_specs=(pspecs, P(dp_axis)), out_specs=P(dp_axis))
        def body(state, xp):
            return nnx.merge(graphdef, state)(xp, local, tp_axis=tp_axis)

        return jax.jit(lambda state, x: body(state, x[src])[dst])

    cspecs = cache_specs(caches_like, dp_axis=dp_axis, tp_axis=tp_axis)

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(pspecs, P(dp_axis), cspecs, P(dp_axis)),
                       out_specs=(P(dp_axis), cspecs))
    def body(state, xp, caches, lens):
        out, caches = nnx.merge(graphdef, state)(xp, local, caches, tp_axis=tp_axis)
        caches = jax.tree_util.tree_map(lambda c: c.replace(kv_lens=lens), caches, is_leaf=_is_cache)
        return out, caches

    def fn(state, x, caches):
        out, caches = body(state, x[src], caches, true_lens)
        return out[dst], caches

    return jax.jit(fn, donate_argnums=(2,) if donate else ())

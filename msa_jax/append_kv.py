"""Write new tokens into paged caches (``msa_append_paged``), in place when donated."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msa_jax import _common as c
from msa_jax import _ffi  # noqa: F401

__all__ = ["append_kv", "append_cache"]


def append_cache(cache, new, page_table, positions, *, scale: float = 1.0):
    """Write ``new`` into one paged cache; returns the updated cache.

    Args:
      cache: ``[num_pages, H, page_size, D]`` (float32, bfloat16, float16 or float8_e4m3fn).
      new: ``[B, H, D]`` (one token per request) or ``[B, S, H, D]`` (S tokens per request),
        float32 / bfloat16 / float16. Stored as ``new / scale`` in the cache's dtype
        (fp8: round to nearest even, saturating at +-448).
      page_table: ``[B, max_pages] int32``.
      positions: ``[B] int32``: token ``s`` of request ``b`` goes to position ``positions[b] + s``.
        Negative positions skip the request; positions past the page table or on
        out-of-range page ids are skipped.

    The output aliases ``cache``: under ``jax.jit(..., donate_argnums=...)`` the update is in place.
    """
    op = "append_cache"
    c.check_array(op, "cache", cache, rank=4, dtypes=c.KV_DTYPES)
    c.check_array(op, "new", new, dtypes=c.FLOAT_DTYPES)
    if new.ndim == 3:
        new = new[:, None]
    if new.ndim != 4:
        raise ValueError(f"{op}: new must be [B, H, D] or [B, S, H, D], got shape {c.shape_str(new)}")
    B = new.shape[0]
    c.check_dim(op, "new", new, 2, cache.shape[1], "the cache's heads")
    c.check_dim(op, "new", new, 3, cache.shape[3], "the cache's head_dim")
    c.check_array(op, "page_table", page_table, rank=2, dtypes=(jnp.int32,))
    c.check_dim(op, "page_table", page_table, 0, B, "new's batch")
    c.check_array(op, "positions", positions, rank=1, dtypes=(jnp.int32,))
    c.check_dim(op, "positions", positions, 0, B, "new's batch")
    if float(scale) == 0.0:
        raise ValueError(f"{op}: scale must be non-zero")
    call = jax.ffi.ffi_call("msa_append_paged", jax.ShapeDtypeStruct(cache.shape, cache.dtype),
                            vmap_method="sequential", input_output_aliases={0: 0})

    @c.inference_only(op)
    def run(cache, new, page_table, positions):
        return call(cache, new, page_table, positions, **c.attrs(scale=float(scale)))

    return run(cache, new, page_table, positions)


def append_kv(k_cache, v_cache, k_new, v_new, page_table, positions, *, k_scale: float = 1.0,
              v_scale: float = 1.0):
    """Append K and V tokens to paged caches: returns ``(k_cache, v_cache)`` (see :func:`append_cache`)."""
    return (append_cache(k_cache, k_new, page_table, positions, scale=k_scale),
            append_cache(v_cache, v_new, page_table, positions, scale=v_scale))

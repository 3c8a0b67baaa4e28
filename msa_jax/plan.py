"""Plans: static, hashable metadata for prefill and decode.

A plan holds what XLA must know at compile time (lengths in prefill, capacities
in decode). It is frozen and hashable, so it can be a static argument of
``jax.jit`` and every metadata array built from it becomes an XLA constant.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = ["PrefillPlan", "DecodePlan", "plan_prefill", "plan_decode"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_heads(num_q_heads: int, num_kv_heads: int, head_dim: int) -> None:
    if num_q_heads < 1 or num_kv_heads < 1:
        raise ValueError(f"num_q_heads ({num_q_heads}) and num_kv_heads ({num_kv_heads}) must be >= 1")
    if num_q_heads % num_kv_heads:
        raise ValueError(
            f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads}) (GQA)")
    if head_dim < 1 or head_dim % 8:
        raise ValueError(f"head_dim ({head_dim}) must be a positive multiple of 8")


@dataclasses.dataclass(frozen=True)
class PrefillPlan:
    """Static description of a ragged prefill batch (see :func:`plan_prefill`)."""

    qo_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: Optional[int]
    block_size: int
    causal: bool

    @property
    def batch_size(self) -> int:
        return len(self.qo_lens)

    @property
    def total_q(self) -> int:
        return sum(self.qo_lens)

    @property
    def total_kv(self) -> int:
        return sum(self.kv_lens)

    @property
    def paged(self) -> bool:
        return self.page_size is not None

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def max_kv_len(self) -> int:
        return max(self.kv_lens)

    @property
    def num_blocks(self) -> int:
        """Columns of block-shaped outputs: blocks of the longest sequence."""
        return _cdiv(self.max_kv_len, self.block_size)

    @property
    def max_pages(self) -> int:
        """Pages the longest sequence needs (paged plans): page_table's minimum width."""
        return _cdiv(self.max_kv_len, self.page_size) if self.paged else 0

    def q_indptr(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.qo_lens)]).astype(np.int32)

    def kv_indptr(self) -> np.ndarray:
        if self.paged:
            return np.zeros(self.batch_size + 1, np.int32)
        return np.concatenate([[0], np.cumsum(self.kv_lens)]).astype(np.int32)

    def kv_lens_array(self) -> np.ndarray:
        return np.asarray(self.kv_lens, np.int32)


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """Capacities of a decode batch (see :func:`plan_decode`); kv lengths are runtime arrays."""

    batch_size: int
    max_kv_len: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int

    @property
    def block_size(self) -> int:
        return self.page_size

    @property
    def causal(self) -> bool:
        return True

    @property
    def paged(self) -> bool:
        return True

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def num_blocks(self) -> int:
        return _cdiv(self.max_kv_len, self.page_size)

    @property
    def max_pages(self) -> int:
        return self.num_blocks

    @property
    def total_q(self) -> int:
        return self.batch_size

    def q_indptr(self) -> np.ndarray:
        return np.arange(self.batch_size + 1, dtype=np.int32)

    def kv_indptr(self) -> np.ndarray:
        return np.zeros(self.batch_size + 1, np.int32)


def plan_prefill(
    qo_lens: Sequence[int],
    kv_lens: Sequence[int],
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: Optional[int] = None,
    block_size: int = 128,
    causal: bool = True,
) -> PrefillPlan:
    """Plan a ragged prefill batch.

    Args:
      qo_lens: query tokens per sequence; queries are packed token-major, ``q [sum(qo_lens), Hq, D]``.
      kv_lens: KV tokens per sequence (dense KV is packed the same way, ``k [sum(kv_lens), Hkv, D]``).
        With ``causal`` (bottom-right), query ``i`` of a sequence sits at position ``kv_len - q_len + i``,
        so ``qo_len <= kv_len`` is required.
      num_q_heads, num_kv_heads, head_dim: the attention shape (GQA: Hq a multiple of Hkv).
      page_size: the paged-cache page size, or None for dense KV. Paged blocks are pages:
        ``block_size`` must then equal ``page_size`` (it defaults to it).
      block_size: tokens per selection block (128 by default).
      causal: bottom-right causal mask.
    """
    qo = tuple(int(x) for x in qo_lens)
    kv = tuple(int(x) for x in kv_lens)
    if len(qo) == 0 or len(qo) != len(kv):
        raise ValueError(f"qo_lens and kv_lens must be non-empty and of equal length, got {len(qo)} and {len(kv)}")
    if any(q < 1 for q in qo) or any(k < 1 for k in kv):
        raise ValueError(f"every qo_len and kv_len must be >= 1, got qo_lens={qo}, kv_lens={kv}")
    if causal and any(q > k for q, k in zip(qo, kv)):
        raise ValueError(f"causal prefill needs qo_len <= kv_len per sequence, got qo_lens={qo}, kv_lens={kv}")
    _check_heads(num_q_heads, num_kv_heads, head_dim)
    if page_size is not None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if block_size not in (128, page_size):
            raise ValueError(f"paged plans use block_size == page_size ({page_size}), got block_size={block_size}")
        block_size = page_size
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return PrefillPlan(qo, kv, int(num_q_heads), int(num_kv_heads), int(head_dim),
                       None if page_size is None else int(page_size), int(block_size), bool(causal))


def plan_decode(
    batch_size: int,
    max_kv_len: int,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int = 128,
) -> DecodePlan:
    """Plan decode over a paged cache: one query token per request.

    Only capacities are static; the current kv lengths are a runtime ``kv_lens [B] int32``
    array, so one compilation serves every decode step. The query sits at position
    ``kv_len - 1`` (append the new token's K/V first).
    """
    if batch_size < 1 or max_kv_len < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_kv_len ({max_kv_len}) must be >= 1")
    _check_heads(num_q_heads, num_kv_heads, head_dim)
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    return DecodePlan(int(batch_size), int(max_kv_len), int(num_q_heads), int(num_kv_heads),
                      int(head_dim), int(page_size))

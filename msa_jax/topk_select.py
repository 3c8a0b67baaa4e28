"""Exp-free top-k block selection (``msa_topk_select``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msa_jax import _common as c
from msa_jax import _ffi  # noqa: F401

__all__ = ["topk_select", "MAX_TOPK"]

MAX_TOPK = 64


# The GPU kernel ranks rows in segments of at most 2048 blocks; long rows are split
# over CTAs that write candidates to a scratch output, then merged. The schedule
# depends on shapes only (CUDA-graph safe). Mirror of cuda/topk_select/topk_select.h.
_SEGMENT = 2048


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def topk_num_splits(rows: int, nb: int, k: int) -> int:
    """Segments per row in the first round (more when there are too few rows to fill the GPU)."""
    if nb <= _SEGMENT:
        return 1
    s = _cdiv(nb, _SEGMENT)
    if rows * s < 1024:
        want = _cdiv(1024, max(rows, 1))
        cap = min(_cdiv(nb, 512), max(1, 1024 // max(k, 1)))
        s = max(s, min(want, cap))
    return s


def topk_scratch_bytes(rows: int, nb: int, k: int, num_splits: int) -> int:
    """Bytes of the scratch output of the split path (two alternating candidate regions)."""
    total = [0, 0]
    n, want, r = nb, num_splits, 0
    while True:
        seg = _round_up(_cdiv(n, min(want, n)), 4) if n > 0 else 4
        splits = _cdiv(n, seg) if n > 0 else 1
        if splits == 1:
            return total[0] + total[1]
        total[r % 2] = max(total[r % 2], _round_up(rows * _round_up(splits * k, 4) * 8, 256))
        n, want, r = splits * k, _cdiv(splits * k, _SEGMENT), r + 1


def topk_select(scores, topk: int, plan, *, local_blocks: int = 1, sink_blocks: int = 0, kv_lens=None):
    """Select each row's top-k blocks: ``[T, H, topk] int32``, ascending, -1 padded.

    Ranks raw scores (no softmax, no exp). The ``local_blocks`` last visible blocks (the
    block holding the query first) and the first ``sink_blocks`` blocks are always chosen
    and use slots of the budget; the other slots go to the highest-scoring causally
    visible blocks, ties to the lower block id; NaN ranks below every number but may fill
    a slot no number wants. Rows with fewer visible blocks than ``topk`` are -1 padded.

    Args:
      scores: ``[T, H, plan.num_blocks] float32`` (from :func:`block_scores`).
      topk: 1..64 slots per row.
      plan: a :class:`PrefillPlan`, or a :class:`DecodePlan` with runtime ``kv_lens``.
    """
    op = "topk_select"
    c.check_plan(op, plan)
    c.check_array(op, "scores", scores, rank=3, dtypes=(jnp.float32,))
    T, H, NB = scores.shape
    c.check_dim(op, "scores", scores, 0, plan.total_q, "the plan's query tokens")
    c.check_dim(op, "scores", scores, 2, plan.num_blocks, "the plan's num_blocks")
    if not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise ValueError(f"{op}: topk must be an int in [1, {MAX_TOPK}], got {topk!r}")
    if local_blocks < 0 or sink_blocks < 0:
        raise ValueError(f"{op}: local_blocks ({local_blocks}) and sink_blocks ({sink_blocks}) must be >= 0")
    if local_blocks + sink_blocks > topk:
        raise ValueError(
            f"{op}: local_blocks + sink_blocks ({local_blocks} + {sink_blocks}) must fit in topk ({topk})")
    q_indptr, _, lens = c.seq_arrays(op, plan, kv_lens)
    splits = topk_num_splits(T * H, NB, topk)
    call = jax.ffi.ffi_call(
        "msa_topk_select",
        (jax.ShapeDtypeStruct((T, H, topk), jnp.int32),
         jax.ShapeDtypeStruct((topk_scratch_bytes(T * H, NB, topk, splits),), jnp.uint8)),
        vmap_method="sequential")
    attributes = c.attrs(local_blocks=int(local_blocks), sink_blocks=int(sink_blocks),
                         block_size=plan.block_size, causal=plan.causal, num_splits=splits)

    @c.inference_only(op)
    def run(scores, lens):
        return call(scores, q_indptr, lens, **attributes)[0]

    return run(scores, lens)

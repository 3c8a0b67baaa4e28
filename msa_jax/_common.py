"""Trace-time validation and helpers shared by the op wrappers."""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.plan import DecodePlan, PrefillPlan

Plan = Union[PrefillPlan, DecodePlan]

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
FP8 = jnp.float8_e4m3fn
KV_DTYPES = FLOAT_DTYPES + (FP8,)


def shape_str(x) -> str:
    return "[" + ",".join(str(d) for d in x.shape) + "]"


def check_array(op: str, name: str, x, *, rank: Optional[int] = None, dtypes=None) -> None:
    if x is None:
        raise TypeError(f"{op}: {name} is required")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}")
    if rank is not None and x.ndim != rank:
        raise ValueError(f"{op}: {name} must have rank {rank}, got shape {shape_str(x)}")
    if dtypes is not None and not any(x.dtype == jnp.dtype(d) for d in dtypes):
        names = ", ".join(jnp.dtype(d).name for d in dtypes)
        raise TypeError(f"{op}: {name} dtype must be one of ({names}), got {x.dtype}")


def check_dim(op: str, name: str, x, axis: int, expected: int, what: str) -> None:
    if x.shape[axis] != expected:
        raise ValueError(
            f"{op}: {name} dim {axis} must equal {what} ({expected}), got shape {shape_str(x)}")


def check_plan(op: str, plan, kinds=(PrefillPlan, DecodePlan)) -> None:
    if not isinstance(plan, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"{op}: plan must be a {names} (msa_jax.plan_prefill / plan_decode), got {type(plan).__name__}")


def check_kv_dtype(op: str, name: str, x, q_dtype) -> None:
    if x.dtype != q_dtype and x.dtype != jnp.dtype(FP8):
        raise TypeError(f"{op}: {name} dtype must be q's dtype ({q_dtype}) or float8_e4m3fn, got {x.dtype}")


def check_kv_cache(op: str, name: str, x, plan: Plan, *, heads: int, head_dim: int,
                   page_table) -> None:
    """Dense [Tk, heads, D] for dense prefill plans, paged [pages, heads, page, D] otherwise."""
    if plan.paged:
        check_array(op, name, x, rank=4, dtypes=KV_DTYPES)
        check_dim(op, name, x, 1, heads, "num_kv_heads")
        check_dim(op, name, x, 2, plan.page_size, "the plan's page_size")
        check_dim(op, name, x, 3, head_dim, "head_dim")
        if page_table is None:
            raise TypeError(f"{op}: the plan is paged (page_size={plan.page_size}): page_table is required")
        check_array(op, "page_table", page_table, rank=2, dtypes=(jnp.int32,))
        check_dim(op, "page_table", page_table, 0, plan.batch_size, "the plan's batch size")
        if page_table.shape[1] < plan.max_pages:
            raise ValueError(
                f"{op}: page_table has {page_table.shape[1]} columns but the plan needs {plan.max_pages} "
                f"(ceil(max kv_len / page_size))")
    else:
        check_array(op, name, x, rank=3, dtypes=KV_DTYPES)
        check_dim(op, name, x, 0, plan.total_kv, "the plan's total kv tokens")
        check_dim(op, name, x, 1, heads, "num_kv_heads")
        check_dim(op, name, x, 2, head_dim, "head_dim")
        if page_table is not None:
            raise TypeError(f"{op}: page_table given but the plan is dense (plan_prefill(page_size=None))")


def check_q_and_kv(op: str, q, kvs, plan: Plan, page_table, *, rows_what: str) -> None:
    """q ``[rows, Hq, D]`` against the plan, then each named K/V array against q and the plan."""
    check_array(op, "q", q, rank=3, dtypes=FLOAT_DTYPES)
    check_dim(op, "q", q, 0, plan.total_q, rows_what)
    check_dim(op, "q", q, 1, plan.num_q_heads, "num_q_heads")
    check_dim(op, "q", q, 2, plan.head_dim, "head_dim")
    for name, x in kvs:
        check_kv_cache(op, name, x, plan, heads=plan.num_kv_heads, head_dim=q.shape[2], page_table=page_table)
        check_kv_dtype(op, name, x, q.dtype)


def seq_arrays(op: str, plan: Plan, kv_lens=None):
    """(q_indptr, kv_indptr, kv_lens) int32 arrays for the FFI call."""
    if isinstance(plan, DecodePlan):
        if kv_lens is None:
            raise TypeError(f"{op}: a DecodePlan needs the runtime kv_lens [B] int32 array")
        check_array(op, "kv_lens", kv_lens, rank=1, dtypes=(jnp.int32,))
        check_dim(op, "kv_lens", kv_lens, 0, plan.batch_size, "the plan's batch_size")
        lens = kv_lens
    else:
        if kv_lens is not None:
            raise TypeError(f"{op}: kv_lens is a runtime input of decode plans only; a PrefillPlan holds its lengths")
        lens = jnp.asarray(plan.kv_lens_array())
    return jnp.asarray(plan.q_indptr()), jnp.asarray(plan.kv_indptr()), lens


def dummy_page_table(plan: Plan):
    """The page_table argument of dense calls: ignored by the handlers."""
    return jnp.zeros((plan.batch_size, 1), jnp.int32)


def default_scale(scale: Optional[float], head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def attrs(**kw) -> dict:
    """Attributes as the numpy scalar types the FFI decoder expects."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, bool):
            out[k] = np.bool_(v)
        elif isinstance(v, int):
            out[k] = np.int64(v)
        elif isinstance(v, float):
            out[k] = np.float32(v)
        else:
            raise TypeError(f"attribute {k}: unsupported type {type(v).__name__}")
    return out


def inference_only(name: str) -> Callable:
    """Wraps ``fn(*arrays)`` so that differentiating it raises a clear error."""

    def wrap(fn):
        @jax.custom_jvp
        def f(*args):
            return fn(*args)

        @f.defjvp
        def _jvp(primals, tangents):
            raise TypeError(
                f"msa_jax.{name} is inference-only: it has no derivative. Use msa_jax.reference "
                f"(pure jax.numpy) to differentiate, or wrap the call in jax.lax.stop_gradient.")

        return f

    return wrap

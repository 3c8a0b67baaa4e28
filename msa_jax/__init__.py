"""msa_jax: MiniMax Sparse Attention (MSA) for JAX as XLA FFI custom calls.

Pipeline: :func:`block_scores` (index branch) -> :func:`topk_select` (block selection)
-> :func:`sparse_prefill` (main branch), bundled as :func:`sparse_attention`; plus dense /
paged :func:`attention`, paged :func:`decode` and :func:`append_kv`. Plans
(:func:`plan_prefill`, :func:`plan_decode`) are static, hashable metadata. Every op runs
under ``jax.jit`` and ``jax.vmap``; ops are inference-only. :mod:`msa_jax.reference` is a
pure-jax.numpy reference of every op.
"""

from msa_jax._ffi import cuda_kernels, with_cuda
from msa_jax.append_kv import append_cache, append_kv
from msa_jax.attention import attention
from msa_jax.block_scores import block_scores
from msa_jax.decode import decode
from msa_jax.decode_step import sparse_decode_step
from msa_jax.plan import DecodePlan, PrefillPlan, plan_decode, plan_prefill
from msa_jax.sparse_attention import sparse_attention
from msa_jax.sparse_prefill import sparse_prefill
from msa_jax.topk_select import topk_select
from msa_jax import reference

__version__ = "0.1.0"

__all__ = [
    "DecodePlan", "PrefillPlan", "append_cache", "append_kv", "attention", "block_scores",
    "cuda_kernels", "decode", "plan_decode", "plan_prefill", "reference", "sparse_attention",
    "sparse_decode_step", "sparse_prefill", "topk_select", "with_cuda",
]

"""Loads the compiled extension and registers its XLA FFI targets with JAX."""

from __future__ import annotations

import functools

import jax

from msa_jax import _msa_jax_ffi

__all__ = ["with_cuda", "cuda_kernels", "ensure_registered"]

with_cuda: bool = bool(_msa_jax_ffi.with_cuda)


def cuda_kernels() -> tuple[str, ...]:
    """Targets that have a real CUDA kernel in this build (others fail clearly on a GPU)."""
    return tuple(_msa_jax_ffi.cuda_kernels())


@functools.cache
def ensure_registered() -> None:
    for name, per_platform in _msa_jax_ffi.registrations().items():
        for platform, capsule in per_platform.items():
            jax.ffi.register_ffi_target(name, capsule, platform=platform)


ensure_registered()

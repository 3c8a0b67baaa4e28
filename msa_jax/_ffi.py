"""Loads the compiled extension and registers its XLA FFI targets with JAX."""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.metadata
import importlib.util
import pathlib

import jax


def _load_extension():
    """The compiled extension; also found when Python imports this source tree
    (e.g. ``python -m msa_jax.demo`` run from the repository root after ``pip install .``)."""
    try:
        from msa_jax import _msa_jax_ffi
        return _msa_jax_ffi
    except ImportError:
        pass
    try:
        dist = importlib.metadata.distribution("msa_jax")
        files = [f for f in dist.files or () if f.name.startswith("_msa_jax_ffi")
                 and f.suffix in importlib.machinery.EXTENSION_SUFFIXES[-1:] + [".so", ".pyd"]]
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        path = pathlib.Path(dist.locate_file(f))
        if path.exists():
            spec = importlib.util.spec_from_file_location("msa_jax._msa_jax_ffi", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise ImportError("msa_jax's compiled extension (_msa_jax_ffi) was not found: install the package "
                      "with `pip install .` (it builds the C++/CUDA handlers)")


_msa_jax_ffi = _load_extension()

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

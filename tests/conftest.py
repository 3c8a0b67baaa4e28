"""Test setup: 8 virtual CPU devices (shard_map tests), poisoned GPU outputs, CPU pinning, GPU skipping."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The CUDA handlers fill every output with NaN / 0x7F7F7F7F before each launch
# (ffi/cuda/poison.h), so an element a kernel fails to write fails the test instead
# of passing on stale memory. Read once per process, before msa_jax loads; the
# benchmarks leave it unset (one extra memset per output).
os.environ.setdefault("MSA_JAX_POISON_OUTPUTS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


HAS_GPU = _has_gpu()


def pytest_collection_modifyitems(config, items):
    import msa_jax

    skip = None
    if not HAS_GPU:
        skip = pytest.mark.skip(reason="no GPU visible to JAX")
    elif not msa_jax.with_cuda:
        skip = pytest.mark.skip(reason="msa_jax was built without CUDA")
    for item in items:
        if "gpu" in item.keywords and skip is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _pin_device(request):
    """CPU tests run on the CPU backend even on a GPU machine; GPU tests on the GPU."""
    platform = "gpu" if "gpu" in request.keywords else "cpu"
    if platform == "gpu" and not HAS_GPU:
        yield
        return
    with jax.default_device(jax.devices(platform)[0]):
        yield

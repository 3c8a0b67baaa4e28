"""Per-kernel GPU time of sparse_prefill calls (CUPTI through torch.profiler, same process).
python3 probe/sp_kernels.py 32768,524288 [calls]"""
import collections
import os
import sys

import jax
import jax.numpy as jnp
import torch
from torch.profiler import ProfilerActivity, profile

import msa_jax

sys.path.insert(0, os.path.dirname(__file__))
from sp_ab import make_inputs  # noqa: E402  (sp_ab's own runs are guarded by __main__)

ns = [int(x) for x in sys.argv[1].split(",")]
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 3
for n in ns:
    plan, q, k, v, ids_np = make_inputs(n)
    ids = jnp.asarray(ids_np)
    fn = jax.jit(lambda q, k, v, i: msa_jax.sparse_prefill(q, k, v, i, plan))
    for _ in range(3):
        jax.block_until_ready(fn(q, k, v, ids))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            jax.block_until_ready(fn(q, k, v, ids))
        torch.cuda.synchronize()
    tot = collections.defaultdict(float)
    cnt = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            tot[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            cnt[e.name] += 1
    allt = sum(tot.values())
    print(f"n={n}: {allt / calls / 1e3:.3f} ms of kernels per call")
    for name, t in sorted(tot.items(), key=lambda x: -x[1])[:12]:
        print(f"  {t / calls / 1e3:8.3f} ms/call {100 * t / allt:5.1f}%  x{cnt[name] // calls:4d}  {name[:110]}")

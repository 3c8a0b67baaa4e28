"""Our dense causal prefill (and cuDNN) at given lengths, 64q/4kv/d128, device-made inputs.
python3 probe/dense_len.py 32768,65536,131072,524288 [cudnn_max_n]"""
import sys
from pathlib import Path

sys.path.insert(0, str(next(d / "benchmarks" for d in Path(__file__).resolve().parents
                            if (d / "benchmarks" / "bench_sparse_section.py").exists())))
import jax
import jax.numpy as jnp

import msa_jax
from bench_sparse_attention_ops import bench

HQ, HKV, D = 64, 4, 128
ns = [int(x) for x in sys.argv[1].split(",")]
cudnn_max = int(sys.argv[2]) if len(sys.argv) > 2 else 0
print("#", jax.devices()[0].device_kind, flush=True)
for n in ns:
    kq, kk, kv = jax.random.split(jax.random.key(n + 7), 3)
    q = jax.random.normal(kq, (n, HQ, D), jnp.bfloat16)
    k = jax.random.normal(kk, (n, HKV, D), jnp.bfloat16)
    v = jax.random.normal(kv, (n, HKV, D), jnp.bfloat16)
    plan = msa_jax.plan_prefill([n], [n], num_q_heads=HQ, num_kv_heads=HKV, head_dim=D)
    flops = 4 * HQ * D * n * (n + 1) // 2
    ours = jax.jit(lambda q, k, v: msa_jax.attention(q, k, v, plan))
    t = bench(ours, [[q, k, v]], 0.0 if n > 131072 else 100.0, 500.0)
    msg = f"dense n={n}: ours {flops / t.median_ms / 1e9:.1f} TFLOP/s ({t.median_ms:.2f} ms, min {t.min_ms:.2f} max {t.max_ms:.2f})"
    if n <= cudnn_max:
        cu = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q[None], k[None], v[None], is_causal=True,
                                                                   implementation="cudnn")[0])
        tb = bench(cu, [[q, k, v]], 0.0 if n > 131072 else 100.0, 500.0)
        msg += f"; cuDNN {flops / tb.median_ms / 1e9:.1f} ({tb.median_ms / t.median_ms:.3f}x)"
    print(msg, flush=True)
    del q, k, v

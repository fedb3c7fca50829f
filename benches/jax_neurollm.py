#!/usr/bin/env python3
"""JAX training-throughput baseline for NeuroLLM (same architecture as the burn model), on the
CPU (default) or on a GPU (`--device gpu`, fp32 tensors as burn's; XLA's default matmul precision).

Usage: python3 benches/jax_neurollm.py --preset micro --batch 8 --steps 10 --warmup 3 --threads 2
Prints exactly one JSON line on stdout; everything else goes to stderr.
"""
import argparse
import json
import os
import sys
import time

PRESETS = {
    "micro": dict(d_model=384, n_layers=6, n_heads=6, n_kv_heads=2, d_ff=1024, seq_len=256),
    "nano": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=172, seq_len=64),
    "bootstrap": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048, seq_len=512),
}
VOCAB = 259  # 256 bytes + 3 specials

ap = argparse.ArgumentParser()
ap.add_argument("--preset", choices=PRESETS, default="micro")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
# XLA's default lets a GPU multiply fp32 matrices in TF32; "highest" keeps them fp32.
ap.add_argument("--matmul-precision", choices=("default", "highest"), default="default")
args = ap.parse_args()

# Thread limits must be in place before jax/XLA is imported: XLA sizes its CPU
# thread pools once, from the schedulable CPU count, when the client starts.
if args.device == "gpu":
    os.environ["JAX_PLATFORMS"] = "cuda"
elif hasattr(os, "sched_setaffinity"):
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cpus)
if args.device == "cpu":
    eigen_mt = "true" if args.threads > 1 else "false"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={eigen_mt} intra_op_parallelism_threads={args.threads}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

if args.matmul_precision == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")

cfg = PRESETS[args.preset]
D, L, H, KV, FF, T = (cfg[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "seq_len"))
HD = D // H


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def init_params(key):
    def normal(key, shape):
        return 0.02 * jax.random.normal(key, shape, jnp.float32)

    keys = iter(jax.random.split(key, 1 + 7 * L))
    layers = []
    for _ in range(L):
        layers.append(dict(
            attn_norm=jnp.ones((D,)),
            wq=normal(next(keys), (D, H * HD)),
            wk=normal(next(keys), (D, KV * HD)),
            wv=normal(next(keys), (D, KV * HD)),
            wo=normal(next(keys), (H * HD, D)),
            ffn_norm=jnp.ones((D,)),
            w1=normal(next(keys), (D, FF)),
            w3=normal(next(keys), (D, FF)),
            w2=normal(next(keys), (FF, D)),
        ))
    return dict(embed=normal(next(keys), (VOCAB, D)), layers=layers, final_norm=jnp.ones((D,)))


def rms_norm(x, gain, eps=1e-5):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * gain


def rope_tables(theta=10000.0):
    inv_freq = 1.0 / theta ** (np.arange(0, HD, 2, dtype=np.float32) / HD)
    freqs = np.outer(np.arange(T, dtype=np.float32), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)  # half-split (GPT-NeoX) layout
    return jnp.asarray(np.cos(emb))[None, :, None, :], jnp.asarray(np.sin(emb))[None, :, None, :]


COS, SIN = rope_tables()
CAUSAL = jnp.tril(jnp.ones((T, T), dtype=bool))


def apply_rope(x):  # x: [B, T, heads, HD]
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return x * COS + jnp.concatenate([-x2, x1], axis=-1) * SIN


def attention(p, x):
    B = x.shape[0]
    q = apply_rope((x @ p["wq"]).reshape(B, T, H, HD))
    k = apply_rope((x @ p["wk"]).reshape(B, T, KV, HD))
    v = (x @ p["wv"]).reshape(B, T, KV, HD)
    # Head h reads kv head h // (H/KV), which is what jnp.repeat on the head axis gives.
    k = jnp.repeat(k, H // KV, axis=2)
    v = jnp.repeat(v, H // KV, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(HD))
    scores = jnp.where(CAUSAL, scores, -jnp.inf)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    return out.reshape(B, T, H * HD) @ p["wo"]


def forward(params, tokens):
    x = params["embed"][tokens]
    for p in params["layers"]:
        x = x + attention(p, rms_norm(x, p["attn_norm"]))
        h = rms_norm(x, p["ffn_norm"])
        x = x + (jax.nn.silu(h @ p["w1"]) * (h @ p["w3"])) @ p["w2"]
    return rms_norm(x, params["final_norm"]) @ params["embed"].T  # tied embeddings


def loss_fn(params, batch):
    logits = forward(params, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


opt = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(learning_rate=3e-4, b1=0.9, b2=0.95, weight_decay=0.1),
)


def _train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


# Donating params/opt_state lets XLA update them in place rather than allocate fresh buffers.
train_step = jax.jit(_train_step, donate_argnums=(0, 1))


def main():
    params = init_params(jax.random.PRNGKey(0))
    opt_state = opt.init(params)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))

    rng = np.random.default_rng(0)
    # Batches are staged on device up front so host->device copies stay out of the timing.
    batches = [jnp.asarray(rng.integers(0, VOCAB, size=(args.batch, T + 1), dtype=np.int32))
               for _ in range(max(args.warmup, 1) + args.steps)]

    log(f"jax {jax.__version__} devices={jax.devices()} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    log(f"preset={args.preset} params={n_params} batch={args.batch} seq_len={T}")

    # Compile explicitly so it never leaks into the timed region, even with --warmup 0.
    t0 = time.perf_counter()
    step = train_step.lower(params, opt_state, batches[0]).compile()
    log(f"compile: {time.perf_counter() - t0:.2f}s")

    for i in range(args.warmup):
        params, opt_state, loss = step(params, opt_state, batches[i])
        log(f"warmup {i}: loss {float(loss):.4f}")
    jax.block_until_ready((params, opt_state))

    t0 = time.perf_counter()
    for i in range(args.steps):
        params, opt_state, loss = step(params, opt_state, batches[max(args.warmup, 1) + i])
    jax.block_until_ready((params, opt_state, loss))
    seconds = time.perf_counter() - t0
    log(f"final loss {float(loss):.4f}")

    tokens_per_sec = args.batch * T * args.steps / seconds
    print(json.dumps(dict(
        framework="jax",
        jax_version=jax.__version__,
        device=str(jax.devices()[0]),
        matmul_precision=args.matmul_precision,
        preset=args.preset,
        batch=args.batch,
        seq_len=T,
        params=n_params,
        steps=args.steps,
        seconds=round(seconds, 4),
        tokens_per_sec=round(tokens_per_sec, 2),
        gflops=round(6 * n_params * tokens_per_sec / 1e9, 3),
    )), flush=True)


if __name__ == "__main__":
    main()

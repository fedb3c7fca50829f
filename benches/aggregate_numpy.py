#!/usr/bin/env python3
"""numpy reference for the aggregation benchmark (benches/aggregate.rs).

Usage: python3 benches/aggregate_numpy.py --n 16 --d 10000000 --f 3 --runs 3
Times, on n float32 vectors of d values (13 honest around a common centre, f far-away
attackers, as in the Rust bench but from numpy's own RNG): np.mean(axis=0), np.median(axis=0),
a trimmed mean (np.sort along axis 0, mean of the middle n - 2f), Krum and Multi-Krum via
pairwise distances from the Gram matrix (X @ X.T). One warm-up, then the median of `runs`.
Prints exactly one JSON line on stdout; everything else goes to stderr.
Set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS before starting it (the Rust bench
sets them to 2); only the Gram matrix (BLAS) uses more than one thread.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--d", type=int, default=10_000_000)
ap.add_argument("--f", type=int, default=3)
ap.add_argument("--runs", type=int, default=3)
args = ap.parse_args()
n, d, f = args.n, args.d, args.f

rng = np.random.default_rng(0)
centre = rng.uniform(-1e-2, 1e-2, d).astype(np.float32)
x = np.empty((n, d), dtype=np.float32)
for i in range(n - f):
    x[i] = centre + rng.uniform(-1e-3, 1e-3, d).astype(np.float32)
for i in range(n - f, n):
    x[i] = -100.0 * centre
del centre


def trimmed_mean(x):
    s = np.sort(x, axis=0)
    return s[f : n - f].mean(axis=0)


def krum_scores(x):
    # ‖xi − xj‖² = ‖xi‖² + ‖xj‖² − 2 xi·xj, from one Gram matrix (one BLAS pass over the data).
    g = (x @ x.T).astype(np.float64)
    sq = np.diag(g)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, : n - f - 2].sum(axis=1)


def krum(x):
    return x[np.argmin(krum_scores(x))].copy()


def multi_krum(x):
    best = np.argsort(krum_scores(x), kind="stable")[: n - f]
    return x[best].mean(axis=0)


rules = {
    "mean": lambda x: x.mean(axis=0),
    "median": lambda x: np.median(x, axis=0),
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
}

times = {}
for name, fn in rules.items():
    fn(x)  # warm-up
    samples = []
    for _ in range(args.runs):
        t = time.perf_counter()
        out = fn(x)
        samples.append(time.perf_counter() - t)
        del out
    times[name] = statistics.median(samples)
    print(f"numpy {name}: {times[name] * 1e3:.0f} ms", file=sys.stderr)

print(json.dumps({"numpy": np.__version__, "n": n, "d": d, "f": f, "seconds": times}))

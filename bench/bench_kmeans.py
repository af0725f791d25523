"""k-means codebook init on the GPU: K = 65,536 codes from 1M latents of D = 8, k-means++
seeding + 20 Lloyd iterations, through the shared fused search.

    python bench/bench_kmeans.py [--k 65536] [--n 1000000] [--iters 20]

Writes reports/bench/kmeans.json (or $OUT/kmeans.json).
"""
from __future__ import annotations

import argparse
import time

import torch

from common import DEVICE, SMOKE, sync, table, write_json
from pipeline.kmeans import kmeans, kmeans_plus_plus, lloyd_step
from pipeline.quantizers.search import nearest_code


def _timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def latents(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """A clustered cloud (4,096 Gaussian blobs), closer to encoder latents than pure noise."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    centres = torch.randn(4096, d, device=DEVICE, generator=g) * 3
    which = torch.randint(0, 4096, (n,), device=DEVICE, generator=g)
    return centres[which] + torch.randn(n, d, device=DEVICE, generator=g)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=65_536)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    if SMOKE:   # CPU smoke run (common.py)
        a.k, a.n, a.iters = 64, 3_000, 3
    x = latents(a.n, a.d)
    kmeans_plus_plus(x[:20_000], min(256, a.k), torch.Generator().manual_seed(1))   # warm-up: kernels compiled
    sync()
    t0 = time.perf_counter()
    kmeans_plus_plus(x, a.k, torch.Generator().manual_seed(0))
    sync()
    seed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = kmeans(x, a.k, iters=a.iters, seed=0)
    sync()
    total_s = time.perf_counter() - t0
    # Breakdown of one Lloyd iteration: the search alone, then the whole step.
    search_s = _timed(lambda: nearest_code(x, res.centers))
    lloyd_s = _timed(lambda: lloyd_step(x, res.centers))
    row = {"K": a.k, "N": a.n, "D": a.d, "iters": a.iters, "seeding_s": seed_s, "total_s": total_s,
           "one_search_s": search_s, "one_lloyd_step_s": lloyd_s,
           "inertia_first": res.inertia_history[0], "inertia_final": res.inertia,
           "empty_fraction": res.empty_fraction}
    print(table([row], list(row)))
    write_json("kmeans.json", {"kmeans": row})


if __name__ == "__main__":
    main()

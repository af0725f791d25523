"""k-means for codebook initialisation: k-means++ seeding, then Lloyd iterations.

All distance work goes through the shared nearest-code search (pipeline/quantizers/search.py),
so memory stays bounded (chunked on CPU, the fused kernel on CUDA).

k-means++ (Arthur & Vassilvitskii 2007): the first centre is a uniform draw; each next
centre is drawn with probability proportional to D(x)^2, the squared distance of x to its
nearest centre so far. D(x)^2 is kept as a running minimum, so each draw costs one pass
of N x D work, and K draws cost N x K x D in total.

Lloyd: assign every point to its nearest centre, move each centre to the mean of its
points. A centre that loses all its points is re-seeded at the point farthest from its
centre (then counted in ``empty_fraction`` of the final assignment only if it is still empty).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantizers.search import nearest_code


@dataclass
class KMeansResult:
    centers: torch.Tensor          # (K, D)
    inertia: float                 # mean squared distance of points to their centre
    empty_fraction: float          # fraction of centres with no point in the final assignment
    inertia_history: list[float]   # after seeding, then after each Lloyd iteration


@torch.no_grad()
def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding of ``k`` centres from points ``x`` (N, D)."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {n}")
    dev = x.device
    centers = torch.empty(k, x.shape[1], device=dev, dtype=x.dtype)
    first = torch.randint(0, n, (1,), generator=generator, device="cpu").to(dev)
    centers[0] = x[first[0]]
    d2 = (x - centers[0]).pow(2).sum(1)
    # Draw all uniforms up front: one host->device copy instead of k.
    u = torch.rand(k, generator=generator, dtype=torch.float64).to(dev)
    for j in range(1, k):
        cdf = torch.cumsum(d2.double(), 0)
        # Inverse-CDF draw; all-zero D^2 (duplicates) falls back to index 0 harmlessly.
        pick = torch.searchsorted(cdf, (u[j] * cdf[-1]).reshape(1)).clamp_(max=n - 1)
        centers[j] = x[pick[0]]
        d2 = torch.minimum(d2, (x - centers[j]).pow(2).sum(1))
    return centers


@torch.no_grad()
def lloyd_step(x: torch.Tensor, centers: torch.Tensor, chunk_size: int = 8192
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd iteration: returns (new centres, counts per centre, mean squared distance)."""
    idx, dist = nearest_code(x, centers, chunk_size=chunk_size)
    k = centers.shape[0]
    counts = torch.zeros(k, device=x.device, dtype=x.dtype).index_add_(0, idx, torch.ones_like(dist))
    sums = torch.zeros_like(centers).index_add_(0, idx, x)
    empty = counts == 0
    new = torch.where(empty[:, None], centers, sums / counts.clamp_min(1)[:, None])
    # Re-seed empty centres at the points that are worst served (largest distance).
    n_empty = int(empty.sum())
    if n_empty:
        far = dist.topk(min(n_empty, x.shape[0])).indices
        new[empty.nonzero().squeeze(1)[: far.numel()]] = x[far]
    return new, counts, dist.mean()


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, chunk_size: int = 8192,
           log=None) -> KMeansResult:
    """Fit ``k`` centres to points ``x`` (N, D): k-means++ seeding + ``iters`` Lloyd steps."""
    x = x.float().contiguous()
    g = torch.Generator().manual_seed(seed)
    centers = kmeans_plus_plus(x, k, g)
    history = []
    for it in range(iters):
        centers, _, inertia = lloyd_step(x, centers, chunk_size)
        history.append(inertia.item())
        if log is not None:
            log(it, history[-1])
    idx, dist = nearest_code(x, centers, chunk_size=chunk_size)
    counts = torch.zeros(k, device=x.device).index_add_(0, idx, torch.ones_like(dist))
    inertia = dist.mean().item()
    history.append(inertia)
    return KMeansResult(centers, inertia, (counts == 0).float().mean().item(), history)

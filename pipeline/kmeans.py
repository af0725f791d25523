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

Under torchrun each rank holds a contiguous share of the points (rank order = one process's
order) and the fit is one fit over all of them, the same on every rank: a k-means++ draw
inverts the CDF of D(x)^2 over all ranks (each rank's total is all-gathered, the rank holding
the target contributes the point to an all-reduce); Lloyd all-reduces the sums and counts of
each centre; an empty centre takes the farthest point over all ranks. With one process no
collective runs and the arithmetic is what it was.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import distributed
from .quantizers.search import nearest_code


@dataclass
class KMeansResult:
    centers: torch.Tensor          # (K, D)
    inertia: float                 # mean squared distance of points to their centre
    empty_fraction: float          # fraction of centres with no point in the final assignment
    inertia_history: list[float]   # at each Lloyd assignment, then of the final centres


class _PlusPlusState:
    """Fixed-shape state of the k-means++ draws, so one draw is a fixed sequence of kernels
    that a CUDA graph can replay (the draws are sequential, and launching their handful of
    small kernels from Python dominates on a GPU: ~200 us per draw, K draws)."""

    def __init__(self, x: torch.Tensor, k: int, generator: torch.Generator | None):
        n, dev = x.shape[0], x.device
        self.x = x
        self.centers = torch.empty(k, x.shape[1], device=dev, dtype=x.dtype)
        # Where this rank's rows start among all ranks' (0 for one process).
        sizes = distributed.all_gather_cat(torch.tensor([n], device=dev)).tolist()
        self.offset, total = sum(sizes[:distributed.rank()]), sum(sizes)
        first = int(torch.randint(0, total, (1,), generator=generator))
        self.centers[0] = self.row(first - self.offset) if distributed.active() else x[first]
        self.x2 = x.pow(2).sum(1)
        self.d2 = (x - self.centers[0]).pow(2).sum(1)
        # All uniforms up front (one transfer), consumed one per draw through the index j.
        self.u = torch.rand(k, generator=generator, dtype=torch.float64).to(dev)
        self.j = torch.ones(1, dtype=torch.long, device=dev)
        self.last = torch.full((1,), n - 1, dtype=torch.long, device=dev)

    def draw(self) -> None:
        """One draw: centre j ~ D(x)^2 by inverse CDF, then D(x)^2 <- min(D(x)^2, ||x - c_j||^2)."""
        cdf = torch.cumsum(self.d2, 0, dtype=torch.float64)
        target = self.u.index_select(0, self.j) * cdf[-1:]
        # All-zero D^2 (duplicate points) falls back to the last point harmlessly.
        pick = torch.minimum(torch.searchsorted(cdf, target), self.last)
        c = self.x.index_select(0, pick)
        self.centers.index_copy_(0, self.j, c)
        # ||x||^2 - 2 x.c + ||c||^2 as one matrix-vector product: one read of x per draw
        # (the draw is memory-bound); the clamp absorbs cancellation below zero.
        d_new = torch.addmv(self.x2 + c.pow(2).sum(), self.x, c[0], alpha=-2.0).clamp_(min=0.0)
        torch.minimum(self.d2, d_new, out=self.d2)
        self.j += 1

    def row(self, local: int) -> torch.Tensor:
        """Row ``local`` of this rank's points if it holds it, else zeros, summed over ranks:
        the point on every rank."""
        own = 0 <= local < self.x.shape[0]
        point = self.x[local].clone() if own else self.x.new_zeros(self.x.shape[1])
        return distributed.all_reduce_sum(point)

    def draw_distributed(self) -> None:
        """:meth:`draw` over all ranks' points: the CDF is this rank's cumulative D^2 after the
        totals of the ranks before it."""
        cdf = torch.cumsum(self.d2, 0, dtype=torch.float64)
        totals = distributed.all_gather_cat(cdf[-1:])
        before = totals[:distributed.rank()].sum()
        target = self.u.index_select(0, self.j) * totals.sum()
        here = (target >= before) & ((target < before + cdf[-1:]) | (distributed.rank() == distributed.size() - 1))
        pick = torch.minimum(torch.searchsorted(cdf, target - before), self.last)
        c = torch.where(here, self.x.index_select(0, pick)[0], torch.zeros_like(self.x[0]))
        c = distributed.all_reduce_sum(c)[None]
        self.centers.index_copy_(0, self.j, c)
        d_new = torch.addmv(self.x2 + c.pow(2).sum(), self.x, c[0], alpha=-2.0).clamp_(min=0.0)
        torch.minimum(self.d2, d_new, out=self.d2)
        self.j += 1


@torch.no_grad()
def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                     graph_steps: int = 256) -> torch.Tensor:
    """k-means++ seeding of ``k`` centres from points ``x`` (N, D).

    On CUDA the draws are captured in a CUDA graph of ``graph_steps`` draws and replayed;
    the arithmetic is the same as the plain loop used on the CPU.
    """
    n = int(distributed.all_reduce_sum(torch.tensor(x.shape[0])).item())
    if n < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {n}")
    st = _PlusPlusState(x, k, generator)
    remaining = k - 1
    if distributed.active():
        for _ in range(remaining):
            st.draw_distributed()
        return st.centers
    if x.is_cuda and remaining >= 2 * graph_steps:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):            # warm-up draws (real ones) before capture
            for _ in range(3):
                st.draw()
        torch.cuda.current_stream().wait_stream(side)
        remaining -= 3
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):            # recorded, not run
            for _ in range(graph_steps):
                st.draw()
        for _ in range(remaining // graph_steps):
            graph.replay()
        remaining %= graph_steps
    for _ in range(remaining):
        st.draw()
    return st.centers


@torch.no_grad()
def lloyd_step(x: torch.Tensor, centers: torch.Tensor, search: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd iteration: returns (new centres, counts per centre, mean squared distance).
    ``search``: ``nearest_code`` keyword arguments (``search_kwargs`` of the params)."""
    idx, dist = nearest_code(x, centers, **(search or {}))
    k = centers.shape[0]
    counts = torch.zeros(k, device=x.device, dtype=x.dtype).index_add_(0, idx, torch.ones_like(dist))
    sums = torch.zeros_like(centers).index_add_(0, idx, x)
    if distributed.active():        # one all-reduce of [counts | sums | inertia sum, rows]
        both = distributed.all_reduce_sum(torch.cat([
            counts, sums.flatten(), torch.stack([dist.sum(), dist.new_tensor(dist.numel())])]))
        counts, sums = both[:k], both[k:-2].reshape(k, -1)
        inertia = both[-2] / both[-1]
    else:
        inertia = dist.mean()
    empty = counts == 0
    new = torch.where(empty[:, None], centers, sums / counts.clamp_min(1)[:, None])
    # Re-seed empty centres at the points that are worst served (largest distance).
    n_empty = int(empty.sum())
    if n_empty:
        far_d, far_x = _farthest(x, dist, n_empty)
        new[empty.nonzero().squeeze(1)[: far_d.numel()]] = far_x
    return new, counts, inertia


def _farthest(x: torch.Tensor, dist: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` points (over all ranks) farthest from their centres: (distances, points)."""
    far = dist.topk(min(n, x.shape[0])).indices
    if not distributed.active():
        return dist[far], x[far]
    # Every rank offers its own n farthest (padded with -1 distances), the same n win everywhere.
    d = torch.full((n,), -1.0, device=x.device, dtype=dist.dtype)
    pts = x.new_zeros(n, x.shape[1])
    d[:far.numel()], pts[:far.numel()] = dist[far], x[far]
    all_d, all_x = distributed.all_gather_cat(d), distributed.all_gather_cat(pts)
    best = all_d.topk(min(n, int((all_d >= 0).sum()))).indices
    return all_d[best], all_x[best]


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, search: dict | None = None,
           log=None) -> KMeansResult:
    """Fit ``k`` centres to points ``x`` (N, D): k-means++ seeding + ``iters`` Lloyd steps;
    ``search``: ``nearest_code`` keyword arguments (backend, chunk, kernel precision and config).
    Under torchrun ``x`` is this rank's share of the points and the fit is over all shares."""
    x = x.float().contiguous()
    g = torch.Generator().manual_seed(seed)
    centers = kmeans_plus_plus(x, k, g)
    history = []
    for it in range(iters):
        centers, _, inertia = lloyd_step(x, centers, search)
        history.append(inertia.item())
        if log is not None:
            log(it, history[-1])
    idx, dist = nearest_code(x, centers, **(search or {}))
    counts = distributed.all_reduce_sum(torch.zeros(k, device=x.device).index_add_(0, idx, torch.ones_like(dist)))
    if distributed.active():
        inertia = (distributed.all_reduce_sum(dist.sum()) / counts.sum()).item()
    else:
        inertia = dist.mean().item()
    history.append(inertia)
    return KMeansResult(centers, inertia, (counts == 0).float().mean().item(), history)


def kmeans_init(p, prepared, pretrain_model, device=None, log=None) -> tuple[KMeansResult, int]:
    """The kmeans_init stage: k-means of the pretrained encoder's training latents (a seeded
    sample of at most ``kmeans_init.max_latents``) into ``quantizer.codebook_size`` codes.
    Returns the fit and the number of latents it used."""
    from .configbase import ConfigError
    from .data import load_split
    from .models.inference import encode_latents
    from .models.io import load_autoencoder
    from .quantizers.search import search_kwargs
    from .training.device import pick_device

    device = distributed.local_device(device or pick_device())
    distributed.init(device)
    model, _ = load_autoencoder(pretrain_model, device)
    images = load_split(prepared, "train")
    mine = distributed.share(len(images))           # this rank's images (all of them for one process)
    latents = encode_latents(model, images, device, rows=mine)
    per_image = latents.shape[0] // max(1, mine.stop - mine.start)
    n = len(images) * per_image
    kp, k = p.kmeans_init, p.quantizer.codebook_size
    if n > kp.max_latents:
        # A seeded sample, in the order of the training set (so the ranks' shares of it are
        # one process's sample cut in rank order).
        g = torch.Generator().manual_seed(kp.seed)
        keep = torch.randperm(n, generator=g)[:kp.max_latents].sort().values
        lo, hi = mine.start * per_image, mine.stop * per_image
        keep = keep[(keep >= lo) & (keep < hi)] - lo
        latents = latents[keep.to(latents.device)]
    used = min(n, kp.max_latents)
    if used < k:
        raise ConfigError(f"quantizer.codebook_size: {k} codes need at least {k} training latents, "
                          f"the training set gives {used}")
    return kmeans(latents, k, iters=kp.iters, seed=kp.seed, search=search_kwargs(p.quantizer.search), log=log), used


def save_codebook_init(path, fit: KMeansResult) -> None:
    """The kmeans_init stage's output: the codes (K, D) and the fit's quality."""
    from .torchio import atomic_save

    atomic_save({"codes": fit.centers.cpu(), "inertia": fit.inertia, "empty_fraction": fit.empty_fraction}, path)


def load_codebook_init(path, codebook_size: int, dim: int) -> torch.Tensor:
    """The codes of a file :func:`save_codebook_init` wrote, checked to be (codebook_size, dim)."""
    from .errors import UnreadableFileError
    from .torchio import safe_load

    blob = safe_load(path, "k-means codebook file")
    codes = blob.get("codes") if isinstance(blob, dict) else None
    if not torch.is_tensor(codes) or tuple(codes.shape) != (codebook_size, dim):
        shape = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
        raise UnreadableFileError(f"{path}: holds codes of shape {shape}, expected ({codebook_size}, {dim}); "
                                  "rerun the kmeans_init stage")
    return codes

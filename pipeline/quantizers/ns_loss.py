"""Dense non-stationary (NS) embedding loss of NS-VQ, with a closed-form backward, and the
nearest-code search it carries.

NS-VQ paper (the "dense" embedding loss): for latent z_i and every code e_k

    w_ik = 1                                          if k is z_i's nearest code
    w_ik = min(1, lambda * K * softmax_k(-||z_i - e_k||^2 / tau))   otherwise   (detached)
    L    = (1/N) sum_i sum_k w_ik ||sg(z_i) - e_k||^2 / D

Because z is stopped and w is detached, dL/de_k = (2 / (N D)) (s_k e_k - M_k) with
s_k = sum_i w_ik and M_k = sum_i w_ik z_i. One streaming pass over row chunks therefore
yields the loss and everything the backward needs (s: K, M: K x D); no N x K tensor
outlives a chunk and none is kept for the backward. The winners come from the same scores,
so the pass is also the nearest-code search (``ns_search_and_loss``, what NSVQ calls). This
torch version is the reference for the Triton kernels (pipeline/kernels/ns_fused_triton.py,
pipeline/kernels/ns_loss_triton.py).
"""
from __future__ import annotations

import torch

from .search import MAX_BLOCK_ELEMS, check_shapes, chunk_rows, kernel_config, select_backend, winner_distance


def ns_weights(dist: torch.Tensor, winner: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """w_ik for a block of squared distances (n, K) and each row's winner index (n,)."""
    k = dist.shape[1]
    w = (torch.softmax(-dist / tau, dim=1) * (lam * k)).clamp_(max=1.0)
    w.scatter_(1, winner[:, None], 1.0)
    return w


@torch.no_grad()
def ns_search_stats(z: torch.Tensor, codebook: torch.Tensor, tau: float, lam: float, chunk_size: int = 8192,
                    max_block_elems: int = MAX_BLOCK_ELEMS):
    """(idx (N,) long, dist (N,), total, s (K,), M (K, D)), all fp32: ``nearest_code_torch``'s
    index and distance, and sum_ik w_ik d_ik, s and M for those winners, from one sweep over
    the scores in row chunks."""
    z = z.float()
    e = codebook.float()
    e2 = (e * e).sum(1)
    et = e.t()
    n = z.shape[0]
    win = torch.empty(n, dtype=torch.long, device=z.device)
    s = torch.zeros(e.shape[0], device=z.device)
    m = torch.zeros_like(e)
    total = torch.zeros((), device=z.device)
    rows = chunk_rows(e.shape[0], chunk_size, max_block_elems)
    for a in range(0, n, rows):
        zc = z[a:a + rows]
        # ||e||^2 - 2 z.e: the same op on the same chunks as nearest_code_torch, so the argmin
        # below is its index bit for bit; + ||z||^2 and the clamp make it the distance.
        sc = torch.addmm(e2, zc, et, beta=1.0, alpha=-2.0)
        win[a:a + rows] = sc.argmin(1)
        d = sc.add_((zc * zc).sum(1, keepdim=True)).clamp_(min=0.0)
        w = ns_weights(d, win[a:a + rows], tau, lam)
        total += (w * d).sum()
        s += w.sum(0)
        m.addmm_(w.t(), zc)
    return win, winner_distance(z, codebook, win), total, s, m


class _NSLossFromStats(torch.autograd.Function):
    """L = total / (N D) with the closed-form dL/de_k = (2 / (N D)) (s_k e_k - M_k); the
    statistics come from a no-grad pass (z is stopped and w is detached)."""

    @staticmethod
    def forward(ctx, codebook, total, s, m, n, d):
        ctx.save_for_backward(codebook, s, m)
        ctx.scale = 2.0 / (n * d)
        return (total / (n * d)).to(codebook.dtype)

    @staticmethod
    def backward(ctx, grad):
        codebook, s, m = ctx.saved_tensors
        grad_e = (s[:, None] * codebook.float() - m) * (ctx.scale * grad)
        return grad_e.to(codebook.dtype), None, None, None, None, None


def ns_search_and_loss(z: torch.Tensor, codebook: torch.Tensor, tau: float, lam: float, *,
                       chunk_size: int = 8192, backend: str = "auto", precision: str = "fp32",
                       config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx, dist, loss): ``nearest_code(z, codebook)`` and the dense NS embedding loss for those
    winners, whose gradient reaches ``codebook`` only (z is treated as sg(z)).

    The search runs inside the loss's own sweep over the N x K scores (torch: the chunk's score
    block; Triton: pipeline/kernels/ns_fused_triton.py), so the scores are computed once for
    both. backend as in ``nearest_code``; precision is the kernels' matmul precision
    (``search.KERNEL_PRECISIONS``; the torch path is fp32); config: launch-config overrides of
    the NS kernels (``NSKernelParams``)."""
    kernel_cfg = kernel_config(precision, config)   # rejects a bad name on every backend
    check_shapes("ns_search_and_loss", z, codebook)
    with torch.no_grad():
        if select_backend(z, backend) == "triton":
            from ..kernels.ns_fused_triton import ns_search_stats_triton

            idx, dist, total, s, m = ns_search_stats_triton(z, codebook, tau, lam, config=kernel_cfg)
        else:
            idx, dist, total, s, m = ns_search_stats(z, codebook, tau, lam, chunk_size)
    return idx, dist, _NSLossFromStats.apply(codebook, total, s, m, *z.shape)

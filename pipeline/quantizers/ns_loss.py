"""Dense non-stationary (NS) embedding loss of NS-VQ, with a closed-form backward.

NS-VQ paper (the "dense" embedding loss, DESIGN.md "NS-VQ"): for latent z_i and every code e_k

    w_ik = 1                                          if k is z_i's nearest code
    w_ik = min(1, lambda * K * softmax_k(-||z_i - e_k||^2 / tau))   otherwise   (detached)
    L    = (1/N) sum_i sum_k w_ik ||sg(z_i) - e_k||^2 / D

Because z is stopped and w is detached, dL/de_k = (2 / (N D)) (s_k e_k - M_k) with
s_k = sum_i w_ik and M_k = sum_i w_ik z_i. One streaming pass over row chunks therefore
yields the loss and everything the backward needs (s: K, M: K x D); no N x K tensor
outlives a chunk and none is kept for the backward. This torch version is the reference
for the fused Triton kernel (pipeline/kernels/ns_loss_triton.py).
"""
from __future__ import annotations

import torch

from .search import MAX_BLOCK_ELEMS, _backend, chunk_rows, kernel_config


def ns_weights(dist: torch.Tensor, winner: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """w_ik for a block of squared distances (n, K) and each row's winner index (n,)."""
    k = dist.shape[1]
    w = (torch.softmax(-dist / tau, dim=1) * (lam * k)).clamp_(max=1.0)
    w.scatter_(1, winner[:, None], 1.0)
    return w


def _sqdist(z: torch.Tensor, e: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    z2 = (z * z).sum(1, keepdim=True)
    return torch.addmm(z2 + e2, z, e.t(), beta=1.0, alpha=-2.0).clamp_(min=0.0)


@torch.no_grad()
def ns_loss_stats(z: torch.Tensor, codebook: torch.Tensor, winner: torch.Tensor, tau: float, lam: float,
                  chunk_size: int = 8192, max_block_elems: int = MAX_BLOCK_ELEMS
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunked pass: (sum_ik w_ik d_ik, s (K,), M (K, D)), all fp32."""
    z = z.float()
    e = codebook.float()
    e2 = (e * e).sum(1)
    s = torch.zeros(e.shape[0], device=z.device)
    m = torch.zeros_like(e)
    total = torch.zeros((), device=z.device)
    rows = chunk_rows(e.shape[0], chunk_size, max_block_elems)
    for a in range(0, z.shape[0], rows):
        zc = z[a:a + rows]
        d = _sqdist(zc, e, e2)
        w = ns_weights(d, winner[a:a + rows], tau, lam)
        total += (w * d).sum()
        s += w.sum(0)
        m.addmm_(w.t(), zc)
    return total, s, m


class _NSEmbeddingLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, codebook, winner, tau, lam, chunk_size, backend, kernel_cfg):
        n, d = z.shape
        if backend == "triton":
            from ..kernels.ns_loss_triton import ns_loss_stats_triton

            total, s, m = ns_loss_stats_triton(z, codebook, winner, tau, lam, config=kernel_cfg)
        else:
            total, s, m = ns_loss_stats(z, codebook, winner, tau, lam, chunk_size)
        ctx.save_for_backward(codebook, s, m)
        ctx.scale = 2.0 / (n * d)
        return (total / (n * d)).to(codebook.dtype)

    @staticmethod
    def backward(ctx, grad):
        codebook, s, m = ctx.saved_tensors
        grad_e = (s[:, None] * codebook.float() - m) * (ctx.scale * grad)
        return None, grad_e.to(codebook.dtype), None, None, None, None, None, None


def ns_embedding_loss(z: torch.Tensor, codebook: torch.Tensor, winner: torch.Tensor, tau: float,
                      lam: float, *, chunk_size: int = 8192, backend: str = "auto",
                      precision: str = "fp32") -> torch.Tensor:
    """Dense NS embedding loss (NS-VQ, DESIGN.md); gradient reaches ``codebook`` only.

    z: (N, D) latents (treated as sg(z)); codebook: (K, D); winner: (N,) nearest-code indices.
    backend "auto" uses the fused Triton kernel on CUDA when available; precision is the
    kernel's matmul precision (``search.KERNEL_PRECISIONS``; the torch path is fp32).
    """
    kernel_cfg = kernel_config(precision)   # rejects a bad name on every backend
    if backend == "auto":
        backend = _backend(z, "auto")
    return _NSEmbeddingLoss.apply(z.detach(), codebook, winner, float(tau), float(lam), chunk_size, backend,
                                  kernel_cfg)


def ns_embedding_loss_dense(z: torch.Tensor, codebook: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """The loss written as the NS-VQ reference code writes it (full N x K matrices), for tests."""
    zd = z.detach()
    dist = ((zd[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)          # (N, K), grads to codebook
    winner = dist.detach().argmin(1)
    w = ns_weights(dist.detach(), winner, tau, lam)
    return (w * dist).sum() / (z.shape[0] * z.shape[1])

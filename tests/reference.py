"""Reference formulations the library is tested against, written as the papers and reference
code write them (full N x K matrices, composed ops): slow, obviously right, never used by the
pipeline itself."""
from __future__ import annotations

import torch

from pipeline.quantizers.ns_loss import ns_weights


def modified_straight_through(z: torch.Tensor, q: torch.Tensor, a: float) -> torch.Tensor:
    """Modified STE of NS-VQ: z_q = z + a q + ((1 - a) q - z).detach() (forward value q,
    dz_q/dz = I, and the decoder gradient reaches the chosen code scaled by a)."""
    return z + a * q + ((1.0 - a) * q - z).detach()


def ns_embedding_loss_dense(z: torch.Tensor, codebook: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """The dense NS loss as the NS-VQ reference code writes it (N x K matrices), winners = nearest codes."""
    zd = z.detach()
    dist = ((zd[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)          # (N, K), grads to codebook
    winner = dist.detach().argmin(1)
    w = ns_weights(dist.detach(), winner, tau, lam)
    return (w * dist).sum() / (z.shape[0] * z.shape[1])


def ns_stats_exact(z: torch.Tensor, cb: torch.Tensor, win: torch.Tensor, tau: float, lam: float):
    """(total, s, M) = (sum_ik w_ik d_ik, sum_i w_ik, sum_i w_ik z_i) in fp64 from the definition,
    for any winners: the truth the kernels are judged against. (The fp32 torch path forms the
    distance as ||e||^2 - 2 z.e + ||z||^2, whose cancellation puts about |d| / tau * 2^-24 of
    relative error into w: at tau = 0.01 and latents of scale 3 that reached 1.9e-4 on s.)"""
    zd, cd = z.double(), cb.double()
    d = ((zd[:, None, :] - cd[None, :, :]) ** 2).sum(-1)
    w = ns_weights(d, win.long(), tau, lam)
    return (w * d).sum(), w.sum(0), w.t() @ zd

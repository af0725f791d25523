"""Rotation trick (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick").

The decoder input is the latent rotated and rescaled onto its code, with the rotation
and scale treated as constants:

    z_q = sg(lambda R) z,     lambda = ||q|| / ||z||
    R   = I - 2 r r^T + 2 q_hat z_hat^T,    r = (z_hat + q_hat) / ||z_hat + q_hat||

R maps z_hat onto q_hat (Householder-style, eq. 4 of the paper), so the forward value is q;
the gradient reaching z is (lambda R)^T g instead of the STE's g, i.e. it is rotated with
the latent's angle to its code. R z is applied without forming R:
R z = z - 2 r (r . z) + 2 q_hat (z_hat . z).

How the codebook learns is not part of the trick. Two variants:

- ``rotation`` (:class:`RotationVQ`): as the paper's code trains it, an EMA codebook (the
  VQ-VAE moving averages of ema.py, decay 0.8 there) and the commitment loss
  beta ||z - sg(q)||^2; the codes get no gradient.
- ``rotation_loss`` (:class:`RotationLossVQ`): a learnable table trained by the VQ-VAE
  losses ||sg(z) - q||^2 + beta ||z - sg(q)||^2 (means), like the ``vq`` baseline. In this
  pipeline it collapses: from the default pretrain and k-means codes, 200 train_vq steps
  leave 4 of 512 codes in use, with codes shrinking towards the origin and latents turning
  away from their nearest code (mean cosine -0.96), while ``rotation`` keeps 466 in use
  (README, "Methods study").
"""
from __future__ import annotations

import torch

from .ema import EMAVQ
from .vq import TableQuantizer

_EPS = 1e-12


def rotate_onto(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sg(lambda R) z per row: forward value q, gradient (lambda R)^T to z, none to q.

    Rounding leaves lambda R z a few ulps off q; the zero-gradient correction makes the
    forward value exactly q (what lookup returns) without touching the gradient."""
    zn = z.norm(dim=1, keepdim=True)
    qn = q.norm(dim=1, keepdim=True)
    z_hat = (z / zn.clamp_min(_EPS)).detach()
    q_hat = (q / qn.clamp_min(_EPS)).detach()
    s = z_hat + q_hat
    r = (s / s.norm(dim=1, keepdim=True).clamp_min(_EPS)).detach()
    lam = (qn / zn.clamp_min(_EPS)).detach()
    rotated = lam * (z - 2 * r * (r * z).sum(1, keepdim=True) + 2 * q_hat * (z_hat * z).sum(1, keepdim=True))
    return rotated + (q.detach() - rotated).detach()


class RotationVQ(EMAVQ):
    """Rotation trick on an EMA codebook (the paper's training setup; decay 0.8, RotationOptions)."""

    def pass_through(self, z, q):
        return rotate_onto(z, q)


class RotationLossVQ(TableQuantizer):
    """Rotation trick on a table trained by the codebook + commitment losses."""

    def quantize_flat(self, z):
        idx, _ = self.search(z)
        q = self.embedding[idx]
        loss = (q - z.detach()).pow(2).mean() + self.beta * (z - q.detach()).pow(2).mean()
        return rotate_onto(z, q), idx, loss

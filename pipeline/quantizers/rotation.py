"""Rotation trick (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick").

The decoder input is the latent rotated and rescaled onto its code, with the rotation
and scale treated as constants:

    z_q = sg(lambda R) z,     lambda = ||q|| / ||z||
    R   = I - 2 r r^T + 2 q_hat z_hat^T,    r = (z_hat + q_hat) / ||z_hat + q_hat||

R maps z_hat onto q_hat (Householder-style, eq. 4 of the paper), so the forward value is q;
the gradient reaching z is (lambda R)^T g instead of the STE's g, i.e. it is rotated with
the latent's angle to its code. The codebook learns from the usual VQ terms
||sg(z) - q||^2 + beta ||z - sg(q)||^2 (means), as in the paper and the DiVeQ baseline code.

R z is applied without forming R: R z = z - 2 r (r . z) + 2 q_hat (z_hat . z).
"""
from __future__ import annotations

import torch

from .vq import TableQuantizer

_EPS = 1e-12


def rotate_onto(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sg(lambda R) z per row: forward value q, gradient (lambda R)^T to z, none to q."""
    zn = z.norm(dim=1, keepdim=True)
    qn = q.norm(dim=1, keepdim=True)
    z_hat = (z / zn.clamp_min(_EPS)).detach()
    q_hat = (q / qn.clamp_min(_EPS)).detach()
    s = z_hat + q_hat
    r = (s / s.norm(dim=1, keepdim=True).clamp_min(_EPS)).detach()
    lam = (qn / zn.clamp_min(_EPS)).detach()
    rz = z - 2 * r * (r * z).sum(1, keepdim=True) + 2 * q_hat * (z_hat * z).sum(1, keepdim=True)
    return lam * rz


class RotationVQ(TableQuantizer):
    def quantize_flat(self, z):
        idx, _ = self.search(z)
        q = self.embedding[idx]
        loss = (q - z.detach()).pow(2).mean() + self.beta * (z - q.detach()).pow(2).mean()
        rotated = rotate_onto(z, q)
        # Rounding leaves lambda R z a few ulps off q; the zero-gradient correction makes the
        # forward value exactly q (what lookup returns) without touching the gradient.
        return rotated + (q - rotated).detach(), idx, loss

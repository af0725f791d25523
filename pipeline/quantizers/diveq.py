"""DiVeQ: differentiable VQ by a directional reparameterization (DiVeQ paper, eq. for z_q).

    z_q = z + ||c - z|| sg[(v + c - z) / ||v + c - z||],   v ~ N(0, sigma^2 I)      (training)
    z_q = c                                                                      (eval)

The quantization error keeps its magnitude ||c - z|| but its direction is a (slightly noisy)
stop-gradient constant, so the decoder gradient reaches both the latent and the chosen code
through the norm: d z_q / d c = u (c - z)^T / ||c - z||, with u the detached direction. No
auxiliary loss (``out.loss`` is 0); dead codes are left to the replacement policy.

``diveq_detach`` drops the noise (v = 0): the forward value is then exactly the chosen code
and d z_q / d z = I - u u^T, d z_q / d c = u u^T with u = (c - z) / ||c - z||.

The option is the paper's noise *variance* ``noise_var`` (default 1e-3, the paper's value), so
sigma = sqrt(noise_var) ~ 0.032. The reference code (AaltoML/DiVeQ ``noise_var``, default 1e-3)
passes its value as the *std* of ``Normal(0, noise_var)``; ``noise_var: 1e-6`` reproduces it.

Residual DiVeQ (``quantizer.levels > 1``): by default each level is a DiVeQ of its own
(residual.py); ``residual: sum`` is the reference ``residual_diveq.py`` instead
(:class:`SummedResidualDiVeQ`): hard residual VQ through all levels, then one DiVeQ step on the
sum of the chosen codes,

    h = sum_l c_l,   z_q = z + ||h - z|| sg[(v + h - z) / ||v + h - z||]      (training)
"""
from __future__ import annotations

import math

import torch

from .. import distributed
from .residual import ResidualVQ
from .vq import TableQuantizer

_EPS = 1e-12


def directional_error(z: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """||target - z|| * sg[(v + target - z) / ||v + target - z||], v ~ N(0, sigma^2 I), per row.

    The DiVeQ quantization error (also each segment term of SF-DiVeQ); sigma = 0 is the
    detach variant. The magnitude carries the gradient, the direction is a constant.
    """
    diff = target - z
    if sigma == 0:
        direction = diff
    else:   # noise drawn for the global batch, this rank's rows kept (distributed.rows_of_global)
        direction = diff + sigma * distributed.rows_of_global(
            lambda n: torch.randn(n, diff.shape[1], device=diff.device, dtype=diff.dtype), diff.shape[0])
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(_EPS)
    # Norm via sqrt(sum + eps) so a latent sitting exactly on its code has a finite gradient.
    magnitude = (diff.pow(2).sum(1, keepdim=True) + _EPS).sqrt()
    return magnitude * direction.detach()


class DiVeQ(TableQuantizer):
    """DiVeQ quantizer; ``options.noise_var`` is the variance of the directional noise v."""

    @property
    def sigma(self) -> float:
        """The noise std, sqrt(noise_var)."""
        return math.sqrt(self.options.noise_var)

    def quantize_flat(self, z):
        idx, _ = self.search(z)
        q = self.embedding[idx]
        loss = z.new_zeros(())
        if not self.training:
            return q, idx, loss
        return z + directional_error(z, q, self.sigma), idx, loss, q


class DiVeQDetach(DiVeQ):
    """DiVeQ without the directional noise (the paper's detach variant): forward value = c."""

    sigma = 0.0


class SummedResidualDiVeQ(ResidualVQ):
    """The reference residual DiVeQ (``residual: sum``): levels are plain nearest-code tables,
    searched one after the other on the hard residual; one DiVeQ step on their sum ``h``.
    The gradient reaches every level's chosen code through ||h - z||. Each level's usage counts
    and latents (its residual input) are kept for replacement, as for the per-level stack."""

    @property
    def sigma(self) -> float:
        return self.layers[0].sigma

    def quantize_flat(self, z):
        r, hard, indices = z, torch.zeros_like(z), []
        for q in self.layers:
            idx, _ = q.search(r)
            c = q.embedding[idx]
            q.count_usage(idx)          # replacement's counts (training mode only)
            if self.training:
                q.last_latents = r.detach()
            hard = hard + c
            r = r - c.detach()
            indices.append(idx)
        idx = torch.stack(indices, 1)
        if not self.training:
            return hard, idx, z.new_zeros(())
        return z + directional_error(z, hard, self.sigma), idx, z.new_zeros(()), hard.detach()

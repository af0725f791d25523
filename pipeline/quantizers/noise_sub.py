"""Noise substitution VQ (Vali & Baeckstroem, "NSVQ: Noise Substitution in Vector Quantization").

    z_q = z + ||z - c|| r / ||r||,   r ~ N(0, I)         (training)
    z_q = c                                              (eval)

The quantization error is replaced by a random direction of the same length, so the
forward pass in training is z plus noise of the true error norm; the decoder gradient
reaches z (identity plus the norm term) and the chosen code c through ||z - c||. No
auxiliary loss. Not to be confused with this project's ``nsvq`` (non-stationary VQ).
"""
from __future__ import annotations

import torch

from .. import distributed
from .vq import TableQuantizer

_EPS = 1e-12


class NoiseSubstitutionVQ(TableQuantizer):
    def random_direction(self, z: torch.Tensor) -> torch.Tensor:
        """r / ||r||, r ~ N(0, I), one unit row per latent (a hook so tests can pin it)."""
        # drawn for the global batch, this rank's rows kept (the RNG stays equal on all ranks)
        r = distributed.rows_of_global(lambda n: torch.randn(n, z.shape[1], device=z.device, dtype=z.dtype),
                                       z.shape[0])
        return r / r.norm(dim=1, keepdim=True).clamp_min(_EPS)

    def quantize_flat(self, z):
        idx, _ = self.search(z)
        q = self.embedding[idx]
        loss = z.new_zeros(())
        if not self.training:
            return q, idx, loss
        # sqrt(sum + eps): finite gradient when z sits exactly on its code.
        err = ((z - q).pow(2).sum(1, keepdim=True) + _EPS).sqrt()
        return z + err * self.random_direction(z), idx, loss, q

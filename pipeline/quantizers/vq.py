"""Plain VQ with the straight-through estimator (VQ-VAE, van den Oord et al. 2017).

    z_q  = z + sg(q - z)                                    (STE, forward value q)
    loss = ||sg(z) - q||^2 + beta ||z - sg(q)||^2           (codebook + commitment, means)
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer, uniform_table
from .table_lookup import table_lookup


class TableQuantizer(Quantizer):
    """A quantizer whose codebook is one learnable (K, D) table."""

    def __init__(self, codebook_size: int, dim: int, options=None, **kw):
        super().__init__(codebook_size, dim, options, **kw)
        self.embedding = nn.Parameter(uniform_table(codebook_size, dim))

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding

    @property
    def raw_codebook(self) -> torch.Tensor:
        return self.embedding


class VQ(TableQuantizer):
    """VQ-VAE quantizer: nearest code, STE, codebook + beta * commitment loss."""

    def quantize_flat(self, z):
        idx, dist = self.search(z)
        zq, loss = table_lookup(z, self.embedding, idx, dist, codebook_weight=1.0, beta=self.beta)
        return zq, idx, loss

"""SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models
with One Linear Layer"): a frozen random codebook C re-parameterized by one learned map W.

    codebook = C W        (C: (K, D) frozen, N(0, 1/D) entries; W: (D, D) learned)
    z_q  = z + sg(q - z)                                    (STE)
    loss = ||sg(z) - q||^2 + beta ||z - sg(q)||^2           (means; q = (C W)_k*)

The codebook loss reaches W, which moves *every* code at once, so no code is left behind
(SimVQ's remedy for collapse). Consequences for this pipeline:
- not ``replaceable``: C is frozen by design and re-seeding one row of C would need W's
  inverse; usage is the property SimVQ itself guarantees, so no replacement is applied;
- ``uses_kmeans_init`` is False: C is the random table of the paper (train_vq ``init: random``);
  ``init_codebook`` (``init: kmeans``) sets C := the k-means codes and W := I, so the start
  codebook C W is the codes exactly.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer
from .table_lookup import table_lookup


class SimVQ(Quantizer):
    replaceable = False
    uses_kmeans_init = False

    def __init__(self, codebook_size: int, dim: int, options=None, **kw):
        super().__init__(codebook_size, dim, options, **kw)
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim) * dim ** -0.5)
        self.transform = self.build_transform()

    def build_transform(self) -> nn.Module:
        """The learned map applied to the frozen table (TransVQ swaps in a transformer)."""
        return nn.Linear(self.dim, self.dim, bias=False)      # y = x W^T: the learned W

    @property
    def codebook(self) -> torch.Tensor:
        return self.transform(self.frozen_codebook)

    @torch.no_grad()
    def init_codebook(self, codes: torch.Tensor) -> None:
        self.check_init_codes(codes)
        self.frozen_codebook.copy_(codes)
        self.transform.weight.copy_(torch.eye(self.dim))

    def quantize_flat(self, z):
        cb = self.codebook
        idx, dist = self.search(z, cb)
        # The fused node's table gradient flows on through the transform into its weights.
        zq, loss = table_lookup(z, cb, idx, dist, codebook_weight=1.0, beta=self.beta)
        return zq, idx, loss

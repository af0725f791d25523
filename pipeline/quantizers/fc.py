"""Factorized, l2-normalized codes (ViT-VQGAN, Yu et al. 2022, Sec. 3.2 "Codebook learning").

A linear map projects each latent from D to a low dimension d for the code lookup; latents
and codes are l2-normalized there (nearest code = largest cosine), and the chosen code is
projected back to D for the decoder:

    u = l2n(W_in z),  e~_k = l2n(e_k),  k* = argmin_k ||u - e~_k||^2
    z_q  = W_out (u + sg(e~_k* - u))                                  (STE in the code space)
    loss = ||sg(u) - e~_k*||^2 + beta ||u - sg(e~_k*)||^2             (means, in the code space)

The effective codebook (``codebook``, ``lookup``) is W_out l2n(E): (K, D).
``raw_codebook`` is the (K, d) table E, so replacement and initialisation work in the code
space; ``code_space(z) = l2n(W_in z)`` maps latents (random replacement, k-means codes) there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, straight_through


class FactorizedVQ(Quantizer):
    def __init__(self, codebook_size: int, dim: int, options=None, **kw):
        super().__init__(codebook_size, dim, options, **kw)
        code_dim = self.options.code_dim or dim      # 0: the latents' own dimension
        self.proj_in = nn.Linear(dim, code_dim)
        self.proj_out = nn.Linear(code_dim, dim)
        # Only the direction of a code matters (it is normalized before use).
        self.embedding = nn.Parameter(torch.randn(codebook_size, code_dim))

    @property
    def normalized_codes(self) -> torch.Tensor:
        return F.normalize(self.embedding, dim=1)

    @property
    def codebook(self) -> torch.Tensor:
        return self.proj_out(self.normalized_codes)

    @property
    def raw_codebook(self) -> torch.Tensor:
        return self.embedding

    def code_space(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj_in(z.to(self.proj_in.weight.dtype)), dim=1)

    def quantize_flat(self, z):
        u = self.code_space(z)
        codes = self.normalized_codes
        idx, _ = self.search(u, codes)
        e = codes[idx]
        loss = (e - u.detach()).pow(2).mean() + self.beta * (u - e.detach()).pow(2).mean()
        return self.proj_out(straight_through(u, e)), idx, loss

    @torch.no_grad()
    def init_codebook(self, codes: torch.Tensor) -> None:
        """k-means codes are latents (K, D): they enter the table through ``code_space``."""
        self.check_init_codes(codes)
        mapped = self.code_space(codes.to(self.embedding.device))
        self.reseed_codes(torch.ones(self.codebook_size, dtype=torch.bool, device=mapped.device), mapped)

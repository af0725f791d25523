"""Residual VQ over any method (SoundStream's RVQ, Zeghidour et al. 2021, Alg. 1; the DiVeQ
paper's residual variants): level l quantizes what the previous levels left over.

    r_1 = z,   out_l = Q_l(r_l),   r_{l+1} = r_l - z_q,l + sg(z_q,l - h_l)
    z_q = sum_l z_q,l,   loss = sum_l loss_l,   indices = (..., L)

h_l is the point level l actually selected (``out.hard``, or z_q,l when that already is
it), so every level sees the true residual r_l - h_l even for noisy surrogates (noise
substitution, DiVeQ), as in the reference residual DiVeQ. The gradient is the exact chain
rule through the levels' surrogates (r_{l+1} is *not* detached, as in EnCodec's RVQ): for
STE levels z_q = z - r_{L+1} with r_{L+1} constant, so the decoder gradient reaches z
exactly once (dz_q/dz = I) instead of L times, and later levels' commitment terms train
their own codes only.

Each level is its own instance of the method (own codebook, schedule, usage counts and
last latents). Replacement runs per level (replacement.py). ``init_codebook`` (k-means of
the latents) goes to level 1 only: deeper levels quantize small residuals and keep their
small default init. ``codebook`` is (L, K, D); ``lookup(indices (..., L))`` sums the levels.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer, code_histogram, histogram_stats


class ResidualVQ(Quantizer):
    replaceable = False   # the wrapper owns no table; CodeReplacement visits ``layers``

    def __init__(self, layers: list[Quantizer]):
        if len(layers) < 1:
            raise ValueError("ResidualVQ needs at least one level")
        first = layers[0]
        super().__init__(first.codebook_size, first.dim, beta=first.beta, search=first.search_params)
        self.layers = nn.ModuleList(layers)
        self.uses_kmeans_init = first.uses_kmeans_init

    @property
    def num_levels(self) -> int:
        return len(self.layers)

    @property
    def codebook(self) -> torch.Tensor:
        return torch.stack([q.codebook for q in self.layers])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.shape[-1] != self.num_levels:
            raise ValueError(f"residual indices need a trailing axis of {self.num_levels} levels, "
                             f"got shape {tuple(indices.shape)}")
        return sum(q.lookup(indices[..., i]) for i, q in enumerate(self.layers))

    def set_progress(self, step: int, epoch: float, total_steps: int = 0) -> None:
        for q in self.layers:
            q.set_progress(step, epoch, total_steps)

    @torch.no_grad()
    def init_codebook(self, codes: torch.Tensor) -> None:
        self.layers[0].init_codebook(codes)

    def reseed_codes(self, mask, candidates) -> None:
        raise NotImplementedError("replacement runs per level of a ResidualVQ (see replacement.py)")

    def quantize_flat(self, z):
        r = z
        zq = torch.zeros_like(z)
        loss = z.new_zeros(())
        hard = torch.zeros_like(z)
        indices = []
        for q in self.layers:
            out = q(r)
            h = out.z_q.detach() if out.hard is None else out.hard
            zq = zq + out.z_q
            hard = hard + h
            loss = loss + out.loss
            indices.append(out.indices)
            r = r - out.z_q + (out.z_q - h).detach()
        return zq, torch.stack(indices, 1), loss, hard

    @torch.no_grad()
    def _stats(self, z, zq, idx):
        """Usage and perplexity averaged over levels; distortion of the summed codes."""
        per_level = [histogram_stats(code_histogram(idx[:, i], self.codebook_size)) for i in range(self.num_levels)]
        stats = {k: torch.stack([s[k] for s in per_level]).mean() for k in per_level[0]}
        stats["distortion"] = (z.float() - zq.float()).pow(2).mean()
        return stats

    def extra_repr(self) -> str:
        return f"levels={self.num_levels}"

"""VQ with an exponential-moving-average codebook (VQ-VAE appendix; VQ-VAE-2, eqs. of Sec. 3.1).

Per training forward, with n_k latents assigned to code k and s_k their sum:

    N_k <- d N_k + (1 - d) n_k                         (EMA of counts)
    m_k <- d m_k + (1 - d) s_k                         (EMA of sums)
    e_k  = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace smoothing)

Under torchrun n_k and s_k are summed over ranks before the update (those of the global batch),
so every rank moves its table identically and exactly as one process would.

decay d = 0.99. The codebook is a buffer, not trained by gradient; the loss is the
commitment term beta ||z - sg(q)||^2 only and z_q is the STE. The forward value uses the
codes from before this step's update (as in the VQ-VAE reference). Updates are tensor ops
on the device (no host sync) and happen only in training mode.

N starts at 1 and m at the initial codes, so an unused code keeps its position instead of
being divided by a near-zero count (a plain zero init would blow unused codes up).
"""
from __future__ import annotations

import torch

from .. import distributed
from .base import Quantizer, code_histogram, straight_through, uniform_table


class EMAVQ(Quantizer):
    def __init__(self, codebook_size: int, dim: int, options=None, **kw):
        super().__init__(codebook_size, dim, options, **kw)
        init = uniform_table(codebook_size, dim)
        self.register_buffer("embedding", init)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", init.clone())

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding

    @property
    def raw_codebook(self) -> torch.Tensor:
        return self.embedding

    def quantize_flat(self, z):
        idx, _ = self.search(z)
        q = self.embedding[idx]
        loss = self.beta * (z - q).pow(2).mean()       # q is a buffer: commitment only
        if self.training:
            self._ema_update(z.detach(), idx)
        return self.pass_through(z, q), idx, loss

    def pass_through(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """What the decoder gets: forward value q, gradient path to z (here the STE)."""
        return straight_through(z, q)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        d = self.options.decay
        counts = code_histogram(idx, self.codebook_size)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, z)
        if distributed.active():       # one all-reduce of [n | s] (K, 1 + D)
            both = distributed.all_reduce_sum(torch.cat([counts[:, None], sums], 1))
            counts, sums = both[:, 0], both[:, 1:]
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
        total = self.ema_count.sum()
        eps = self.options.eps
        smoothed = (self.ema_count + eps) / (total + self.codebook_size * eps) * total
        self.embedding.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def reseed_codes(self, mask: torch.Tensor, candidates: torch.Tensor) -> None:
        """Re-seeded codes restart their moving averages as if seen once at the new position."""
        mask = mask.to(self.embedding.device)
        cand = candidates.to(self.embedding)
        self.embedding.copy_(torch.where(mask[:, None], cand, self.embedding))
        self.ema_sum.copy_(torch.where(mask[:, None], cand, self.ema_sum))
        self.ema_count.copy_(torch.where(mask, torch.ones_like(self.ema_count), self.ema_count))


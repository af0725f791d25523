"""Straight-through Gumbel-softmax VQ (Jang et al. 2017; as used by DALL-E's dVAE and the
DiVeQ paper's baseline).

    l    = W z + b                                      (learned projection D -> K: logits)
    y    = softmax((l + g) / tau),  g ~ Gumbel(0, 1)
    h    = onehot(argmax y) + y - sg(y)                 (hard forward, soft gradient)
    z_q  = h E                                          (E: (K, D) learned codes)
    loss = w_kl * mean_i sum_k p_ik log(K p_ik),  p = softmax(l)     (KL to the uniform prior)
    tau  = max(tau_min, tau0 * exp(-rate * step))       (set via ``set_progress``)

Codes are *selected by the logits*, not by distance, so ``indices`` are the argmax of the
(Gumbel-perturbed, in training) logits, and at eval the argmax of the logits, for which
z_q = E[idx] = ``lookup(idx)``. The method never needs a nearest-code search and does not
call it; its K logits per latent are the method's own (N, K) activations, inherent to the
Gumbel-softmax (they are needed for the soft gradient), not a distance matrix.

Not ``replaceable``: moving a dead row of E does not make its logit win, so the
distance-based re-seeding of the other methods would not revive it. E may start from the
k-means codes (the decoder then sees in-distribution codes from the first step).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from .vq import TableQuantizer


class GumbelVQ(TableQuantizer):
    replaceable = False

    def __init__(self, codebook_size: int, dim: int, *, tau0: float = 1.0, tau_min: float = 0.1,
                 anneal_rate: float = 2e-3, kl_weight: float = 5e-4, **kw):
        super().__init__(codebook_size, dim, **kw)
        if not 0 < tau_min <= tau0:
            raise ValueError(f"need 0 < tau_min <= tau0, got tau_min={tau_min}, tau0={tau0}")
        self.tau0, self.tau_min, self.anneal_rate, self.kl_weight = tau0, tau_min, anneal_rate, kl_weight
        self.tau = tau0
        self.proj = nn.Linear(dim, codebook_size)

    def set_progress(self, step: int, epoch: float) -> None:
        """tau = max(tau_min, tau0 * exp(-anneal_rate * step)) (exponential annealing)."""
        self.tau = max(self.tau_min, self.tau0 * math.exp(-self.anneal_rate * step))

    def quantize_flat(self, z):
        logits = self.proj(z)
        log_p = F.log_softmax(logits, dim=1)
        # KL(p || uniform) = sum_k p_k (log p_k + log K), averaged over latents.
        loss = self.kl_weight * (log_p.exp() * (log_p + math.log(self.codebook_size))).sum(1).mean()
        if not self.training:
            idx = logits.argmax(1)
            return self.embedding[idx], idx, loss
        onehot = F.gumbel_softmax(logits, tau=self.tau, hard=True, dim=1)
        idx = onehot.argmax(1)
        return onehot @ self.embedding, idx, loss

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", tau0={self.tau0}, tau_min={self.tau_min}, "
                f"anneal_rate={self.anneal_rate}, kl_weight={self.kl_weight}")

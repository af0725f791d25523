"""Straight-through Gumbel-softmax VQ (Jang et al. 2017; as used by DALL-E's dVAE and the
DiVeQ paper's baseline).

    l    = W z + b                                      (learned projection D -> K: logits)
    y    = softmax((l + g) / tau),  g ~ Gumbel(0, 1)
    h    = onehot(argmax y) + y - sg(y)                 (hard forward, soft gradient)
    z_q  = h E                                          (E: (K, D) learned codes)
    loss = w_kl * mean_i sum_k p_ik log(K p_ik),  p = softmax(l)     (KL to the uniform prior)
    tau  = tau0 (tau_min / tau0)^(step / (T - 1))      (T train_vq steps: tau_min at the last step;
                                                         the DiVeQ reference's per-epoch schedule)
    tau  = max(tau_min, tau0 * exp(-rate * step))       (with ``anneal_rate`` > 0)

Codes are *selected by the logits*, not by distance, so ``indices`` are the argmax of the
(Gumbel-perturbed, in training) logits, and at eval the argmax of the logits, for which
z_q = E[idx] = ``lookup(idx)``. The method never needs a nearest-code search and does not
call it; its K logits per latent are the method's own (N, K) activations, inherent to the
Gumbel-softmax (they are needed for the soft gradient), not a distance matrix.

Not ``replaceable``: moving a dead row of E does not make its logit win, so the
distance-based re-seeding of the other methods would not revive it. E may start from the
k-means codes (the decoder then sees in-distribution codes from the first step); then the
logits start as l_k = 2 z.c_k - ||c_k||^2 = ||z||^2 - ||z - c_k||^2, so the argmax is the
nearest code and Gumbel starts from the same assignment as the distance-based methods.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .vq import TableQuantizer


class GumbelVQ(TableQuantizer):
    replaceable = False

    def __init__(self, codebook_size: int, dim: int, options=None, **kw):
        super().__init__(codebook_size, dim, options, **kw)
        self.tau = self.options.tau0
        self.proj = nn.Linear(dim, codebook_size)

    def set_progress(self, step: int, epoch: float, total_steps: int = 0) -> None:
        """Anneal over the run to tau_min at step ``total_steps - 1`` (tau0 while the length is
        unknown), or exponentially at ``anneal_rate`` > 0."""
        o = self.options
        if o.anneal_rate > 0:
            self.tau = max(o.tau_min, o.tau0 * math.exp(-o.anneal_rate * step))
        elif total_steps > 1:
            self.tau = o.tau0 * (o.tau_min / o.tau0) ** min(1.0, step / (total_steps - 1))
        else:
            self.tau = o.tau0

    @torch.no_grad()
    def init_codebook(self, codes: torch.Tensor) -> None:
        """E := the codes, and logits that pick the nearest of them (see the module docstring)."""
        super().init_codebook(codes)
        c = self.embedding
        self.proj.weight.copy_(2 * c)
        self.proj.bias.copy_(-c.pow(2).sum(1))

    def quantize_flat(self, z):
        logits = self.proj(z)
        log_p = F.log_softmax(logits, dim=1)
        # KL(p || uniform) = sum_k p_k (log p_k + log K), averaged over latents.
        loss = self.options.kl_weight * (log_p.exp() * (log_p + math.log(self.codebook_size))).sum(1).mean()
        if not self.training:
            idx = logits.argmax(1)
            return self.embedding[idx], idx, loss
        # F.gumbel_softmax(logits, tau, hard=True) written out, with the noise of gumbel_noise
        y_soft = ((logits + self.gumbel_noise(logits)) / self.tau).softmax(1)
        idx = y_soft.max(1, keepdim=True)[1]
        onehot = torch.zeros_like(logits).scatter_(1, idx, 1.0) - y_soft.detach() + y_soft
        idx = idx[:, 0]
        return onehot @ self.embedding, idx, loss

    def gumbel_noise(self, logits: torch.Tensor) -> torch.Tensor:
        """g = -log(Exp(1)) ~ Gumbel(0, 1) per logit, as F.gumbel_softmax draws it, but for the
        global batch with this rank's rows kept, so the RNG stays equal on all ranks (a hook for
        tests)."""
        n, k = logits.shape
        return distributed.rows_of_global(
            lambda rows: -torch.empty(rows, k, device=logits.device, dtype=logits.dtype).exponential_().log(), n)

"""NS-VQ: dense non-stationary embedding loss + modified STE (the NSVQ method's quantizer).

From the NS-VQ paper (the dense non-stationary embedding loss and its modified STE):

    w_ik = 1 for the winner, else min(1, lambda K softmax_k(-||z_i - e_k||^2 / tau))   (detached)
    L_emb = (1/N) sum_i sum_k w_ik ||sg(z_i) - e_k||^2 / D                 (ns_loss.py)
    L     = L_emb + beta ||z - sg(q)||^2                                    (commitment, mean)
    z_q   = z + a q + ((1 - a) q - z).detach(),  a = 2 alpha / numel(z)    (modified STE)
    tau   = tau0 * tau_decay ** epoch                                      (per-epoch decay)

Under torchrun numel(z) in a is the global batch's (this rank's times the world size): DDP
averages the ranks' gradients of their own means, so a per-rank numel would scale the STE's
codebook gradient by the world size. The dense loss needs no reduction of its own: its
codebook gradient (2 / (N D)) (s_k e_k - M_k) is a sum over rows divided by N, so the
average of the ranks' gradients (each with N / world rows) is the global batch's exactly
(ns_loss.py).

Every code, not only the winners, is pulled towards nearby latents, so codes follow the
encoder's drifting latent distribution instead of dying.
"""
from __future__ import annotations

import math

from .. import distributed
from .ns_loss import ns_search_and_loss
from .search import search_kwargs
from .table_lookup import table_lookup
from .vq import TableQuantizer


class NSVQ(TableQuantizer):
    def __init__(self, codebook_size: int, dim: int, options=None, **kw):
        super().__init__(codebook_size, dim, options, **kw)
        self.tau = self.options.tau0

    def set_progress(self, step: int, epoch: float, total_steps: int = 0) -> None:
        """tau = tau0 * tau_decay ** floor(epoch) (the paper decays once per epoch)."""
        self.tau = self.options.tau0 * self.options.tau_decay ** math.floor(epoch)

    def quantize_flat(self, z):
        # the search runs inside the NS loss's sweep over the scores (one pass, not two)
        sp = self.search_params
        idx, dist, emb = ns_search_and_loss(z, self.embedding, self.tau, self.options.lam,
                                            **search_kwargs(sp, sp.ns_kernel))
        # commitment + modified STE (no separate codebook term: the dense loss is that term)
        zq, commit = table_lookup(z, self.embedding, idx, dist, codebook_weight=0.0, beta=self.beta,
                                  ste_scale=2.0 * self.options.alpha / (z.numel() * distributed.size()))
        return zq, idx, emb + commit

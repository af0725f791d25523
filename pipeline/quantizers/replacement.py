"""Dead-code replacement, a policy usable with any method whose codebook is a plain table.

Every ``period`` steps, codes assigned fewer than ``threshold`` times since the previous
round are re-seeded (NSVQ and DiVeQ papers):

- ``importance``: from used codes, drawn with probability proportional to their usage,
  plus a small Gaussian perturbation (``perturb`` x the per-dimension std of the codebook);
- ``random``: from latents of the most recent batch;
- ``none``: never.

The whole round is tensor ops of fixed shape (no host sync): every code gets a candidate
and ``torch.where`` keeps the candidate only for dead codes.
"""
from __future__ import annotations

import torch

from .base import Quantizer


class CodeReplacement:
    def __init__(self, policy: str = "importance", period: int = 100, threshold: float = 1.0,
                 perturb: float = 0.01, until_step: int = -1):
        if policy not in ("none", "random", "importance"):
            raise ValueError(f"unknown replacement policy {policy!r}")
        self.policy = policy
        self.period = period
        self.threshold = threshold
        self.perturb = perturb
        self.until_step = until_step

    @classmethod
    def from_params(cls, p) -> "CodeReplacement":
        return cls(p.policy, p.period, p.threshold, p.perturb, p.until_step)

    def due(self, step: int) -> bool:
        """True after every ``period``-th completed step (steps count from 1), until ``until_step``."""
        if self.policy == "none" or step <= 0 or step % self.period:
            return False
        return self.until_step < 0 or step <= self.until_step

    @torch.no_grad()
    def __call__(self, quantizer: Quantizer, step: int) -> torch.Tensor | None:
        """Run a round if one is due at ``step``; returns the number of codes re-seeded (0-dim)."""
        if not self.due(step) or not quantizer.replaceable:
            return None
        counts = quantizer.usage_counts
        codebook = quantizer.raw_codebook
        k = codebook.shape[0]
        dead = counts < self.threshold
        if self.policy == "importance":
            weights = torch.where(counts.sum() > 0, counts, torch.ones_like(counts))
            src = torch.multinomial(weights, k, replacement=True)
            noise = torch.randn_like(codebook) * codebook.std(0, keepdim=True) * self.perturb
            candidates = codebook[src] + noise
        else:
            latents = quantizer.last_latents
            if latents is None:
                return None
            src = torch.randint(0, latents.shape[0], (k,), device=latents.device)
            candidates = latents[src].to(codebook.dtype)
        quantizer.reseed_codes(dead, candidates)
        counts.zero_()
        return dead.sum()

"""Dead-code replacement, a policy usable with any method whose codebook is a plain table.

At each round, codes assigned fewer than ``threshold`` times since the previous round are
re-seeded (NSVQ and DiVeQ papers):

- ``importance``: from used codes, drawn with probability proportional to their usage,
  plus a small Gaussian perturbation (``perturb`` x the per-dimension std of the codebook);
- ``random``: from latents of the most recent batch (mapped by ``quantizer.code_space``
  into the table's space, e.g. FC's normalized low-dimensional codes);
- ``none``: never.

Schedule (denser early, the shape of the DiVeQ reference ``train.py``, which replaces every
100 batches up to batch 2000 and every 500 batches after that, until shortly before the
end): a round is due after step s (counted from 1) when

    s <= dense_until  and  s % dense_period == 0      (dense phase: codes die fastest early,
                                                       while the encoder moves most)
    s >  dense_until  and  s % period == 0            (sparse phase)

and s <= until_step (if >= 0). ``dense_until = 0`` gives the plain every-``period`` schedule.
The threshold is a usage count per round, so a dense round (shorter) is also stricter.

Methods with ``replaceable = False`` are skipped (SimVQ/TransVQ: frozen random tables moved
only through their shared map; SF-DiVeQ: codes are curve vertices and need no
replacement; Gumbel: selection is by logits, not distance). A ``ResidualVQ`` is handled
per level, each with its own usage counts and its own last latents (its input residual).

Under torchrun a round decides the same on every rank: the usage counts are already summed over
ranks (base.py), the candidates are drawn with the RNG state every rank shares (and rank 0's are
broadcast), and ``random`` draws from the global batch's latents (gathered), so the result is one
process's.

The whole round is tensor ops of fixed shape (no host sync): every code gets a candidate
and ``torch.where`` keeps the candidate only for dead codes.
"""
from __future__ import annotations

import torch

from .. import distributed
from .base import Quantizer


class CodeReplacement:
    def __init__(self, policy: str = "importance", period: int = 100, threshold: float = 1.0,
                 perturb: float = 0.01, until_step: int = -1, dense_period: int = 0, dense_until: int = 0):
        if policy not in ("none", "random", "importance"):
            raise ValueError(f"unknown replacement policy {policy!r}")
        if period < 1 or (dense_until > 0 and dense_period < 1):
            raise ValueError("period (and dense_period when dense_until > 0) must be >= 1")
        self.policy = policy
        self.period = period
        self.threshold = threshold
        self.perturb = perturb
        self.until_step = until_step
        self.dense_period = dense_period
        self.dense_until = dense_until

    @classmethod
    def from_params(cls, p) -> "CodeReplacement":
        return cls(p.policy, p.period, p.threshold, p.perturb, p.until_step, p.dense_period, p.dense_until)

    def due(self, step: int) -> bool:
        """True after the steps the schedule picks (steps count from 1), until ``until_step``."""
        if self.policy == "none" or step <= 0:
            return False
        if self.until_step >= 0 and step > self.until_step:
            return False
        period = self.dense_period if step <= self.dense_until else self.period
        return step % period == 0

    @staticmethod
    def targets(quantizer: Quantizer) -> list[Quantizer]:
        """The quantizers whose tables a round touches: the levels of a residual VQ, else itself."""
        from .residual import ResidualVQ

        levels = list(quantizer.layers) if isinstance(quantizer, ResidualVQ) else [quantizer]
        return [q for q in levels if q.replaceable]

    @torch.no_grad()
    def __call__(self, quantizer: Quantizer, step: int) -> torch.Tensor | None:
        """Run a round if one is due at ``step``; returns the number of codes re-seeded (0-dim,
        summed over levels), or None when no round ran."""
        if not self.due(step):
            return None
        replaced = [n for q in self.targets(quantizer) if (n := self._round(q)) is not None]
        return torch.stack(replaced).sum() if replaced else None

    @torch.no_grad()
    def _round(self, quantizer: Quantizer) -> torch.Tensor | None:
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
            # the global batch's latents on every rank, in rank order: one process's batch
            latents = distributed.all_gather_cat(latents)
            src = torch.randint(0, latents.shape[0], (k,), device=latents.device)
            candidates = quantizer.code_space(latents[src]).to(codebook.dtype)
        # Every rank drew the same candidates (equal RNG states and inputs); rank 0's are sent to
        # all anyway, a K x D copy per round, so kernels that differ between devices cannot
        # split the ranks' codebooks.
        quantizer.reseed_codes(dead, distributed.broadcast(candidates.contiguous()))
        counts.zero_()
        return dead.sum()

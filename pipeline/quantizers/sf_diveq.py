"""SF-DiVeQ: space-filling DiVeQ (DiVeQ paper, Sec. "Space-filling DiVeQ"; reference
ishine/DiVeQ ``sf_diveq.py`` / ``sf_diveq_detach.py``).

The codes c_0..c_{K-1} are the vertices of a piecewise-linear curve. Each training step
draws a dithered codebook on its K - 1 segments,

    c~_j = (1 - l_j) c_j + l_j c_{j+1},   l_j ~ U(0, 1)

picks the nearest dithered point j and applies DiVeQ to both ends of its segment:

    z_q = z + (1 - l_j) ||c_j - z|| sg[u_j] + l_j ||c_{j+1} - z|| sg[u_{j+1}],
    u = (v + c - z) / ||v + c - z||,  v ~ N(0, sigma^2 I)     (detach variant: v = 0)

so the forward value is (about, exactly for the detach variant) c~_j and the decoder
gradient pulls both neighbouring codes: every code sits on the curve the latents are
quantized onto, so codes do not die and no replacement is needed (not ``replaceable``).

Warm-up and initialisation (the paper's recipe): for the first ``skip_steps`` steps
(read from ``set_progress``) the latents pass through unquantized; the latents of the last
``avg_steps`` of them are kept, and at the first quantized step code j becomes the mean of
the j-th of K consecutive equal chunks of those latents,

    c_j = mean(pool[j h : (j + 1) h]),   h = floor(n / K)        (n pooled latents; reference)

or, with ``latents_per_code`` = m > 0, h = m over the last K m latents of the pool. Hence
``uses_kmeans_init`` is False. With ``skip_steps = 0`` there is no warm-up and the codebook
starts as built; ``init_codebook`` (train_vq ``init: kmeans``) sets the codes and skips the
warm-up (the k-means codes replace the averaged latents).
During warm-up ``indices`` are the nearest codes (for statistics only) and the distortion
stat is 0, since nothing is quantized. In a residual stack (``levels > 1``) all levels warm
up together, so deeper levels pool zero residuals and start from zero codes; the reference
residual SF-DiVeQ instead runs plain DiVeQ during its warm-up (not reproduced here).

Inference (eval mode), ``inference``:
- ``"codes"`` (default): the nearest code c_k, index k, so ``lookup(indices)`` is exactly
  the forward value and tokens are discrete (what a tokenizer and its prior need);
- ``"curve"``: the paper's projection onto the nearest of the two segments adjacent to the
  nearest code; ``indices`` are that segment's first vertex. The value is continuous, so
  ``lookup`` returns only the segment's first vertex, not the projection.
"""
from __future__ import annotations

import math

import torch

from .. import distributed
from .diveq import directional_error
from .vq import TableQuantizer


def project_on_segment(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Closest point to each row of z on the segment [a, b] (rows)."""
    ab = b - a
    t = ((z - a) * ab).sum(1, keepdim=True) / ab.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
    return a + t.clamp(0.0, 1.0) * ab


class SFDiVeQ(TableQuantizer):
    replaceable = False
    uses_kmeans_init = False

    def __init__(self, codebook_size: int, dim: int, options=None, **kw):
        super().__init__(codebook_size, dim, options, **kw)
        self.step = 0
        self.initialized = self.options.skip_steps == 0
        self._pool: list[torch.Tensor] = []

    @property
    def sigma(self) -> float:
        """Std of the directional noise, sqrt(noise_var) (the detach variant: none)."""
        return math.sqrt(self.options.noise_var)

    @torch.no_grad()
    def init_codebook(self, codes: torch.Tensor) -> None:
        super().init_codebook(codes)
        self._pool = []
        self.initialized = True

    def set_progress(self, step: int, epoch: float, total_steps: int = 0) -> None:
        self.step = step

    # The warm-up flag is host state; it travels in the state dict so a resumed run does not
    # re-initialise a trained codebook.
    def get_extra_state(self):
        return {"initialized": self.initialized}

    def set_extra_state(self, state) -> None:
        self.initialized = bool(state["initialized"])

    @torch.no_grad()
    def _init_from_pool(self) -> None:
        if self._pool:
            lat = torch.cat(self._pool).to(self.embedding)
            n, k = lat.shape[0], self.codebook_size
            per_code = self.options.latents_per_code
            if per_code and n > per_code * k:      # the most recent K x latents_per_code latents
                lat, n = lat[n - per_code * k:], per_code * k
            hop = n // k
            if hop >= 1:
                codes = lat[:hop * k].reshape(k, hop, self.dim).mean(1)
            else:   # fewer pooled latents than codes: reuse them cyclically
                codes = lat[torch.arange(k, device=lat.device) % n]
            self.embedding.copy_(codes)
        self._pool = []
        self.initialized = True

    def quantize_flat(self, z):
        zero = z.new_zeros(())
        if not self.training:
            return self._inference(z, zero)
        skip = self.options.skip_steps
        if self.step < skip and not self.initialized:
            if self.step >= skip - self.options.avg_steps:
                # every rank pools the global batch's latents (rank order = one process's order)
                self._pool.append(distributed.all_gather_cat(z.detach()))
            idx, _ = self.search(z)
            return z, idx, zero, z
        if not self.initialized:
            self._init_from_pool()
        c = self.embedding
        lam = self.draw_dither(z)
        dithered = (1 - lam) * c[:-1] + lam * c[1:]
        j, _ = self.search(z, dithered)
        lj = lam[j]
        zq = (z + (1 - lj) * directional_error(z, c[j], self.sigma)
              + lj * directional_error(z, c[j + 1], self.sigma))
        return zq, j, zero, dithered[j]

    def draw_dither(self, z: torch.Tensor) -> torch.Tensor:
        """l_j ~ U(0, 1) for the K - 1 segments, (K - 1, 1), fresh every step (a hook for tests)."""
        return torch.rand(self.codebook_size - 1, 1, device=z.device, dtype=z.dtype)

    def _inference(self, z, zero):
        idx, _ = self.search(z)
        c = self.embedding
        if self.options.inference == "codes":
            return c[idx], idx, zero
        last = self.codebook_size - 2
        s0, s1 = (idx - 1).clamp(0, last), idx.clamp(0, last)
        p0 = project_on_segment(z, c[s0], c[s0 + 1])
        p1 = project_on_segment(z, c[s1], c[s1 + 1])
        use1 = ((z - p1).pow(2).sum(1) < (z - p0).pow(2).sum(1))[:, None]
        return torch.where(use1, p1, p0), torch.where(use1[:, 0], s1, s0), zero


class SFDiVeQDetach(SFDiVeQ):
    """SF-DiVeQ without directional noise: the forward value is exactly the dithered point.

    (The reference ``sf_diveq_detach.py`` uses (c_j - z) in both segment terms; we use
    (c_{j+1} - z) for the second, which is what makes the forward value c~_j.)"""

    sigma = 0.0

"""The quantizer interface every method implements.

    out = quantizer(z)          # z: (B, D, H, W) or (N, D)
    out.z_q                     # what the decoder sees
    out.indices                 # (B, H, W) or (N,) long
    out.loss                    # the method's auxiliary loss (0-dim; zero if none)
    out.stats                   # detached 0-dim tensors: usage, perplexity, distortion
    quantizer.codebook          # (K, D) effective codebook (after any transform)
    quantizer.lookup(indices)   # codes for indices, transform applied: (*indices.shape, D)

A residual quantizer (params ``quantizer.levels > 1``, residual.py) returns indices with a trailing level axis,
(B, H, W, L) or (N, L), and its ``lookup`` sums the levels' codes: (*indices.shape[:-1], D).

A method subclasses :class:`Quantizer` and implements ``quantize_flat`` on (N, D) rows;
the base class handles layouts, statistics and usage counting. Statistics stay on the
device (no host syncs in the training loop); callers ``.item()`` them when they log.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .. import configbase, distributed
from ..config import QuantizerParams, SearchParams
from .registry import method_of
from .search import nearest_code, search_kwargs


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    #: The point actually selected (detached, same layout as z_q) when the forward value
    #: z_q is a noisy surrogate of it (noise substitution, DiVeQ, SF-DiVeQ in training);
    #: None when z_q's forward value already is the selected point. Residual VQ needs it
    #: to pass the true residual to the next level.
    hard: torch.Tensor | None = None


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator (VQ-VAE): forward value q, gradient passed to z unchanged."""
    return z + (q - z).detach()


def uniform_table(codebook_size: int, dim: int) -> torch.Tensor:
    """A (K, D) codebook drawn from U(-1/K, 1/K), as the VQ-VAE and NS-VQ reference code start
    theirs (k-means init overwrites it)."""
    return torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size)


def code_histogram(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts per code as fp32 (K,), computed on device without a host sync."""
    flat = indices.reshape(-1)
    counts = torch.zeros(codebook_size, device=flat.device, dtype=torch.float32)
    return counts.index_add_(0, flat, torch.ones((), device=flat.device).expand(flat.shape[0]))


def histogram_stats(counts: torch.Tensor, total: int | None = None) -> dict[str, torch.Tensor]:
    """Usage (fraction of codes used) and perplexity exp(H(p)) of a code histogram.

    ``total`` (the number of assignments, when the caller knows it) saves a reduction.
    """
    p = counts / (max(total, 1) if total is not None else counts.sum().clamp_min(1.0))
    entropy = torch.special.entr(p).sum()               # entr(p) = -p ln p, 0 at p = 0
    return {"usage": torch.count_nonzero(counts) / counts.numel(), "perplexity": entropy.exp()}


class Quantizer(nn.Module):
    """Base class: layouts, stats and usage counts around a method's ``quantize_flat``."""

    #: True when ``codebook`` is a plain learnable table that k-means init and code
    #: replacement may overwrite (``raw_codebook``); False for transformed codebooks.
    replaceable = True
    #: False for methods whose own recipe does not start from k-means codes (the frozen random
    #: tables of SimVQ/TransVQ, SF-DiVeQ's averaged latents): the toy study starts only the
    #: others from k-means. train_vq's ``init: kmeans`` starts *every* method from the codes
    #: (``init_codebook``: each method says how), so the methods share one start.
    uses_kmeans_init = True

    def __init__(self, codebook_size: int, dim: int, options=None, *, beta: float = QuantizerParams.beta,
                 search: SearchParams | None = None, **overrides):
        """``options``: the method's options dataclass (registry.py), its defaults when None;
        ``overrides``: option fields to change, validated like params.yaml (``EMAVQ(8, 4, decay=0.9)``).
        ``search``: the nearest-code search params (backend, chunk, kernel precision and configs)."""
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        self.options = resolve_options(type(self), options, overrides)
        self.search_params = search if search is not None else SearchParams()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        # Assignments per code since the last replacement round (training mode only).
        self.register_buffer("usage_counts", torch.zeros(codebook_size), persistent=True)
        self.last_latents: torch.Tensor | None = None

    # -- to implement -------------------------------------------------------------
    def quantize_flat(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, D) -> (z_q (N, D), indices (N,), loss 0-dim[, hard (N, D)]).

        The optional fourth value is the selected point when z_q's forward value differs
        from it (see ``QuantizerOutput.hard``)."""
        raise NotImplementedError

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) effective codebook."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------
    @property
    def raw_codebook(self) -> torch.Tensor:
        """The learnable table that initialisation and replacement write into."""
        raise NotImplementedError(f"{type(self).__name__} has no directly writable codebook")

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for ``indices`` with the method's transform applied: (*indices.shape, D)."""
        return nn.functional.embedding(indices, self.codebook)

    def code_space(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents (N, D) into the space ``raw_codebook`` lives in (identity unless the
        method searches in a projected space, e.g. FC); replacement from latents uses it."""
        return z

    def search(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code for each row through the shared bounded-memory search."""
        cb = self.codebook if codebook is None else codebook
        return nearest_code(z.detach(), cb.detach(), **search_kwargs(self.search_params))

    def set_progress(self, step: int, epoch: float, total_steps: int = 0) -> None:
        """Schedules (temperatures, warm-ups) read the training position here: the step, the
        epoch and the run's length (0: unknown); default none."""

    def check_init_codes(self, codes: torch.Tensor) -> None:
        if codes.shape != (self.codebook_size, self.dim):
            raise ValueError(f"init codes have shape {tuple(codes.shape)}, expected "
                             f"({self.codebook_size}, {self.dim})")

    @torch.no_grad()
    def init_codebook(self, codes: torch.Tensor) -> None:
        """Start from given codes (k-means init); (K, D): ``codebook`` equals them afterwards
        (methods with a transformed codebook say how they get there)."""
        self.check_init_codes(codes)
        self.reseed_codes(torch.ones(self.codebook_size, dtype=torch.bool, device=codes.device), codes)

    @torch.no_grad()
    def reseed_codes(self, mask: torch.Tensor, candidates: torch.Tensor) -> None:
        """Replace the codes where ``mask`` (K,) is True by ``candidates`` (K, D), without a
        host sync. Methods with extra per-code state (EMA statistics) override this."""
        cb = self.raw_codebook
        cb.copy_(torch.where(mask.to(cb.device)[:, None], candidates.to(cb), cb))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.dim() == 4:
            b, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        elif z.dim() == 2:
            flat = z
        else:
            raise ValueError(f"quantizer input must be (B, D, H, W) or (N, D), got {tuple(z.shape)}")
        if flat.shape[1] != self.dim:
            raise ValueError(f"latent dim {flat.shape[1]} != quantizer dim {self.dim}")
        # The quantizer always runs in fp32 (bf16 distances break argmin ties and the NS softmax).
        with torch.autocast(device_type=flat.device.type, enabled=False):
            zq, idx, loss, *rest = self.quantize_flat(flat.float())
        hard = rest[0].detach() if rest else None
        stats = self._stats(flat, zq if hard is None else hard, idx)
        if self.training:
            self.last_latents = flat.detach()
        if z.dim() == 4:
            zq = zq.reshape(b, h, w, d).permute(0, 3, 1, 2)
            idx = idx.reshape(b, h, w, *idx.shape[1:])      # residual VQ keeps a trailing level axis
            if hard is not None:
                hard = hard.reshape(b, h, w, d).permute(0, 3, 1, 2)
        if hard is not None:
            hard = hard.to(z.dtype)
        return QuantizerOutput(zq.to(z.dtype), idx, loss, stats, hard)

    @torch.no_grad()
    def count_usage(self, idx: torch.Tensor) -> torch.Tensor:
        """The step's code histogram (K,); in training summed over ranks (identity for one
        process) and added to ``usage_counts``, so replacement's dead codes are those of the
        global batch, the same on every rank."""
        counts = code_histogram(idx, self.codebook_size)
        if self.training:
            counts = distributed.all_reduce_sum(counts)
            self.usage_counts += counts
        return counts

    @torch.no_grad()
    def _stats(self, z: torch.Tensor, zq: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        counts = self.count_usage(idx)
        total = idx.numel() * (distributed.size() if self.training else 1)
        stats = histogram_stats(counts, total)
        stats["distortion"] = nn.functional.mse_loss(z.float(), zq.float())
        return stats

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in configbase.to_dict(self.options).items()) if self.options else ""
        return f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}{opts}"


def resolve_options(cls: type, options, overrides: dict):
    """The options of a ``cls`` instance: ``options`` (or the registered default) with
    ``overrides`` applied and validated; None for classes the registry does not list."""
    method = method_of(cls)
    if method is None:
        if options is not None or overrides:
            raise TypeError(f"{cls.__name__} is not a registered method and takes no options")
        return None
    base = configbase.to_dict(options) if options is not None else {}
    return configbase.build(method.options, {**base, **overrides}, method.name)

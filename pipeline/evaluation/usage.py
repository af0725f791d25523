"""Codebook usage on the training set: the figure the papers report.

The NS-VQ reference code counts the codes used over every assignment of a training epoch;
usage counted on a small validation split understates it (8,192 validation tokens can reach
at most ~63% of K = 8,192 codes even if assigned uniformly). Two counts:

- :class:`EpochUsage`: during train_vq, every token the quantizer assigns in a training epoch
  (training mode, so DiVeQ's noise, Gumbel's sampling and the replacement rounds included),
  logged once per epoch as ``epoch_usage``, ``epoch_perplexity`` and ``epoch_dead_codes``;
- :func:`training_set_usage`: at the end (the evaluate stage), the final tokenizer in eval
  mode over the training split (every image, or the first ``limit``; the token count is
  reported with the numbers).

For a residual quantizer (tokens with a trailing level axis) usage and perplexity are the
means over levels and dead codes the sum over levels, as the quantizer's batch stats average
its levels.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..progress import Progress


def token_usage(tokens, codebook_size: int) -> dict[str, float | int]:
    """Usage (fraction of codes used), perplexity exp(H), dead codes (codes never used) and
    the number of tokens (``usage_tokens``) of ``tokens`` ((N, h, w) or (N, h, w, L) for residual VQ)."""
    tokens = np.asarray(tokens)
    return counts_usage(torch.as_tensor(level_counts(tokens, codebook_size)))


def level_counts(tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """Per-level code counts (L, K) of tokens (N, h, w) (L = 1) or (N, h, w, L)."""
    from . import metrics       # scikit-image: not needed by train_vq's EpochUsage

    flat = tokens.reshape(-1, tokens.shape[-1] if tokens.ndim == 4 else 1)
    return np.stack([metrics.code_counts(flat[:, i], codebook_size) for i in range(flat.shape[1])])


@torch.no_grad()
def training_set_usage(model, images, *, device, batch_size: int = 256, limit: int = 0, chunk: int = 4096,
                       progress: bool = False) -> dict[str, float | int]:
    """:func:`token_usage` of ``model``'s eval-mode tokens of the first ``limit`` ``images``
    (0: all), read in chunks. Under torchrun each rank tokenizes its share; counts are summed."""
    from ..models.inference import encode_tokens

    n = min(limit or len(images), len(images))
    if n == 0:
        raise ValueError("no training images to count codebook usage on")
    k = model.quantizer.codebook_size
    mine = distributed.share(n)
    counts = None
    bar = Progress("train usage", mine.stop - mine.start, 0, progress and distributed.is_main(), unit="img")
    for start in range(mine.start, mine.stop, chunk):
        tokens = encode_tokens(model, np.ascontiguousarray(images[start:min(start + chunk, mine.stop)]), device,
                               batch_size)
        c = level_counts(tokens, k)
        counts = c if counts is None else counts + c
        bar.update(start + len(tokens) - mine.start, None)
    bar.close()
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if distributed.active():
        counts = distributed.all_reduce_sum(counts.to(device)).cpu()
    return counts_usage(counts)


def usage_tensors(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """From per-level code counts (L, K): usage = mean over levels of (codes used) / K,
    perplexity = mean over levels of exp(-sum_k p_k ln p_k), dead codes = codes never used,
    summed over levels; 0-dim tensors on the counts' device."""
    counts = counts.double()
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    used = (counts > 0).sum(1).double()
    return {"codebook_usage": (used / counts.shape[1]).mean(),
            "perplexity": torch.special.entr(p).sum(1).exp().mean(),
            "dead_codes": (counts.shape[1] - used).sum()}


def counts_usage(counts: torch.Tensor) -> dict[str, float | int]:
    """:func:`usage_tensors` as numbers, plus the number of tokens counted (per level)."""
    out = {k: v.item() for k, v in usage_tensors(counts).items()}
    out["dead_codes"] = int(out["dead_codes"])
    out["usage_tokens"] = int(counts[0].sum().item())
    return out


class EpochUsage:
    """Code counts over one training epoch, on the device (no host sync until the epoch ends).

    ``add(indices)`` after every step (the step's counts summed over ranks, so every rank holds
    the global batch's counts, as the quantizer's own usage counts do); ``take()`` at an epoch's
    last step returns the epoch's :func:`usage_tensors` and starts the next epoch. The counts
    are checkpointed (rank 0's, the same on every rank), so a resumed run reports the same
    epochs as an uninterrupted one."""

    def __init__(self, codebook_size: int, levels: int, device):
        self.levels = levels
        self.counts = torch.zeros(levels, codebook_size, device=device, dtype=torch.float64)

    def add(self, indices: torch.Tensor) -> None:
        """``indices``: the step's (B, h, w), or (B, h, w, L) for residual VQ."""
        flat = indices.reshape(-1, self.levels)
        step = torch.zeros_like(self.counts)
        for i in range(self.levels):
            step[i].index_add_(0, flat[:, i], torch.ones((), device=flat.device, dtype=step.dtype).expand(flat.shape[0]))
        self.counts += distributed.all_reduce_sum(step)

    def take(self) -> dict[str, torch.Tensor]:
        """The epoch's usage, perplexity and dead codes as 0-dim device tensors; resets the counts."""
        stats = usage_tensors(self.counts)
        out = {"epoch_usage": stats["codebook_usage"], "epoch_perplexity": stats["perplexity"],
               "epoch_dead_codes": stats["dead_codes"]}
        self.counts.zero_()
        return out

    def state_dict(self) -> dict:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.counts.copy_(state["counts"].to(self.counts))

"""train_prior: tokenize the data with the final tokenizer, train the transformer prior,
sample new token grids and decode them to images.

- :func:`encode_tokens` - token grids (N, h, w[, L]) of uint8 NHWC images (eval mode).
- :func:`token_entropy_bits` - the empirical entropy of the token indices, in bits per
  token: what a model that ignores context (a unigram per level) would reach, the
  reference the prior's bits per token should beat.
- :func:`train_prior` - AdamW (weight decay on matrices only, as GPT-2) with a linear
  warm-up and a cosine decay (:class:`WarmupCosine`), through the shared :class:`Trainer`;
  the scheduler is part of the checkpointed state, so a resumed run continues its schedule.
- :func:`nll_bits_per_token` - mean negative log-likelihood over a token set, in bits.
- :func:`sample_images` - sampled sequences decoded to uint8 images.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .images import input_batches, output_to_images
from .models.autoencoder import VQAutoencoder
from .models.prior import TokenPrior, grid_to_sequence, sequence_to_grid
from .training import Trainer, TrainResult, optimizer_step, to_device_async


@torch.no_grad()
def encode_tokens(model: VQAutoencoder, images: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    """Token grids of uint8 NHWC images: (N, h, w) int64, or (N, h, w, L) for residual VQ."""
    model.eval()
    out = []
    for x in input_batches(images, device, batch_size):
        out.append(model.quantize(model.encode(x).float()).indices.cpu().numpy().astype(np.int64))
    if not out:
        raise ValueError("no images to tokenize")
    return np.concatenate(out)


def token_entropy_bits(tokens: np.ndarray, codebook_size: int) -> float:
    """Entropy of the empirical index distribution in bits per token (averaged over levels
    for residual grids (N, h, w, L), each level having its own codebook)."""
    tokens = np.asarray(tokens)
    per_level = [tokens[..., i] for i in range(tokens.shape[-1])] if tokens.ndim == 4 else [tokens]
    entropies = []
    for t in per_level:
        p = np.bincount(t.ravel(), minlength=codebook_size) / t.size
        p = p[p > 0]
        entropies.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(entropies))


class WarmupCosine:
    """lr multiplier: linear warm-up over ``warmup`` steps to 1, then cosine to ``min_ratio``
    at ``total`` steps (LambdaLR; step ``s`` is the number of optimizer steps taken)."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_prior(pp, codebook_size: int, seq_len: int, levels: int = 1) -> TokenPrior:
    """A TokenPrior from a PriorParams section, its init seeded by ``pp.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pp.seed)
        return TokenPrior(codebook_size, seq_len, levels, width=pp.width, layers=pp.layers, heads=pp.heads,
                          mlp_ratio=pp.mlp_ratio, dropout=pp.dropout)


def make_optimizer(prior: TokenPrior, pp) -> torch.optim.Optimizer:
    """AdamW, betas (0.9, 0.95); weight decay on weight matrices only (GPT-2 / minGPT)."""
    decay = [p for n, p in prior.named_parameters() if p.dim() >= 2 and n != "pos_emb"]
    no_decay = [p for n, p in prior.named_parameters() if p.dim() < 2 or n == "pos_emb"]
    fused = next(prior.parameters()).is_cuda
    return torch.optim.AdamW([{"params": decay, "weight_decay": pp.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=pp.lr, betas=(0.9, 0.95), fused=fused)


def train_prior(prior: TokenPrior, train_seq: np.ndarray | torch.Tensor, pp, trainer: Trainer,
                on_log=None) -> TrainResult:
    """Train ``prior`` on sequences (N, T) for ``pp.steps`` steps; batches are a function of
    (seed, step), so a resumed run sees the batches of an uninterrupted one."""
    device = trainer.device
    data = torch.as_tensor(np.asarray(train_seq), dtype=torch.long).to(device)
    if data.dim() != 2 or data.shape[1] != prior.seq_len:
        raise ValueError(f"expected sequences (N, {prior.seq_len}), got {tuple(data.shape)}")
    prior.to(device).train()
    opt = make_optimizer(prior, pp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(pp.warmup_steps, pp.steps, pp.min_lr_ratio))
    n = data.shape[0]
    # compile: the training forward only (sampling runs every prefix length, which would recompile).
    forward = torch.compile(prior) if pp.compile else prior

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(pp.seed * 1_000_003 + step)
        batch = data[to_device_async(torch.randint(0, n, (pp.batch_size,), generator=g), device)]
        lr = torch.tensor(sched.get_last_lr()[0])
        with trainer.autocast():
            logits = forward(batch)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch.reshape(-1))
        optimizer_step(loss, opt, pp.grad_clip)
        sched.step()
        return {"loss": loss, "bits_per_token": loss / math.log(2), "lr": lr}

    torch.manual_seed(pp.seed)   # dropout draws (a resumed run restores the checkpoint's RNG state)
    result = trainer.fit(step_fn, {"prior": prior, "optimizer": opt, "scheduler": sched}, on_log=on_log)
    prior.eval()
    return result


@torch.no_grad()
def nll_bits_per_token(prior: TokenPrior, seq: np.ndarray | torch.Tensor, batch_size: int = 256) -> float:
    """Mean negative log-likelihood of sequences (N, T) under ``prior`` (eval mode), bits/token."""
    prior.eval()
    device = prior.pos_emb.device
    data = torch.as_tensor(np.asarray(seq), dtype=torch.long)
    total, count = 0.0, 0
    for s in range(0, len(data), batch_size):
        batch = data[s:s + batch_size].to(device)
        total += prior.nll(batch).item() * batch.numel()
        count += batch.numel()
    if count == 0:
        raise ValueError("no sequences to evaluate")
    return total / count / math.log(2)


@torch.no_grad()
def sample_images(prior: TokenPrior, tokenizer: VQAutoencoder, n: int, grid: tuple[int, int], *,
                  temperature: float = 1.0, top_k: int = 0, seed: int = 0, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` token grids sampled from ``prior`` and their decoded images.

    Returns (tokens (n, h, w[, L]) int64, images uint8 (n, H, W, 3)); deterministic given
    ``seed`` on a given device."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prior.eval()
    tokenizer.eval()
    device = prior.pos_emb.device
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens, images = [], []
    for s in range(0, n, batch_size):
        seq = prior.sample(min(batch_size, n - s), temperature=temperature, top_k=top_k, generator=gen)
        grids = sequence_to_grid(seq, grid, prior.levels)
        images.append(output_to_images(tokenizer.decode_indices(grids.to(device))).cpu().numpy())
        tokens.append(grids.cpu().numpy())
    return np.concatenate(tokens), np.concatenate(images)


def sequences(tokens: np.ndarray) -> np.ndarray:
    """Token grids (N, h, w[, L]) as raster-order sequences (N, T)."""
    return grid_to_sequence(torch.as_tensor(np.asarray(tokens))).numpy()

"""train_prior: tokenize the data with the final tokenizer, train the transformer prior,
sample new token grids and decode them to images.

- :func:`token_entropy_bits` - the empirical entropy of the token indices, in bits per
  token: what a model that ignores context (a unigram per level) would reach, the
  reference the prior's bits per token should beat.
- :func:`train_prior` - AdamW (weight decay on matrices only, as GPT-2) with a linear
  warm-up and a cosine decay (:class:`WarmupCosine`), through the shared :class:`Trainer`;
  the scheduler is part of the checkpointed state, so a resumed run continues its schedule.
- :func:`nll_bits_per_token` - mean negative log-likelihood over a token set, in bits.
- :func:`sample_images` - sampled sequences decoded to uint8 images.
- :func:`run_train_prior` - the train_prior stage's work: tokens, prior, bits, samples.

Under torchrun each rank tokenizes its share of both splits (gathered, so every rank holds all
tokens), trains under DDP on its share of each global batch with its own dropout stream (rank
0's is one process's), scores its share of the bits per token (summed over ranks) and samples
its share of the images (gathered on rank 0, which writes them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..images import output_to_images
from ..models.autoencoder import VQAutoencoder
from ..training.loop import TrainResult
from ..training.optim import optimizer_step
from ..training.setup import RunOptions, setup_training
from .model import TokenPrior, grid_to_sequence, sequence_to_grid


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


def train_prior(prior: TokenPrior, train_seq: np.ndarray | torch.Tensor, pp, run: RunOptions = RunOptions(),
                on_log=None) -> TrainResult:
    """Train ``prior`` on sequences (N, T) for ``pp.steps`` steps; batches are a function of
    (seed, step), so a resumed run sees the batches of an uninterrupted one."""
    data = np.asarray(train_seq)
    if data.ndim != 2 or data.shape[1] != prior.seq_len:
        raise ValueError(f"expected sequences (N, {prior.seq_len}), got {tuple(data.shape)}")
    t = setup_training("train_prior", pp, prior, data, total_steps=pp.steps, run=run, images=False,
                       optimizer=lambda params, lp: make_optimizer(prior, lp))
    prior.train()
    sched = torch.optim.lr_scheduler.LambdaLR(t.optimizer, WarmupCosine(pp.warmup_steps, pp.steps, pp.min_lr_ratio))
    # compile: the training forward only (sampling runs every prefix length, which would recompile).
    forward = torch.compile(t.net) if pp.compile else t.net

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        batch = t.batches.batch(step)
        lr = torch.tensor(sched.get_last_lr()[0])
        with t.trainer.autocast():
            logits = forward(batch)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch.reshape(-1))
        optimizer_step(loss, t.optimizer, pp.grad_clip)
        sched.step()
        return {"loss": loss, "bits_per_token": loss / math.log(2), "lr": lr}

    # Dropout draws (a resumed run restores the checkpoint's RNG states): rank 0 draws one
    # process's stream, each other rank its own.
    torch.manual_seed(rank_seed(pp.seed))
    result = t.fit(step_fn, {"prior": prior, "scheduler": sched}, on_log=on_log)
    prior.eval()
    return result


def rank_seed(seed: int) -> int:
    """``seed`` on rank 0 (one process's stream), another seed per other rank."""
    r = distributed.rank()
    return seed if r == 0 else (seed * 1_000_003 + 7919 * r) % (1 << 31)


@torch.no_grad()
def nll_bits_per_token(prior: TokenPrior, seq: np.ndarray | torch.Tensor, batch_size: int = 256) -> float:
    """Mean negative log-likelihood of sequences (N, T) under ``prior`` (eval mode), bits/token;
    under torchrun each rank scores its share and the sums are all-reduced."""
    prior.eval()
    device = prior.pos_emb.device
    data = torch.as_tensor(np.asarray(seq), dtype=torch.long)
    if len(data) == 0:
        raise ValueError("no sequences to evaluate")
    data = data[distributed.share(len(data))]
    total, count = 0.0, 0
    for s in range(0, len(data), batch_size):
        batch = data[s:s + batch_size].to(device)
        total += prior.nll(batch).item() * batch.numel()
        count += batch.numel()
    if distributed.active():
        total, count = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / count / math.log(2)


@torch.no_grad()
def sample_images(prior: TokenPrior, tokenizer: VQAutoencoder, n: int, grid: tuple[int, int], *,
                  temperature: float = 1.0, top_k: int = 0, seed: int = 0, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` token grids sampled from ``prior`` and their decoded images.

    Returns (tokens (n, h, w[, L]) int64, images uint8 (n, H, W, 3)); deterministic given
    ``seed`` on a given device (and number of ranks: under torchrun each rank samples its share
    of the ``n`` from its own generator, rank 0's seeded by ``seed``, and every rank gets all)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prior.eval()
    tokenizer.eval()
    device = prior.pos_emb.device
    gen = torch.Generator(device=device).manual_seed(rank_seed(seed))
    mine = distributed.share(n)
    tokens, images = [], []
    for s in range(mine.start, mine.stop, batch_size):
        seq = prior.sample(min(batch_size, mine.stop - s), temperature=temperature, top_k=top_k, generator=gen)
        grids = sequence_to_grid(seq, grid, prior.levels)
        images.append(output_to_images(tokenizer.decode_indices(grids.to(device))).cpu())
        tokens.append(grids.cpu())
    if not tokens:
        raise ValueError(f"rank {distributed.rank()} has no sample to draw: fewer samples ({n}) than ranks")
    return distributed.gather_array(torch.cat(tokens).numpy()), distributed.gather_array(torch.cat(images).numpy())


def sequences(tokens: np.ndarray) -> np.ndarray:
    """Token grids (N, h, w[, L]) as raster-order sequences (N, T)."""
    return grid_to_sequence(torch.as_tensor(np.asarray(tokens))).numpy()


SAMPLE_GRID_COLUMNS = 8


def token_dtype(codebook_size: int):
    """The storage dtype of token indices: int16 while every code fits, else int32."""
    return np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32


@dataclass
class PriorRun:
    tokens: dict[str, np.ndarray]      # "train", "val": token grids in their storage dtype
    tokens_meta: dict
    prior: TokenPrior | None           # None: train_prior.steps is 0
    prior_meta: dict
    sample_tokens: np.ndarray          # (num_samples, h, w[, L]); empty without a prior
    samples: np.ndarray                # decoded, uint8 (num_samples, H, W, 3)
    samples_grid: bytes | None         # PNG of the first samples (up to 4 rows of 8)
    result: TrainResult | None
    summary: dict

    @property
    def history(self) -> list:
        return self.result.history if self.result is not None else []


def run_train_prior(p, prepared, tokenizer_path, checkpoint=None, on_log=None) -> PriorRun:
    """The train_prior stage: both splits tokenized by the tokenizer, the prior of
    ``p.train_prior`` trained on the training tokens (a checkpoint resumes only a run of the same
    params and tokens), its bits per token on both splits, and ``num_samples`` sampled token grids
    decoded to images. With ``train_prior.steps: 0`` no prior is trained (tokens are still made
    and their entropy reported)."""
    import hashlib

    from ..configbase import to_dict
    from ..data import load_manifest, load_split
    from ..evaluation import plots
    from ..models.inference import encode_tokens
    from ..models.io import load_autoencoder
    from ..training.checkpoint import fingerprint
    from ..training.device import pick_device

    pp = p.train_prior
    device = distributed.local_device(pick_device())
    distributed.init(device)
    tokenizer, _ = load_autoencoder(tokenizer_path, device)
    k = tokenizer.quantizer.codebook_size
    grids = {}
    for split in ("train", "val"):
        images = load_split(prepared, split)
        grids[split] = distributed.gather_array(encode_tokens(tokenizer, images, device,
                                                              rows=distributed.share(len(images))))
    levels = grids["train"].shape[3] if grids["train"].ndim == 4 else 1
    grid = tuple(grids["train"].shape[1:3])
    meta = {"codebook_size": k, "levels": levels, "grid": list(grid), "counts": {s: len(t) for s, t in grids.items()},
            "tokenizer_sha256": hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest(),
            "layout": "train.npy/val.npy: (N, h, w) or (N, h, w, levels) code indices"}
    summary = {"token_entropy_bits": token_entropy_bits(grids["train"], k),
               "val_token_entropy_bits": token_entropy_bits(grids["val"], k),
               "uniform_bits_per_token": float(np.log2(k)), "seq_len": grid[0] * grid[1] * levels}
    image_size = load_manifest(prepared)["image_size"]
    samples = np.zeros((0, image_size, image_size, 3), np.uint8)
    sample_tokens = np.zeros((0, *grids["train"].shape[1:]), np.int64)
    prior, result, figure = None, None, None
    if pp.steps == 0:
        prior_meta = {"skipped": "train_prior.steps is 0"}
        summary.update(steps=0, val_bits_per_token=None, note="train_prior.steps is 0: no prior trained")
    else:
        train_seq, val_seq = sequences(grids["train"]), sequences(grids["val"])
        prior = build_prior(pp, k, train_seq.shape[1], levels)
        run = RunOptions(checkpoint, fingerprint(to_dict(pp), meta), device)
        result = train_prior(prior, train_seq, pp, run, on_log=on_log)
        summary.update(steps=result.steps, train_seconds=result.seconds,
                       val_bits_per_token=nll_bits_per_token(prior, val_seq),
                       train_bits_per_token=nll_bits_per_token(prior, train_seq),
                       num_params=sum(p.numel() for p in prior.parameters()))
        if pp.num_samples:
            sample_tokens, samples = sample_images(prior, tokenizer, pp.num_samples, grid,
                                                   temperature=pp.temperature, top_k=pp.top_k, seed=pp.seed,
                                                   batch_size=max(pp.batch_size, 64))
            c = SAMPLE_GRID_COLUMNS
            figure = plots.image_grid([samples[i:i + c] for i in range(0, min(len(samples), 4 * c), c)])
        prior_meta = {"steps": result.steps, "final": result.final, "val_bits_per_token": summary["val_bits_per_token"],
                      "grid": list(grid), "tokenizer_sha256": meta["tokenizer_sha256"]}
    summary["num_samples"] = len(samples)
    dtype = token_dtype(k)
    return PriorRun({s: t.astype(dtype) for s, t in grids.items()}, meta, prior, prior_meta,
                    sample_tokens.astype(dtype), samples, figure, result, summary)

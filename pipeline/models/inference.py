"""A trained autoencoder run over uint8 NHWC image arrays in batches (eval mode, no gradients):
its latents (k-means init), its tokens (the prior's data) and its reconstructions (metrics)."""
from __future__ import annotations

import numpy as np
import torch

from ..images import input_batches, output_to_images
from .autoencoder import VQAutoencoder


@torch.no_grad()
def encode_latents(model: VQAutoencoder, images: np.ndarray, device, batch_size: int = 256,
                   rows: slice | None = None) -> torch.Tensor:
    """Encoder latents of ``images[rows]`` (default all) as rows (N * h * w, D), on ``device``."""
    model.eval()
    out = []
    for x in input_batches(images, device, batch_size, rows):
        z = model.encode(x).float()
        out.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(out)


@torch.no_grad()
def encode_tokens(model: VQAutoencoder, images: np.ndarray, device, batch_size: int = 256,
                  rows: slice | None = None) -> np.ndarray:
    """Token grids of ``images[rows]`` (default all): (N, h, w) int64, or (N, h, w, L) for residual VQ."""
    model.eval()
    out = []
    for x in input_batches(images, device, batch_size, rows):
        out.append(model.quantize(model.encode(x).float()).indices.cpu().numpy().astype(np.int64))
    if not out:
        raise ValueError("no images to tokenize")
    return np.concatenate(out)


@torch.no_grad()
def reconstruct(model: VQAutoencoder, images: np.ndarray, device, batch_size: int = 64
                ) -> tuple[np.ndarray, np.ndarray]:
    """(reconstructions uint8 NHWC, token indices (N, h, w[, levels]))."""
    model.eval()
    recons, tokens = [], []
    for x in input_batches(images, device, batch_size):
        x_hat, out = model(x)
        recons.append(output_to_images(x_hat).cpu().numpy())
        tokens.append(out.indices.cpu().numpy())
    return np.concatenate(recons), np.concatenate(tokens)

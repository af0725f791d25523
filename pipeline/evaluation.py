"""Tokenizer evaluation on the validation split: reconstruction metrics and code statistics.

rFID (clean-fid with the offline InceptionV3), LPIPS (offline AlexNet/VGG), SSIM and PSNR
(scikit-image), MSE, codebook usage (fraction of codes used on the split), perplexity,
bits per pixel and distortion per bit (see pipeline/metrics.py for the definitions).
"""
from __future__ import annotations

import numpy as np
import torch

from . import metrics
from .images import images_to_input, output_to_images
from .models.autoencoder import VQAutoencoder


@torch.no_grad()
def reconstruct(model: VQAutoencoder, images: np.ndarray, device, batch_size: int = 64
                ) -> tuple[np.ndarray, np.ndarray]:
    """(reconstructions uint8 NHWC, token indices (N, h, w[, levels])) for uint8 NHWC images."""
    model.eval()
    recons, tokens = [], []
    for s in range(0, len(images), batch_size):
        x = images_to_input(torch.tensor(np.asarray(images[s:s + batch_size]), device=device))
        x_hat, out = model(x)
        recons.append(output_to_images(x_hat).cpu().numpy())
        tokens.append(out.indices.cpu().numpy())
    return np.concatenate(recons), np.concatenate(tokens)


def reconstruction_metrics(model: VQAutoencoder, images: np.ndarray, *, device, batch_size: int = 64,
                           lpips_net: str = "alex") -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics dict, reconstructions and tokens for ``images`` (uint8 NHWC)."""
    recon, tokens = reconstruct(model, images, device, batch_size)
    k = model.quantizer.codebook_size
    levels = tokens.shape[3] if tokens.ndim == 4 else 1
    mse = float(np.mean(((recon.astype(np.float64) - images.astype(np.float64)) / 255.0) ** 2))
    bpp = metrics.bits_per_pixel(tokens.shape[1:3], images.shape[1:3], k, levels)
    out = {
        "rfid": metrics.fid(images, recon, device=device, batch_size=batch_size),
        "lpips": float(np.mean(metrics.lpips_distance(images, recon, net=lpips_net, device=device,
                                                      batch_size=batch_size))),
        "ssim": float(np.mean(metrics.ssim(images, recon))),
        "psnr": float(np.mean(metrics.psnr(images, recon))),
        "mse": mse,
        "codebook_usage": metrics.codebook_usage(tokens, k),
        "perplexity": metrics.perplexity(tokens, k),
        "bits_per_pixel": bpp,
        "distortion_per_bit": metrics.distortion_per_bit(mse, bpp),
        "num_images": int(len(images)),
    }
    return out, recon, tokens

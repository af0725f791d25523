"""Tokenizer evaluation on the validation split: reconstruction metrics and code statistics,
and the generation metrics of the prior.

rFID (clean-fid with the offline InceptionV3), LPIPS (offline AlexNet/VGG), SSIM and PSNR
(scikit-image), MSE, codebook usage (fraction of codes used on the split), perplexity,
bits per pixel and distortion per bit (see metrics.py for the definitions);
gFID of the prior's samples against the validation images and the prior's validation
bits per token.
"""
from __future__ import annotations

import numpy as np

from ..models.autoencoder import VQAutoencoder
from ..models.inference import reconstruct
from . import metrics


def reconstruction_metrics(model: VQAutoencoder, images: np.ndarray, *, device, batch_size: int = 64,
                           lpips_net: str = "alex", fid_reference: np.ndarray | None = None
                           ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics dict, reconstructions and tokens for ``images`` (uint8 NHWC).

    ``fid_reference``: the FID features of ``images`` when the caller already has them
    (:func:`pipeline.evaluation.metrics.fid_features`), so they are not computed twice."""
    recon, tokens = reconstruct(model, images, device, batch_size)
    if fid_reference is None:
        fid_reference = metrics.fid_features(images, device=device, batch_size=batch_size)
    k = model.quantizer.codebook_size
    levels = tokens.shape[3] if tokens.ndim == 4 else 1
    mse = metrics.mse(images, recon)
    bpp = metrics.bits_per_pixel(tokens.shape[1:3], images.shape[1:3], k, levels)
    out = {
        "rfid": metrics.fid_from_features(fid_reference,
                                          metrics.fid_features(recon, device=device, batch_size=batch_size)),
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


def generation_metrics(samples: np.ndarray, fid_reference: np.ndarray, prior_report: dict, *, device,
                       batch_size: int = 64, max_samples: int = 0) -> dict[str, float | int | str | None]:
    """Generation FID of the prior's decoded samples against the reference features (the
    validation images), and the prior's numbers from train_prior's report.

    gfid uses the first ``max_samples`` samples (0: all). Without a prior (train_prior.steps
    0) or without samples, gfid and bits_per_token are None and ``prior_note`` says why.
    """
    out: dict[str, float | int | str | None] = {
        "bits_per_token": prior_report.get("val_bits_per_token"),
        "token_entropy_bits": prior_report.get("token_entropy_bits"),
        "gfid": None,
        "gfid_num_samples": 0,
    }
    if prior_report.get("val_bits_per_token") is None:
        out["prior_note"] = prior_report.get("note") or "no prior was trained"
        return out
    n = len(samples) if not max_samples else min(max_samples, len(samples))
    if n < 2:
        out["prior_note"] = f"gfid needs at least 2 prior samples, train_prior made {len(samples)}"
        return out
    feats = metrics.fid_features(samples[:n], device=device, batch_size=batch_size)
    out["gfid"] = metrics.fid_from_features(fid_reference, feats)
    out["gfid_num_samples"] = n
    return out

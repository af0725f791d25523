"""The numbers the evaluate stage reports.

Image inputs are uint8 numpy arrays ``(N, H, W, 3)`` (RGB) unless said otherwise; per-image
metrics return an ``(N,)`` array, set metrics a float. The networks come from
:mod:`pipeline.evaluation.nets` and are loaded offline.

- :func:`fid` - Fréchet Inception Distance (Heusel et al. 2017) computed as clean-fid does
  in ``mode="clean"`` (Parmar et al. 2022): PIL bicubic resize to 299x299 in float, then the
  TF-FID InceptionV3 pool3 features, then the Fréchet distance (evaluated exactly, without
  a matrix square root).
- :func:`lpips_distance` - LPIPS v0.1 (Zhang et al. 2018), AlexNet or VGG16 trunk.
- :func:`ssim`, :func:`psnr` - scikit-image's SSIM (Wang et al. 2004) and PSNR.
- :func:`codebook_usage`, :func:`perplexity`, :func:`bits_per_pixel`,
  :func:`distortion_per_bit` - codebook and rate statistics of a VQ tokenizer.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ..images import images_to_input
from .nets import fid_feature_fn, load_lpips

# Smallest image side each LPIPS backbone accepts (smaller images are upsampled to it).
LPIPS_MIN_SIDE = {"alex": 32, "vgg": 16}

__all__ = [
    "fid",
    "fid_features",
    "fid_from_features",
    "lpips_distance",
    "ssim",
    "mse",
    "psnr",
    "codebook_usage",
    "perplexity",
    "bits_per_pixel",
    "distortion_per_bit",
]


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be a uint8 array (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def _check_pair(images_a: np.ndarray, images_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images_a, images_b = _check_images(images_a, "images_a"), _check_images(images_b, "images_b")
    if images_a.shape != images_b.shape:
        raise ValueError(f"paired metrics need equal shapes, got {images_a.shape} and {images_b.shape}")
    return images_a, images_b


# --------------------------------------------------------------------------------------- FID


def fid_features(images: np.ndarray, *, device: str | torch.device = "cpu", batch_size: int = 32) -> np.ndarray:
    """InceptionV3 pool3 features ``(N, 2048)`` float32, as clean-fid's ``mode="clean"`` computes them.

    Each image goes through ``cleanfid.resize.build_resizer("clean")`` (PIL bicubic to 299x299
    per channel in float32, no quantisation) and then ``cleanfid.fid.get_batch_features``
    with the offline extractor - the same steps ``cleanfid.fid.compute_fid`` applies to a
    folder of PNGs, minus the file round trip. Cache the result for a fixed reference set.
    """
    # clean-fid imports torchvision and scipy (~2 s); callers that only want the codebook
    # statistics below should not pay for it.
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    images = _check_images(images)
    resize = build_resizer("clean")
    extract = fid_feature_fn(device)
    feats = [np.empty((0, 2048), np.float32)]
    for start in range(0, len(images), batch_size):
        batch = np.stack([resize(im) for im in images[start:start + batch_size]])
        batch = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
        feats.append(get_batch_features(batch, extract, torch.device(device)))
    return np.concatenate(feats)


def reference_fid_features(images: np.ndarray, *, device: str | torch.device = "cpu", batch_size: int = 32,
                           cache_dir: str | None = None) -> np.ndarray:
    """:func:`fid_features` of a reference set, kept in ``cache_dir`` (default: the folder
    ``$NSVQ_FID_CACHE`` names; unset: no cache) under a key of the images' bytes, the feature
    network, the batch size and the device type, so the cells of a study, each in its own copy
    of the repository, compute the validation split's features once. A hit returns the array a
    miss computed (on one machine the features are deterministic), so results do not change."""
    import hashlib
    import os

    from .nets import FID_SHA256

    cache_dir = cache_dir or os.environ.get("NSVQ_FID_CACHE")
    if not cache_dir:
        return fid_features(images, device=device, batch_size=batch_size)
    images = _check_images(images)
    key = hashlib.sha256(np.ascontiguousarray(images).data)
    key.update(f"{images.shape} {FID_SHA256} {batch_size} {torch.device(device).type}".encode())
    path = os.path.join(cache_dir, key.hexdigest()[:32] + ".npy")
    if os.path.exists(path):
        return np.load(path)
    feats = fid_features(images, device=device, batch_size=batch_size)
    from ..atomic import atomic_path

    with atomic_path(path) as tmp:       # concurrent cells may write the same entry: rename wins
        with open(tmp, "wb") as f:
            np.save(f, feats)
    return feats


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (at least two rows each).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` with ``np.cov``'s unbiased
    covariances: the quantity ``cleanfid.fid.fid_from_feats`` returns, computed exactly
    without ``scipy.linalg.sqrtm``, which takes 15-60 s for 2048-d features on a 2-core CPU.
    With ``S = A^T A`` (``A`` the centred features over ``sqrt(n - 1)``), the eigenvalues of
    ``S_a S_b`` are real and non-negative, and the non-zero ones are the squared singular
    values of ``A_a A_b^T``; so the trace term is that small matrix's nuclear norm, or, with
    more rows than dimensions, a symmetric eigenproblem in feature space.

    With fewer rows than feature dimensions the covariances are singular; FID is still well
    defined but biased by the sample size, so compare FIDs only between sets of equal size.
    """
    fa, fb = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or min(len(fa), len(fb)) < 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"features must be (N >= 2, D) with one D, got {fa.shape} and {fb.shape}")
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    a = (fa - mu_a) / math.sqrt(len(fa) - 1)
    b = (fb - mu_b) / math.sqrt(len(fb) - 1)
    if max(len(a), len(b)) <= a.shape[1]:
        tr_covmean = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:
        # S_a S_b is similar to the symmetric S_a^(1/2) S_b S_a^(1/2).
        w, v = np.linalg.eigh(a.T @ a)
        root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ (b.T @ b) @ root_a), 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2 * tr_covmean)


def fid(images_a: np.ndarray, images_b: np.ndarray, *, device: str | torch.device = "cpu",
        batch_size: int = 32) -> float:
    """Clean-FID between two image sets (sizes may differ; at least two images each).

    Equals ``cleanfid.fid.compute_fid(dir_a, dir_b, mode="clean",
    custom_feat_extractor=fid_feature_fn(device))`` on the same images saved as PNG.
    """
    return fid_from_features(fid_features(images_a, device=device, batch_size=batch_size),
                             fid_features(images_b, device=device, batch_size=batch_size))


# ------------------------------------------------------------------------------------- LPIPS


def lpips_distance(images_a: np.ndarray, images_b: np.ndarray, *, net: str = "alex",
                   device: str | torch.device = "cpu", batch_size: int = 32) -> np.ndarray:
    """Per-image LPIPS v0.1 distance ``(N,)`` float32.

    Images are fed as the official ``lpips`` scripts do (``lpips.im2tensor``): RGB, NCHW,
    scaled to [-1, 1], at their own resolution. The one exception: images smaller than the
    backbone accepts (AlexNet's strided conv and two pools need a 31-pixel side, VGG's four
    pools 16) are upsampled bilinearly to that side first; the official code would fail there.
    """
    images_a, images_b = _check_pair(images_a, images_b)
    model = load_lpips(net, device)
    min_side = LPIPS_MIN_SIDE[net]

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        # A copy rather than from_numpy: inputs may be read-only (memory-mapped or decoded images).
        t = images_to_input(torch.tensor(x, device=device))
        side = min(t.shape[-2:])
        if side < min_side:
            t = torch.nn.functional.interpolate(t, scale_factor=min_side / side, mode="bilinear",
                                                align_corners=False)
        return t

    out = [np.empty(0, np.float32)]
    with torch.no_grad():
        for start in range(0, len(images_a), batch_size):
            stop = start + batch_size
            d = model(to_tensor(images_a[start:stop]), to_tensor(images_b[start:stop]))
            out.append(d.flatten().cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------------- SSIM / PSNR


def ssim(images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
    """Per-image SSIM ``(N,)``: ``skimage.metrics.structural_similarity(channel_axis=-1, data_range=255)``.

    scikit-image's defaults: 7x7 uniform window, SSIM averaged over the three channels.
    Images must be at least 7 pixels on each side.
    """
    images_a, images_b = _check_pair(images_a, images_b)
    return np.array([structural_similarity(a, b, channel_axis=-1, data_range=255)
                     for a, b in zip(images_a, images_b, strict=True)], dtype=np.float64)


def mse(images_a: np.ndarray, images_b: np.ndarray) -> float:
    """Mean squared error over every pixel and channel, on intensities scaled to [0, 1]."""
    images_a, images_b = _check_pair(images_a, images_b)
    return float(np.mean(((images_a.astype(np.float64) - images_b.astype(np.float64)) / 255.0) ** 2))


def psnr(images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB ``(N,)``: ``skimage.metrics.peak_signal_noise_ratio(data_range=255)``.

    The MSE is taken over all pixels and channels of one image. Identical images have zero
    MSE and their PSNR is ``inf``; it is returned as such, not capped, so average PSNR over
    a set with ``np.mean`` only when that cannot happen (or report the mean MSE instead).
    """
    images_a, images_b = _check_pair(images_a, images_b)
    # skimage computes 10 * log10(255**2 / 0) for identical images; inf is the intended result.
    with np.errstate(divide="ignore"):
        return np.array([peak_signal_noise_ratio(a, b, data_range=255)
                         for a, b in zip(images_a, images_b, strict=True)], dtype=np.float64)


# -------------------------------------------------------------------------- codebook and rate


def code_counts(indices, codebook_size: int) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    indices = np.asarray(indices).ravel()
    if indices.size == 0:
        raise ValueError("indices is empty")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    if indices.min() < 0 or indices.max() >= codebook_size:
        raise ValueError(f"indices must lie in [0, {codebook_size}), got [{indices.min()}, {indices.max()}]")
    return np.bincount(indices, minlength=codebook_size)


def codebook_usage(indices, codebook_size: int) -> float:
    """Fraction of the ``codebook_size`` codes that occur at least once in ``indices``.

    ``indices`` is an integer numpy array or torch tensor of any shape.
    """
    return float(np.count_nonzero(code_counts(indices, codebook_size)) / codebook_size)


def perplexity(indices, codebook_size: int) -> float:
    """Codebook perplexity ``exp(H(p))``, ``p`` the empirical code frequencies in ``indices``.

    H is in nats (``-sum p log p`` over used codes), so the value ranges from 1 (a single
    code) to ``codebook_size`` (uniform use) - the effective number of codes in use, as
    reported for VQ-VAE-style models.
    """
    counts = code_counts(indices, codebook_size)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def bits_per_pixel(token_grid_hw: tuple[int, int], image_hw: tuple[int, int], codebook_size: int,
                   levels: int = 1) -> float:
    """Nominal rate in bits per pixel: ``tokens * levels * log2(codebook_size) / pixels``.

    ``token_grid_hw`` is the latent grid (h, w) of one image, ``levels`` the number of
    codes per grid position (e.g. residual-VQ depth), ``image_hw`` the image (H, W). This is
    the fixed-length code's rate, an upper bound on what entropy coding would need.
    """
    (h, w), (height, width) = token_grid_hw, image_hw
    if min(h, w, height, width, levels) < 1 or codebook_size < 2:
        raise ValueError("grid, image and levels must be positive and codebook_size >= 2")
    return h * w * levels * math.log2(codebook_size) / (height * width)


def distortion_per_bit(mse: float, bpp: float) -> float:
    """Distortion per bit: MSE on pixels scaled to [0, 1] divided by bits per pixel.

    ``mse`` is the mean squared error between images with values in [0, 1] (uint8 / 255),
    ``bpp`` the rate from :func:`bits_per_pixel`. Lower is better: less distortion for each
    bit spent on a pixel.
    """
    if bpp <= 0:
        raise ValueError(f"bpp must be positive, got {bpp}")
    return float(mse) / bpp

"""Decoding one image file into the project's convention: 8-bit RGB, upright, short side
resized and centre-cropped to a square (numpy + Pillow only: prepare's worker processes
import nothing else)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

# Pillow's decoders report bad files with many exception types, not just OSError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                 Image.DecompressionBombError)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    # 65535 / 257 == 255 exactly: a full-range 16-bit value maps to full-range 8-bit.
    return np.rint(a / 257.0).astype(np.uint8)


def _scale_wide(im: Image.Image) -> Image.Image:
    """An "I" (int32) or "F" (float32) image as "L".

    Integers within [0, 65535] are 16-bit data in a 32-bit container (what Pillow gives
    for several 16-bit formats) and are scaled like 16-bit; floats within [0, 1] are
    normalized intensities and are multiplied by 255. Anything else (negative values,
    HDR floats, ...) is stretched linearly from its min..max to 0..255. NaN becomes the
    minimum.
    """
    a = np.asarray(im, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise ValueError(f"mode {im.mode} image has no finite pixel values")
    lo, hi = float(finite.min()), float(finite.max())
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        return Image.fromarray(_scale_16bit(a))
    if im.mode == "F" and lo >= 0 and hi <= 1:
        return Image.fromarray(np.rint(a * 255).astype(np.uint8))
    scaled = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image (current frame) as upright 8-bit RGB; transparency over white.

    Pillow's own ``convert`` clips 16-bit grayscale to 255, so high-bit-depth modes are
    scaled here. Pillow has no 16-bit colour mode: it decodes 16-bit RGB(A) PNG/TIFF to
    8 bits itself by keeping the high byte (floor(v / 256), within one level of v / 257).
    """
    im = ImageOps.exif_transpose(im)
    if im.mode in _16BIT_MODES:
        im = Image.fromarray(_scale_16bit(np.asarray(im)))
    elif im.mode in ("I", "F"):
        im = _scale_wide(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return im.convert("RGB")


def resize(im: Image.Image, size: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """``im`` (or its ``box``) resized to size x size with an antialiasing filter, as uint8 HWC."""
    # reducing_gap: shrink by an integer factor first when far above the target (much
    # faster on big images, visually identical to a full Lanczos pass).
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0))


def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8: first frame, upright, RGB, short side
    resized to ``size`` and centre-cropped. Raises one of Pillow's decode errors."""
    with Image.open(path) as im:
        # JPEG only: decode at a reduced DCT scale that still covers size x size.
        im.draft(None, (size, size))
        im = to_rgb(im)
    w, h = im.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return resize(im, size, box)


def decode_files(root: str, relpaths: list[str], size: int) -> list[np.ndarray | str]:
    """:func:`load_rgb` of each ``root/relpath``: the image, or for an unreadable file the
    reason as a string (relative path in place of the absolute one: the manifest must be
    reproducible). The unit of work of prepare's worker processes."""
    out: list[np.ndarray | str] = []
    for rel in relpaths:
        path = str(Path(root) / rel)
        try:
            out.append(load_rgb(path, size))
        except DECODE_ERRORS as e:
            out.append(f"{type(e).__name__}: {e}".replace(path, rel))
    return out

"""The project's image convention: uint8 (B, H, W, 3) on disk and in metrics, float
(B, 3, H, W) in [-1, 1] inside the models (the decoder ends in tanh)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) images -> float (B, 3, H, W) in [-1, 1], the model's input range."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def output_to_images(x: torch.Tensor) -> torch.Tensor:
    """Model output (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), clamped and rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def input_batches(images: np.ndarray, device, batch_size: int, rows: slice | None = None) -> Iterator[torch.Tensor]:
    """Model inputs for consecutive batches of uint8 NHWC images, of ``rows`` (default all; a
    memmap is read one batch at a time; each batch is copied, since memmaps may be read-only)."""
    first, last, _ = (rows or slice(None)).indices(len(images))
    for start in range(first, last, batch_size):
        yield images_to_input(torch.tensor(np.asarray(images[start:min(start + batch_size, last)]), device=device))

"""The project's image convention: uint8 (B, H, W, 3) on disk and in metrics, float
(B, 3, H, W) in [-1, 1] inside the models (the decoder ends in tanh)."""
from __future__ import annotations

import torch


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) images -> float (B, 3, H, W) in [-1, 1], the model's input range."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def output_to_images(x: torch.Tensor) -> torch.Tensor:
    """Model output (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), clamped and rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

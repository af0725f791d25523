"""The patch discriminator of VQGAN (taming-transformers' ``NLayerDiscriminator``, the
PatchGAN of pix2pix, Isola et al. 2017).

    conv 4x4 / 2 (C) -> LeakyReLU(0.2)
    (layers - 1) x [conv 4x4 / 2 (C * min(2^n, 8)), BatchNorm, LeakyReLU(0.2)]
    conv 4x4 / 1 (C * min(2^layers, 8)), BatchNorm, LeakyReLU(0.2)
    conv 4x4 / 1 -> 1 logit per patch

An S x S image gives an (S / 2^layers - 2)^2 grid of logits, each judging one receptive
field (34 px for 2 layers, 70 px for 3). Weights start as in VQGAN: convs N(0, 0.02),
norm scales N(1, 0.02), biases 0.
"""
from __future__ import annotations

import torch
from torch import nn


def patch_grid(image_size: int, layers: int) -> int:
    """Side of the logit grid for square ``image_size`` inputs (< 1: too deep for the image)."""
    return (image_size >> layers) - 2


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1 or channels < 1:
            raise ValueError(f"layers and channels must be >= 1, got {layers} and {channels}")
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(channels * prev, channels * mult, 4, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2 ** layers, 8)
        seq += [nn.Conv2d(channels * prev, channels * mult, 4, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2),
                nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*seq)
        self.config = {"in_channels": in_channels, "channels": channels, "layers": layers}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [-1, 1] -> (B, 1, s, s) logits, s = :func:`patch_grid`."""
        return self.net(x)

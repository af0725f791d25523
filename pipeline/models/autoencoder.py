"""The convolutional VQ-VAE of the NS-VQ paper (its CelebA model, after PyTorch-VAE's VQVAE).

Encoder: log2(f) strided 4x4 convs (stride 2) with LeakyReLU, a 3x3 conv, a residual stack,
then a 1x1 projection to the code dimension D. Decoder mirrors it: 3x3 conv from D, residual
stack, log2(f) transposed 4x4 convs, tanh. Images live in [-1, 1].

Widths: the last (deepest) level has ``hidden_channels``; each shallower level halves it
(at least 16), so f = 4 with hidden 128 gives 64 -> 128 channels.
Residual block: x + conv1x1(relu(conv3x3(relu(x)))) with ``res_channels`` in the middle.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the continuous autoencoder (pretrain) must not import the quantizers
    from ..quantizers.base import Quantizer, QuantizerOutput


def level_widths(hidden_channels: int, downsample: int) -> list[int]:
    levels = int(math.log2(downsample))
    return [max(16, hidden_channels >> (levels - 1 - i)) for i in range(levels)]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, res_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(res_channels, channels, 1, bias=False),
        )

    def forward(self, x):
        return x + self.block(x)


def residual_stack(channels: int, res_channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(channels, res_channels) for _ in range(n)], nn.ReLU())


class Encoder(nn.Module):
    def __init__(self, hidden_channels=128, res_channels=32, num_res_blocks=2, downsample=4, code_dim=64):
        super().__init__()
        layers, c_in = [], 3
        for c in level_widths(hidden_channels, downsample):
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.LeakyReLU()]
            c_in = c
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.LeakyReLU(),
                   residual_stack(c_in, res_channels, num_res_blocks),
                   nn.Conv2d(c_in, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, hidden_channels=128, res_channels=32, num_res_blocks=2, downsample=4, code_dim=64):
        super().__init__()
        widths = level_widths(hidden_channels, downsample)[::-1]
        layers = [nn.Conv2d(code_dim, widths[0], 3, padding=1), nn.LeakyReLU(),
                  residual_stack(widths[0], res_channels, num_res_blocks)]
        for c_in, c_out in zip(widths, widths[1:] + [3]):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            layers.append(nn.LeakyReLU() if c_out != 3 else nn.Tanh())
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the output conv (the adaptive GAN weight balances gradients here)."""
        return self.net[-2].weight

    def forward(self, z):
        return self.net(z)


class VQAutoencoder(nn.Module):
    """Encoder -> quantizer -> decoder; ``quantizer=None`` is the continuous autoencoder of pretrain."""

    def __init__(self, hidden_channels=128, res_channels=32, num_res_blocks=2, downsample=4, code_dim=64,
                 quantizer: Quantizer | None = None):
        super().__init__()
        kw = dict(hidden_channels=hidden_channels, res_channels=res_channels, num_res_blocks=num_res_blocks,
                  downsample=downsample, code_dim=code_dim)
        self.config = dict(kw)
        self.encoder = Encoder(**kw)
        self.decoder = Decoder(**kw)
        self.quantizer = quantizer

    @classmethod
    def from_params(cls, mp, quantizer: Quantizer | None = None) -> "VQAutoencoder":
        return cls(mp.hidden_channels, mp.res_channels, mp.num_res_blocks, mp.downsample, mp.code_dim,
                   quantizer=quantizer)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        return self.quantizer(z)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Images from token grids (B, H, W) via the quantizer's lookup."""
        codes = self.quantizer.lookup(indices)             # (B, H, W, D)
        return self.decode(codes.permute(0, 3, 1, 2).contiguous())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput | None]:
        """Reconstruction and the quantizer output (None for the continuous autoencoder)."""
        z = self.encode(x)
        if self.quantizer is None:
            return self.decode(z), None
        out = self.quantizer(z)
        return self.decode(out.z_q), out

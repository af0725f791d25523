"""``ns_vqvae``: the convolutional VQ-VAE of the NS-VQ paper (its CelebA model, Table 1, after
PyTorch-VAE's VQVAE).

Encoder: log2(f) strided 4x4 convs (stride 2) with LeakyReLU, a 3x3 conv, a residual stack,
then a 1x1 projection to the code dimension D. Decoder mirrors it: 3x3 conv from D, residual
stack, log2(f) transposed 4x4 convs, tanh. Images live in [-1, 1].

Widths: the last (deepest) level has ``hidden_channels``; each shallower level halves it
(at least 16), so f = 4 with hidden 128 gives 64 -> 128 channels.
Residual block: x + conv1x1(relu(conv3x3(relu(x)))) with ``res_channels`` in the middle.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import NSVQVAEOptions



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
    def __init__(self, o: NSVQVAEOptions, code_dim: int, image_size: int | None = None):
        super().__init__()
        layers, c_in = [], 3
        for c in level_widths(o.hidden_channels, o.downsample):
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.LeakyReLU()]
            c_in = c
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.LeakyReLU(),
                   residual_stack(c_in, o.res_channels, o.num_res_blocks),
                   nn.Conv2d(c_in, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, o: NSVQVAEOptions, code_dim: int, image_size: int | None = None):
        super().__init__()
        widths = level_widths(o.hidden_channels, o.downsample)[::-1]
        layers = [nn.Conv2d(code_dim, widths[0], 3, padding=1), nn.LeakyReLU(),
                  residual_stack(widths[0], o.res_channels, o.num_res_blocks)]
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

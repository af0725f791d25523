"""``ns_imagenet``: the NS-VQ paper's ImageNet network (its Supplementary 12, a Taming-style
three-stage residual encoder/decoder trained with MSE + LPIPS).

As the supplementary's table gives it: three stride-2 4x4 conv stages 3 -> 128 -> 256 -> 512
(f = 8), each followed by 2 residual blocks, a 3x3 conv to the code dimension D and a 1x1
quant_conv; the decoder mirrors it: 1x1 post_quant_conv, a 3x3 conv D -> 512, per stage 2
residual blocks and a stride-2 4x4 transposed conv (512 -> 256 -> 128 -> 128), then a 3x3 conv
to RGB and tanh.

What the table leaves open, read here as Taming does it: the residual blocks are VQGAN's
(GroupNorm + swish, two 3x3 convs; pipeline/models/vqgan.py), and a swish follows each strided
and transposed conv.
"""
from __future__ import annotations


import torch
from torch import nn

from .registry import NSImageNetOptions
from .vqgan import ResnetBlock, swish


class _Swish(nn.Module):
    def forward(self, x):
        return swish(x)


def _blocks(c: int, o: NSImageNetOptions) -> list[nn.Module]:
    return [ResnetBlock(c, c, 0.0, o.norm_groups) for _ in range(o.num_res_blocks)]


class Encoder(nn.Module):
    def __init__(self, o: NSImageNetOptions, code_dim: int, image_size: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in o.channels:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), _Swish(), *_blocks(c, o)]
            c_in = c
        layers.append(nn.Conv2d(c_in, code_dim, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.quant_conv = nn.Conv2d(code_dim, code_dim, 1)

    def forward(self, x):
        return self.quant_conv(self.net(x))


class Decoder(nn.Module):
    def __init__(self, o: NSImageNetOptions, code_dim: int, image_size: int | None = None):
        super().__init__()
        widths = o.channels[::-1]
        self.post_quant_conv = nn.Conv2d(code_dim, code_dim, 1)
        layers: list[nn.Module] = [nn.Conv2d(code_dim, widths[0], 3, padding=1)]
        for c, c_next in zip(widths, widths[1:] + widths[-1:]):
            layers += [*_blocks(c, o), nn.ConvTranspose2d(c, c_next, 4, stride=2, padding=1), _Swish()]
        layers += [nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.net[-2].weight

    def forward(self, z):
        return self.net(self.post_quant_conv(z))

"""``vqgan``: the Taming Transformers VQGAN encoder/decoder (Esser et al. 2021; taming-transformers'
``taming/modules/diffusionmodules/model.py``), rewritten here with the same structure and
module names (``conv_in``, ``down[i].block[j]``, ``down[i].attn[j]``, ``down[i].downsample``,
``mid.block_1``, ``mid.attn_1``, ``mid.block_2``, ``norm_out``, ``conv_out``), plus the 1x1
``quant_conv`` / ``post_quant_conv`` of taming's ``VQModel`` (here inside encoder and decoder).

Encoder: 3x3 conv to ``ch``; per level i (channel width ch * ch_mult[i]) ``num_res_blocks``
residual blocks, each followed by self-attention when the level's side is in
``attn_resolutions``; a stride-2 conv between levels (f = 2^(len(ch_mult) - 1)); a middle
block (residual, attention, residual); GroupNorm, swish, 3x3 conv to ``z_channels``; 1x1
quant_conv to the code dimension. Decoder mirrors it with ``num_res_blocks + 1`` blocks per
level and nearest-neighbour x2 upsampling + 3x3 conv; its output is the raw conv (no tanh, as
taming; reconstructions are clamped to [-1, 1] when turned into images).

Residual block: x + conv3x3(dropout(swish(GN(conv3x3(swish(GN(x))))))), a 1x1 shortcut when
the width changes. Attention: single-head softmax(q k^T / sqrt(C)) v over the h*w positions,
q, k, v and the output projection 1x1 convs, added to x. GroupNorm: ``norm_groups`` groups,
eps 1e-6 (taming: 32 groups).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .registry import VQGANOptions



def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q, k, v = (m(h).reshape(b, 1, c, hh * ww).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)          # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero-padding right and bottom by one (taming's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: residual blocks, each followed by attention when the level has it."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)

    def forward(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, o: VQGANOptions):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, o.dropout, o.norm_groups)
        self.attn_1 = AttnBlock(channels, o.norm_groups) if o.mid_attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, o.dropout, o.norm_groups)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


def _needs_size(o: VQGANOptions, image_size: int | None) -> int:
    if image_size is None:
        if o.attn_resolutions:
            raise ValueError("the vqgan architecture places attention by feature-map side: build it with image_size")
        return 0
    return image_size


class Encoder(nn.Module):
    def __init__(self, o: VQGANOptions, code_dim: int, image_size: int | None = None):
        super().__init__()
        side = _needs_size(o, image_size)
        z_channels = o.z_channels or code_dim
        self.conv_in = nn.Conv2d(3, o.ch, 3, padding=1)
        self.down = nn.ModuleList()
        c_in = o.ch
        for i, mult in enumerate(o.ch_mult):
            c_out = o.ch * mult
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, o.dropout, o.norm_groups)
                      for j in range(o.num_res_blocks)]
            attn = [AttnBlock(c_out, o.norm_groups) for _ in blocks] if side in o.attn_resolutions else []
            level = _Level(blocks, attn)
            if i != len(o.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                side //= 2
            self.down.append(level)
            c_in = c_out
        self.mid = _Middle(c_in, o)
        self.norm_out = group_norm(c_in, o.norm_groups)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, code_dim, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.conv_out(swish(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class Decoder(nn.Module):
    def __init__(self, o: VQGANOptions, code_dim: int, image_size: int | None = None):
        super().__init__()
        side = _needs_size(o, image_size) // o.factor
        z_channels = o.z_channels or code_dim
        self.post_quant_conv = nn.Conv2d(code_dim, z_channels, 1)
        c_in = o.ch * o.ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c_in, 3, padding=1)
        self.mid = _Middle(c_in, o)
        up: list[nn.Module] = []
        for i in reversed(range(len(o.ch_mult))):
            c_out = o.ch * o.ch_mult[i]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, o.dropout, o.norm_groups)
                      for j in range(o.num_res_blocks + 1)]
            attn = [AttnBlock(c_out, o.norm_groups) for _ in blocks] if side in o.attn_resolutions else []
            level = _Level(blocks, attn)
            if i != 0:
                level.upsample = Upsample(c_out)
                side *= 2
            up.insert(0, level)       # up[i] is level i, as in taming
            c_in = c_out
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(c_in, o.norm_groups)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, z):
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))

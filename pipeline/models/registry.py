"""The architecture registry: each ``model.arch``'s name, encoder/decoder classes and options, written once.

``ARCHS`` maps a ``model.arch`` name to an :class:`Arch`: its module (loaded on first use, so
params validation needs no torch) and its options dataclass (the ``model.<arch>`` section of
params.yaml, defaults and bounds in one place). Every options class gives the downsampling
``factor`` and may check its shapes against ``data.image_size`` (``check_image_size``).

Adding an architecture: ``pipeline/models/<name>.py`` with ``Encoder(options, code_dim,
image_size)`` and ``Decoder(...)`` (the decoder's ``last_layer``: its output conv weight, for
the adaptive GAN weight); here its options dataclass and one ``ARCHS`` line; params.yaml its
``model.<name>`` section (DVC reads the selected architecture's section); a test.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from ..configbase import ConfigError, fail, param


@dataclass
class NSVQVAEOptions:
    """The NS-VQ paper's CelebA VQ-VAE (strided convs, residual stack, 1x1 to D). The defaults are
    smaller than its Table 1 (widths 128/256, six full-width residual layers) to fit the demo run
    on 2 CPU cores; the ns_vq_celebahq256 preset sets Table 1's. Table 1's LeakyReLU after the
    1x1 projection is not modelled (the projection is linear)."""
    hidden_channels: int = param(128, ge=1, doc="width of the deepest level (each shallower level halves it; "
                                                "Table 1: 256)")
    res_channels: int = param(32, ge=1, doc="middle width of a residual block (Table 1: full width, 256)")
    num_res_blocks: int = param(2, ge=0, doc="residual blocks (Table 1: 6)")
    downsample: int = param(4, ge=2, doc="spatial downsampling factor, a power of two")

    def check(self) -> None:
        if self.downsample & (self.downsample - 1):
            fail(self, "downsample", "must be a power of two")

    @property
    def factor(self) -> int:
        return self.downsample


@dataclass
class NSImageNetOptions:
    """The NS-VQ paper's Supplementary 12 network (defaults: its table)."""
    channels: list[int] = param(default_factory=lambda: [128, 256, 512],
                                doc="width after each stride-2 stage; f = 2 ** len(channels)")
    num_res_blocks: int = param(2, ge=0, doc="residual blocks after each stage")
    norm_groups: int = param(32, ge=1, doc="GroupNorm groups of the residual blocks; every width must divide by it")

    def check(self) -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            fail(self, "channels", "must be a non-empty list of positive integers")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            fail(self, "norm_groups", f"must divide every stage's width ({bad[0]} does not)")

    @property
    def factor(self) -> int:
        return 2 ** len(self.channels)


@dataclass
class VQGANOptions:
    """The Taming VQGAN (defaults: taming-transformers' configs/imagenet_vqgan.yaml, f16)."""
    ch: int = param(128, ge=1, doc="base width; level i has ch * ch_mult[i] channels")
    ch_mult: list[int] = param(default_factory=lambda: [1, 1, 2, 2, 4],
                               doc="width multiplier per level; f = 2 ** (len - 1)")
    num_res_blocks: int = param(2, ge=1, doc="residual blocks per encoder level (decoder: one more)")
    attn_resolutions: list[int] = param(default_factory=lambda: [16],
                                        doc="feature-map sides (pixels) whose levels get self-attention")
    dropout: float = param(0.0, ge=0, lt=1, doc="dropout inside the residual blocks")
    z_channels: int = param(0, ge=0, doc="encoder output width before quant_conv; 0: the code dimension")
    mid_attn: bool = param(True, doc="self-attention in the middle blocks (taming: always)")
    norm_groups: int = param(32, ge=1, doc="GroupNorm groups (taming: 32); every width must divide by it")

    def check(self) -> None:
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            fail(self, "ch_mult", "must be a non-empty list of positive integers")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % self.norm_groups]
        if bad:
            fail(self, "norm_groups", f"must divide every level's width (ch * ch_mult: {bad[0]} does not)")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def check_image_size(self, image_size: int, key: str) -> None:
        sides = [image_size >> i for i in range(len(self.ch_mult))]
        for r in self.attn_resolutions:
            if r not in sides:
                raise ConfigError(f"{key}.attn_resolutions: {r} is not a feature-map side of this encoder at "
                                  f"data.image_size {image_size} (its levels have sides {sides})")


@dataclass(frozen=True)
class Arch:
    name: str
    module: str          # pipeline.models.<module>: Encoder and Decoder
    options: type
    doc: str

    def classes(self) -> tuple[type, type]:
        mod = importlib.import_module(f"pipeline.models.{self.module}")
        return mod.Encoder, mod.Decoder


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("ns_vqvae", "ns_vqvae", NSVQVAEOptions, "NS-VQ paper's CelebA VQ-VAE (Table 1)"),
    Arch("ns_imagenet", "ns_imagenet", NSImageNetOptions, "NS-VQ paper's ImageNet network (Supplementary 12)"),
    Arch("vqgan", "vqgan", VQGANOptions, "Taming VQGAN (GroupNorm, swish, attention, channel multipliers)"),
)}


def markdown_table() -> str:
    """The README's architecture table, made from ARCHS."""
    rows = ["| `model.arch` | what it is | options (`model.<arch>`, default) |", "|---|---|---|"]
    for a in ARCHS.values():
        opts = ", ".join(f"{f.name} ({f.default if f.default is not dataclasses.MISSING else f.default_factory()})"
                         for f in dataclasses.fields(a.options))
        rows.append(f"| `{a.name}` | {a.doc} | {opts} |")
    return "\n".join(rows)


TABLE_BEGIN = "<!-- architectures table: made from pipeline/models/registry.py by " \
              "`python -m pipeline.models.registry --readme`; do not edit by hand -->"
TABLE_END = "<!-- end of architectures table -->"


def readme_with_table(text: str) -> str:
    """``text`` (the README) with the part between the table markers replaced by markdown_table()."""
    from ..readme_tables import replace_between

    return replace_between(text, TABLE_BEGIN, TABLE_END, markdown_table())


if __name__ == "__main__":
    from ..readme_tables import main

    main("architectures", TABLE_BEGIN, TABLE_END, markdown_table)

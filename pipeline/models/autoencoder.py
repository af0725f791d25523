"""The VQ autoencoder: an architecture's encoder and decoder (``model.arch``,
pipeline/models/registry.py) around a quantizer. Images live in [-1, 1]."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..configbase import build, to_dict
from .registry import ARCHS

if TYPE_CHECKING:  # the continuous autoencoder (pretrain) must not import the quantizers
    from ..quantizers.base import Quantizer, QuantizerOutput


def model_config(mp) -> dict[str, Any]:
    """The part of a built ``model`` section its architecture reads: arch, code_dim and the
    arch's own options (the other architectures' sections change nothing; dvc.yaml narrows
    the stages' params the same way)."""
    return {"arch": mp.arch, "code_dim": mp.code_dim, mp.arch: to_dict(getattr(mp, mp.arch))}


class VQAutoencoder(nn.Module):
    """Encoder -> quantizer -> decoder; ``quantizer=None`` is the continuous autoencoder of pretrain.

    ``VQAutoencoder(arch, code_dim, quantizer, image_size, **options)``: ``options`` are the
    arch's (``model.<arch>``), validated as params are; ``image_size`` is needed by
    architectures that place layers by feature-map side (vqgan's attention) and is kept with
    the model (``self.image_size``, stored in model files).
    """

    def __init__(self, arch: str = "ns_vqvae", code_dim: int = 64, quantizer: Quantizer | None = None,
                 image_size: int | None = None, **options):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown model.arch {arch!r}; known: {', '.join(ARCHS)}")
        spec = ARCHS[arch]
        opts = build(spec.options, options, f"model.{arch}")
        encoder_cls, decoder_cls = spec.classes()
        self.config = {"arch": arch, "code_dim": code_dim, arch: to_dict(opts)}
        self.image_size = image_size
        self.factor = opts.factor
        self.encoder = encoder_cls(opts, code_dim, image_size)
        self.decoder = decoder_cls(opts, code_dim, image_size)
        self.quantizer = quantizer

    @classmethod
    def from_params(cls, mp, quantizer: Quantizer | None = None, image_size: int | None = None) -> "VQAutoencoder":
        """From a built ``model`` section, or from a model file's config dict (``model_config``)."""
        config = mp if isinstance(mp, dict) else model_config(mp)
        return cls(config["arch"], config["code_dim"], quantizer=quantizer, image_size=image_size,
                   **config[config["arch"]])

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

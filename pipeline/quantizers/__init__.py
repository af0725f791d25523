"""Quantization methods behind one interface (see base.py) and the factory that builds them.

``build_quantizer(params.quantizer, dim)`` turns the params section into a module;
``METHODS`` maps each ``quantizer.method`` name to its class and its options section.
"""
from __future__ import annotations

from .base import Quantizer, QuantizerOutput
from .nsvq import NSVQ
from .replacement import CodeReplacement
from .search import nearest_code
from .vq import VQ

# method name -> (class, name of its options sub-section in params.quantizer or None)
METHODS: dict[str, tuple[type[Quantizer], str | None]] = {
    "vq": (VQ, None),
    "nsvq": (NSVQ, "nsvq"),
}


def build_quantizer(qp, dim: int) -> Quantizer:
    """Build the quantizer named by ``qp.method`` (a QuantizerParams) for latents of width ``dim``."""
    from .. import configbase

    cls, section = METHODS[qp.method]
    options = configbase.to_dict(getattr(qp, section)) if section else {}
    return cls(qp.codebook_size, dim, beta=qp.beta, search_chunk=qp.search_chunk, **options)


__all__ = ["Quantizer", "QuantizerOutput", "CodeReplacement", "nearest_code", "build_quantizer", "METHODS"]

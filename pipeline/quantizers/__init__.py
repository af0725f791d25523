"""Quantization methods behind one interface (see base.py) and the factory that builds them.

``build_quantizer(params.quantizer, dim)`` turns the params section into a module;
``METHODS`` maps each ``quantizer.method`` name to its class and its options section.
``quantizer.levels > 1`` wraps that many independent instances of the method in a
residual VQ (residual.py).

| method           | class               | options section | replaceable | k-means init |
|------------------|---------------------|-----------------|-------------|--------------|
| vq               | VQ                  | -               | yes         | yes          |
| ema              | EMAVQ               | ema             | yes         | yes          |
| fc               | FactorizedVQ        | fc              | yes (code space) | yes (mapped) |
| simvq            | SimVQ               | -               | no          | no           |
| transvq          | TransVQ             | transvq         | no          | no           |
| nsvq             | NSVQ                | nsvq            | yes         | yes          |
| diveq            | DiVeQ               | diveq           | yes         | yes          |
| diveq_detach     | DiVeQDetach         | -               | yes         | yes          |
| sf_diveq         | SFDiVeQ             | sf_diveq        | no          | no (own)     |
| sf_diveq_detach  | SFDiVeQDetach       | sf_diveq        | no          | no (own)     |
| rotation         | RotationVQ          | -               | yes         | yes          |
| gumbel           | GumbelVQ            | gumbel          | no          | yes          |
| noise_sub        | NoiseSubstitutionVQ | -               | yes         | yes          |
"""
from __future__ import annotations

from .base import Quantizer, QuantizerOutput
from .diveq import DiVeQ, DiVeQDetach
from .ema import EMAVQ
from .fc import FactorizedVQ
from .gumbel import GumbelVQ
from .noise_sub import NoiseSubstitutionVQ
from .nsvq import NSVQ
from .replacement import CodeReplacement
from .residual import ResidualVQ
from .rotation import RotationVQ
from .search import nearest_code
from .sf_diveq import SFDiVeQ, SFDiVeQDetach
from .simvq import SimVQ
from .transvq import TransVQ
from .vq import VQ

# method name -> (class, name of its options sub-section in params.quantizer or None)
METHODS: dict[str, tuple[type[Quantizer], str | None]] = {
    "vq": (VQ, None),
    "ema": (EMAVQ, "ema"),
    "fc": (FactorizedVQ, "fc"),
    "simvq": (SimVQ, None),
    "transvq": (TransVQ, "transvq"),
    "nsvq": (NSVQ, "nsvq"),
    "diveq": (DiVeQ, "diveq"),
    "diveq_detach": (DiVeQDetach, None),
    "sf_diveq": (SFDiVeQ, "sf_diveq"),
    "sf_diveq_detach": (SFDiVeQDetach, "sf_diveq"),
    "rotation": (RotationVQ, None),
    "gumbel": (GumbelVQ, "gumbel"),
    "noise_sub": (NoiseSubstitutionVQ, None),
}


def build_quantizer(qp, dim: int) -> Quantizer:
    """Build the quantizer named by ``qp.method`` (a QuantizerParams) for latents of width ``dim``.

    With ``qp.levels > 1`` the result is a :class:`ResidualVQ` of ``levels`` independent
    instances of the method (each its own codebook and state).
    """
    from .. import configbase

    cls, section = METHODS[qp.method]
    options = configbase.to_dict(getattr(qp, section)) if section else {}

    def one() -> Quantizer:
        return cls(qp.codebook_size, dim, beta=qp.beta, search_chunk=qp.search_chunk, **options)

    levels = getattr(qp, "levels", 1)
    return one() if levels == 1 else ResidualVQ([one() for _ in range(levels)])


__all__ = ["Quantizer", "QuantizerOutput", "CodeReplacement", "ResidualVQ", "nearest_code", "build_quantizer",
           "METHODS"]

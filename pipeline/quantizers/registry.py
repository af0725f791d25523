"""The method registry: ``quantizer.method`` name -> class and options section, and the factory."""
from __future__ import annotations

from .base import Quantizer
from .diveq import DiVeQ, DiVeQDetach
from .ema import EMAVQ
from .fc import FactorizedVQ
from .gumbel import GumbelVQ
from .noise_sub import NoiseSubstitutionVQ
from .nsvq import NSVQ
from .residual import ResidualVQ
from .rotation import RotationLossVQ, RotationVQ
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
    "rotation": (RotationVQ, "rotation"),
    "rotation_loss": (RotationLossVQ, None),
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
        return cls(qp.codebook_size, dim, beta=qp.beta, search_chunk=qp.search_chunk,
                   kernel_precision=qp.kernel_precision, **options)

    levels = getattr(qp, "levels", 1)
    return one() if levels == 1 else ResidualVQ([one() for _ in range(levels)])

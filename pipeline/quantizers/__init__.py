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

Importing this package is cheap: the names below load on first use, so code that needs
only the nearest-code search (k-means, metrics) does not import every method.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Quantizer": "base", "QuantizerOutput": "base", "CodeReplacement": "replacement",
    "nearest_code": "search", "ResidualVQ": "residual", "METHODS": "registry", "build_quantizer": "registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

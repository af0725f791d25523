"""Quantization methods behind one interface (base.py), registered in registry.py.

``build_quantizer(params.quantizer, dim)`` turns the params section into a module;
``METHODS`` (registry.py) maps each ``quantizer.method`` name to its class, options and
documentation, and is the one list of methods (the README's method table is made from it).
``quantizer.levels > 1`` wraps that many independent instances of the method in a residual
VQ (residual.py).

Importing this package is cheap: the names below load on first use, so code that needs only
the registry (params validation) or the nearest-code search (k-means, metrics) does not import
every method, and the registry does not import torch.
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

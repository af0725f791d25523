"""Saving and loading autoencoders with the params that built them.

A model file holds ``{"model": ModelParams dict, "quantizer": QuantizerParams dict or None,
"state_dict": ..., "meta": {...}}``, so any stage (or a notebook) can rebuild it without
params.yaml. Files are written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..configbase import build, to_dict
from ..torchio import atomic_save, cpu_state_dict
from .autoencoder import VQAutoencoder


def save_autoencoder(path: str | Path, model: VQAutoencoder, model_params, quantizer_params=None,
                     meta: dict[str, Any] | None = None) -> None:
    atomic_save({"model": to_dict(model_params),
                 "quantizer": to_dict(quantizer_params) if quantizer_params is not None else None,
                 "state_dict": cpu_state_dict(model), "meta": meta or {}}, path)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQAutoencoder, dict]:
    """Rebuild the model stored at ``path``; returns (model in eval mode, the raw file dict)."""
    from ..config import ModelParams, QuantizerParams

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: model file not found (run the stage that writes it first)")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    mp = build(ModelParams, blob["model"], "model")
    quantizer = None
    if blob.get("quantizer") is not None:
        from ..quantizers import build_quantizer

        quantizer = build_quantizer(build(QuantizerParams, blob["quantizer"], "quantizer"), mp.code_dim)
    model = VQAutoencoder.from_params(mp, quantizer)
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), blob

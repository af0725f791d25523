"""Saving and loading autoencoders with the params that built them.

A model file holds ``{"model": the model params its architecture reads (autoencoder.model_config),
"image_size": the side it was built for, "quantizer": the quantizer params its method reads
(config.method_params) or None, "state_dict": ..., "meta": {...}}``, so any stage (or a notebook)
can rebuild it without params.yaml. Files are written atomically. Older files load too: before
``model.arch`` the model section was the ns_vqvae options (``upgrade_model_params``), before
``quantizer.search`` the search options were quantizer keys (``upgrade_quantizer_params``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..configbase import ConfigError, build, to_dict
from ..errors import UnreadableFileError
from ..torchio import atomic_save, cpu_state_dict, load_state, safe_load
from .autoencoder import VQAutoencoder


def save_autoencoder(path: str | Path, model: VQAutoencoder, quantizer_params=None,
                     meta: dict[str, Any] | None = None, state_dict: dict | None = None) -> None:
    """``model`` with its config; ``state_dict``: weights to store instead of the model's own
    (train_vq's EMA of the weights)."""
    atomic_save({"model": model.config, "image_size": model.image_size,
                 "quantizer": to_dict(quantizer_params) if quantizer_params is not None else None,
                 "state_dict": cpu_state_dict(model) if state_dict is None else state_dict, "meta": meta or {}}, path)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu", weights: bool = True
                     ) -> tuple[VQAutoencoder, dict]:
    """Rebuild the model stored at ``path``; returns (model in eval mode, the raw file dict).
    ``weights=False``: the architecture only, freshly initialised from torch's RNG (train_vq's
    ``init: scratch``)."""
    from ..config import ModelParams, QuantizerParams

    path = Path(path)
    blob = safe_load(path, "model file")
    if not isinstance(blob, dict) or not {"model", "state_dict"} <= blob.keys():
        raise UnreadableFileError(f"{path}: not a model file of this project (needs 'model' and 'state_dict')")
    try:
        mp = build(ModelParams, upgrade_model_params(blob["model"]), "model")
        quantizer = None
        if blob.get("quantizer") is not None:
            from ..quantizers import build_quantizer

            qp = build(QuantizerParams, upgrade_quantizer_params(blob["quantizer"]), "quantizer")
            quantizer = build_quantizer(qp, mp.code_dim)
    except ConfigError as e:
        raise UnreadableFileError(f"{path}: the params stored in this model file are invalid ({e})") from None
    model = VQAutoencoder.from_params(mp, quantizer, image_size=blob.get("image_size"))
    if weights:
        load_state(model, blob["state_dict"], path)
    return model.to(device).eval(), blob


def upgrade_model_params(d: dict) -> dict:
    """Model params of a file written before ``model.arch``: the flat keys were ns_vqvae's
    options and code_dim. Today's params pass through unchanged."""
    if "arch" in d:
        return d
    d = dict(d)
    return {"arch": "ns_vqvae", "code_dim": d.pop("code_dim", 64), "ns_vqvae": d}


def upgrade_quantizer_params(d: dict) -> dict:
    """Quantizer params of an older model file in today's layout: ``search_chunk`` and
    ``kernel_precision`` were keys of the quantizer section (now ``search.chunk`` and
    ``search.precision``), and sf_diveq_detach read the ``sf_diveq`` section (now its own,
    without sigma), and DiVeQ's noise was given as its std ``sigma`` (now the variance
    ``noise_var`` = sigma^2). Today's params pass through unchanged."""
    d = dict(d)
    search = dict(d.get("search") or {})
    for old, new in (("search_chunk", "chunk"), ("kernel_precision", "precision")):
        if old in d:
            search[new] = d.pop(old)
    if search:
        d["search"] = search
    if d.get("method") == "sf_diveq_detach" and "sf_diveq_detach" not in d and "sf_diveq" in d:
        d["sf_diveq_detach"] = {k: v for k, v in d["sf_diveq"].items() if k != "sigma"}
    for method in ("diveq", "sf_diveq"):
        section = d.get(method)
        if isinstance(section, dict) and "sigma" in section:
            section = dict(section)
            section["noise_var"] = section.pop("sigma") ** 2
            d[method] = section
    return d

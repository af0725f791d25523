"""The refine_gan stage's work: train_vq's tokenizer refined adversarially (training.py), its
validation quality and tokens before and after, and the before/after image grid."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..configbase import to_dict
from ..data import load_manifest, load_split
from ..models.autoencoder import VQAutoencoder
from ..models.inference import reconstruct
from ..models.io import load_autoencoder
from ..training.checkpoint import fingerprint
from ..training.device import pick_device
from ..training.loop import TrainResult
from ..training.setup import RunOptions
from .training import refine_gan, token_changes


@dataclass
class Refined:
    model: VQAutoencoder | None     # None: refine_gan.steps is 0, the tokenizer is train_vq's file unchanged
    blob: dict                      # train_vq's model file (params, meta)
    result: TrainResult | None      # None when skipped
    summary: dict
    grid_png: bytes

    @property
    def history(self) -> list:
        return self.result.history if self.result is not None else []


def val_quality(val: np.ndarray, recon: np.ndarray, lpips_net: str, device) -> dict[str, float]:
    from ..evaluation.metrics import lpips_distance, mse

    return {"mse": mse(val, recon), "lpips": float(np.mean(lpips_distance(val, recon, net=lpips_net, device=device)))}


def run_refine_gan(p, prepared: Path, vq_model: Path, checkpoint: Path | None = None, on_log=None) -> Refined:
    """Refine ``vq_model`` for ``refine_gan.steps`` steps on the prepared training split (a
    checkpoint resumes only a run of the same params, model and data); validation MSE and LPIPS
    (the ``evaluate.lpips_net`` backbone, as evaluate reports it) and the tokens changed, before
    and after."""
    from ..evaluation import plots

    rp = p.refine_gan
    val = np.ascontiguousarray(load_split(prepared, "val"))
    device = pick_device()
    model, blob = load_autoencoder(vq_model, device)
    recon_before, tokens_before = reconstruct(model, val, device)
    before = val_quality(val, recon_before, p.evaluate.lpips_net, device)
    if rp.steps == 0:
        refined, result, recon_after, tokens_after, after = None, None, recon_before, tokens_before, before
        summary = {"steps": 0, "train_seconds": 0.0,
                   "note": "refine_gan.steps is 0: the tokenizer is train_vq's model unchanged"}
    else:
        manifest = load_manifest(prepared)
        vq_hash = hashlib.sha256(Path(vq_model).read_bytes()).hexdigest()
        run = RunOptions(checkpoint, fingerprint(to_dict(rp), vq_hash, manifest["sha256"], p.data.augment), device,
                         augment=p.data.augment, workers=p.data.workers)
        vq_progress = blob["meta"].get("progress") or {"step": blob["meta"].get("steps", 0), "epoch": 0.0}
        result = refine_gan(model, load_split(prepared, "train"), rp, run,
                            progress=(int(vq_progress["step"]), float(vq_progress["epoch"])), on_log=on_log)
        recon_after, tokens_after = reconstruct(model, val, device)
        after = val_quality(val, recon_after, p.evaluate.lpips_net, device)
        refined = model
        summary = {"steps": result.steps, "train_seconds": result.seconds,
                   **{f"final_{k}": v for k, v in result.final.items()}}
    summary.update(token_changes(tokens_before, tokens_after))
    summary.update({f"val_{k}_before": v for k, v in before.items()})
    summary.update({f"val_{k}_after": v for k, v in after.items()})
    n = min(rp.grid_images, len(val))
    grid = plots.image_grid([val[:n], recon_before[:n], recon_after[:n]],
                            ["validation", "train_vq (before)", "refine_gan (after)"])
    return Refined(refined, blob, result, summary, grid)

"""The refine_gan stage's work: train_vq's tokenizer refined adversarially (training.py), its
validation quality and tokens before and after, and the before/after image grid."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import distributed
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


VAL_CHUNK = 1024     # validation images reconstructed and scored at a time


def validation_pass(model: VQAutoencoder, val, lpips_net: str, device, keep: int
                    ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Validation MSE and LPIPS of ``model`` over the whole split ``val`` (read in chunks of
    :data:`VAL_CHUNK`, so the split never has to fit in memory), its tokens, and the first
    ``keep`` reconstructions (for the grid)."""
    from ..evaluation.metrics import lpips_distance, mse

    mses, sizes, lp, tokens, kept = [], [], [], [], []
    mine = distributed.share(len(val))        # under torchrun: this rank's share, gathered below
    for start in range(mine.start, mine.stop, VAL_CHUNK):
        x = np.ascontiguousarray(val[start:min(start + VAL_CHUNK, mine.stop)])
        recon, tok = reconstruct(model, x, device)
        mses.append(mse(x, recon))
        sizes.append(len(x))
        lp.append(lpips_distance(x, recon, net=lpips_net, device=device))
        tokens.append(tok)
        kept.append(recon[:max(0, keep - start)])
    if distributed.active():
        import torch

        sums = distributed.all_reduce_sum(torch.tensor([float(np.dot(mses, sizes)), sum(sizes)], dtype=torch.float64))
        total_mse = (sums[0] / sums[1]).item()
    else:   # one chunk (any split up to VAL_CHUNK images): exactly the one-pass mean
        total_mse = mses[0] if len(mses) == 1 else float(np.dot(mses, sizes) / sum(sizes))
    gather = distributed.gather_array
    quality = {"mse": total_mse, "lpips": float(np.mean(gather(np.concatenate(lp))))}
    return quality, gather(np.concatenate(tokens)), gather(np.concatenate(kept))


def run_refine_gan(p, prepared: Path, vq_model: Path, checkpoint: Path | None = None, on_log=None) -> Refined:
    """Refine ``vq_model`` for ``refine_gan.steps`` steps on the prepared training split (a
    checkpoint resumes only a run of the same params, model and data); validation MSE and LPIPS
    (the ``evaluate.lpips_net`` backbone, as evaluate reports it) and the tokens changed, before
    and after."""
    from ..evaluation import plots

    rp = p.refine_gan
    val = load_split(prepared, "val")
    n = min(rp.grid_images, len(val))
    device = distributed.local_device(pick_device())
    distributed.init(device)
    model, blob = load_autoencoder(vq_model, device)
    before, tokens_before, recon_before = validation_pass(model, val, p.evaluate.lpips_net, device, n)
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
        after, tokens_after, recon_after = validation_pass(model, val, p.evaluate.lpips_net, device, n)
        refined = model
        summary = {"steps": result.steps, "train_seconds": result.seconds,
                   **{f"final_{k}": v for k, v in result.final.items()}}
    summary.update(token_changes(tokens_before, tokens_after))
    summary.update({f"val_{k}_before": v for k, v in before.items()})
    summary.update({f"val_{k}_after": v for k, v in after.items()})
    grid = plots.image_grid([val[:n], recon_before, recon_after],
                            ["validation", "train_vq (before)", "refine_gan (after)"])
    return Refined(refined, blob, result, summary, grid)

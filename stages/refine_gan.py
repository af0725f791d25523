"""DVC stage `refine_gan`: adversarial refinement of train_vq's model -> models/tokenizer.pt.

With ``refine_gan.steps: 0`` the stage copies models/vq.pt to models/tokenizer.pt byte for
byte (the pipeline skips refinement without editing dvc.yaml).
"""
from __future__ import annotations

import hashlib

import numpy as np
from prefect import flow

from pipeline import plots
from pipeline.configbase import to_dict
from pipeline.data import load_manifest, load_split
from pipeline.evaluation import reconstruct
from pipeline.gan_training import refine_gan, token_changes
from pipeline.metrics import lpips_distance
from pipeline.models.io import load_autoencoder, save_autoencoder
from pipeline.tracking import stage_run
from pipeline.training import Trainer, fingerprint, pick_device
from stages.common import CHECKPOINTS, PLOTS, PREPARED, REPORTS, TOKENIZER, VQ_MODEL, load_params, main, require, \
    stage_task, write_atomic, write_history_csv, write_json

GRID = PLOTS / "refine_gan_grid.png"
LOSS_CSV = PLOTS / "loss_refine_gan.csv"


def _quality(val: np.ndarray, recon: np.ndarray, device) -> dict[str, float]:
    mse = float(np.mean(((recon.astype(np.float64) - val.astype(np.float64)) / 255.0) ** 2))
    return {"mse": mse, "lpips": float(np.mean(lpips_distance(val, recon, net="alex", device=device)))}


@stage_task
def refine(p, run) -> dict:
    rp = p.refine_gan
    vq_bytes = require(VQ_MODEL, "train_vq").read_bytes()
    manifest = load_manifest(PREPARED)
    val = np.ascontiguousarray(load_split(PREPARED, "val"))
    device = pick_device()
    model, blob = load_autoencoder(VQ_MODEL, device)
    recon_before, tokens_before = reconstruct(model, val, device)
    before = _quality(val, recon_before, device)

    if rp.steps == 0:
        write_atomic(TOKENIZER, vq_bytes)
        history, recon_after, tokens_after, after = [], recon_before, tokens_before, before
        summary = {"steps": 0, "train_seconds": 0.0,
                   "note": "refine_gan.steps is 0: models/tokenizer.pt is models/vq.pt unchanged"}
    else:
        trainer = Trainer("refine_gan", total_steps=rp.steps, checkpoint_path=CHECKPOINTS / "refine_gan.pt",
                          run_fingerprint=fingerprint(to_dict(rp), hashlib.sha256(vq_bytes).hexdigest(),
                                                      manifest["sha256"]),
                          checkpoint_every=rp.checkpoint_every, log_every=rp.log_every, precision=rp.precision)
        vq_progress = blob["meta"].get("progress") or {"step": blob["meta"].get("steps", 0), "epoch": 0.0}
        result = refine_gan(model, load_split(PREPARED, "train"), rp, trainer,
                            progress=(int(vq_progress["step"]), float(vq_progress["epoch"])),
                            on_log=lambda s, m: run.log_metrics(m, s))
        recon_after, tokens_after = reconstruct(model, val, device)
        after = _quality(val, recon_after, device)
        history = result.history
        summary = {"steps": result.steps, "train_seconds": result.seconds,
                   **{f"final_{k}": v for k, v in result.final.items()}}
        save_autoencoder(TOKENIZER, model, blob["model"], blob["quantizer"],
                         meta={**blob["meta"], "refine_gan": {"steps": result.steps, "final": result.final}})

    summary.update(token_changes(tokens_before, tokens_after))
    summary.update({f"val_{k}_before": v for k, v in before.items()})
    summary.update({f"val_{k}_after": v for k, v in after.items()})
    n = min(rp.grid_images, len(val))
    write_atomic(GRID, plots.image_grid([val[:n], recon_before[:n], recon_after[:n]],
                                        ["validation", "train_vq (before)", "refine_gan (after)"]))
    write_history_csv(LOSS_CSV, history)
    write_json(REPORTS / "refine_gan.json", summary)
    return summary


@flow(name="refine_gan")
def refine_gan_flow() -> None:
    p = load_params()
    with stage_run("refine_gan") as run:
        run.log_params({"refine_gan": to_dict(p.refine_gan)})
        summary = refine(p, run)
        run.log_summary(summary, parent_prefix="refine_gan")
        run.log_model_reference(TOKENIZER)
        run.log_artifact(GRID)
        run.log_artifact(LOSS_CSV)


if __name__ == "__main__":
    main(refine_gan_flow)

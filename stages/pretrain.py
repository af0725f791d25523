"""DVC stage `pretrain`: the encoder + decoder as a continuous autoencoder -> models/pretrain.pt."""
from __future__ import annotations

import torch
from prefect import flow

from pipeline.configbase import to_dict
from pipeline.data import load_manifest, load_split
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.models.io import save_autoencoder
from pipeline.pretraining import pretrain_autoencoder
from pipeline.tracking import stage_run
from pipeline.training import Trainer, fingerprint
from stages.common import CHECKPOINTS, PLOTS, PREPARED, PRETRAIN_MODEL, load_params, main, require, stage_task, write_history_csv


@stage_task
def pretrain(p, run) -> dict:
    require(PREPARED / "manifest.json", "prepare")
    manifest = load_manifest(PREPARED)
    train_images = load_split(PREPARED, "train")
    pp = p.pretrain
    trainer = Trainer("pretrain", total_steps=pp.steps, checkpoint_path=CHECKPOINTS / "pretrain.pt",
                      run_fingerprint=fingerprint(to_dict(p.model), to_dict(pp), manifest["sha256"]),
                      checkpoint_every=pp.checkpoint_every, log_every=pp.log_every, precision=pp.precision)
    torch.manual_seed(pp.seed)            # the initial weights are part of what params fix
    model = VQAutoencoder.from_params(p.model)
    result = pretrain_autoencoder(model, train_images, pp, trainer, on_log=lambda s, m: run.log_metrics(m, s))
    save_autoencoder(PRETRAIN_MODEL, model, p.model, meta={"steps": result.steps, "final": result.final})
    write_history_csv(PLOTS / "loss_pretrain.csv", result.history)
    return {"final_loss": result.final.get("loss"), "train_seconds": result.seconds,
            "resumed_from_step": result.resumed_from}


@flow(name="pretrain")
def pretrain_flow() -> None:
    p = load_params()
    with stage_run("pretrain") as run:
        run.log_params({"model": to_dict(p.model), "pretrain": to_dict(p.pretrain)})
        summary = pretrain(p, run)
        run.log_metrics(summary)
        run.log_model_reference(PRETRAIN_MODEL)
        run.log_artifact(PLOTS / "loss_pretrain.csv")


if __name__ == "__main__":
    main(pretrain_flow)

"""DVC stage `train_vq`: drift-aware VQ training (track, then encoder frozen) -> models/vq.pt."""
from __future__ import annotations

import torch
from prefect import flow

from pipeline.configbase import to_dict
from pipeline.data import load_manifest, load_split
from pipeline.models.io import load_autoencoder, save_autoencoder
from pipeline.quantizers import CodeReplacement, build_quantizer
from pipeline.tracking import stage_run
from pipeline.training import Trainer, fingerprint
from pipeline.vq_training import steps_per_epoch, train_vq
from stages.common import CHECKPOINTS, CODEBOOK_INIT, PLOTS, PREPARED, PRETRAIN_MODEL, REPORTS, VQ_MODEL, \
    load_params, main, require, stage_task, write_history_csv, write_json


@stage_task
def train(p, run) -> dict:
    require(PRETRAIN_MODEL, "pretrain")
    tp, qp = p.train_vq, p.quantizer
    manifest = load_manifest(PREPARED)
    model, _ = load_autoencoder(PRETRAIN_MODEL)
    torch.manual_seed(tp.seed)            # the quantizer's initial tables are part of what params fix
    model.quantizer = build_quantizer(qp, p.model.code_dim)
    # Methods whose codebook is a transform of a frozen table (simvq, transvq) or that
    # initialise themselves (sf_diveq) skip the k-means codes.
    if tp.kmeans_init and model.quantizer.uses_kmeans_init:
        init = torch.load(require(CODEBOOK_INIT, "kmeans_init"), map_location="cpu")["codes"]
        model.quantizer.init_codebook(init)
    total = tp.track_steps + tp.freeze_steps
    trainer = Trainer("train_vq", total_steps=total, checkpoint_path=CHECKPOINTS / "train_vq.pt",
                      run_fingerprint=fingerprint(to_dict(p.model), to_dict(qp), to_dict(tp), manifest["sha256"]),
                      checkpoint_every=tp.checkpoint_every, log_every=tp.log_every, precision=tp.precision)
    result = train_vq(model, load_split(PREPARED, "train"), tp, CodeReplacement.from_params(qp.replacement),
                      trainer, on_log=lambda s, m: run.log_metrics(m, s))
    # Where the quantizer's schedules (NS-VQ's tau, Gumbel's temperature) stopped: refine_gan
    # continues from there when it trains the codebook.
    progress = {"step": total, "epoch": total / steps_per_epoch(tp, manifest["counts"]["train"])}
    save_autoencoder(VQ_MODEL, model, p.model, qp,
                     meta={"steps": result.steps, "final": result.final, "progress": progress})
    write_history_csv(PLOTS / "loss_train_vq.csv", result.history)
    summary = {"train_seconds": result.seconds, "steps": result.steps,
               **{f"final_{k}": v for k, v in result.final.items()}}
    write_json(REPORTS / "train_vq.json", summary)
    return summary


@flow(name="train_vq")
def train_vq_flow() -> None:
    p = load_params()
    with stage_run("train_vq") as run:
        run.log_params({"model": to_dict(p.model), "quantizer": to_dict(p.quantizer), "train_vq": to_dict(p.train_vq)})
        summary = train(p, run)
        run.log_metrics(summary)
        run.log_model_reference(VQ_MODEL)
        run.log_artifact(PLOTS / "loss_train_vq.csv")


if __name__ == "__main__":
    main(train_vq_flow)

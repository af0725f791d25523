"""DVC stage `refine_gan`: adversarial refinement of train_vq's model into the tokenizer.

With ``refine_gan.steps: 0`` the stage copies train_vq's model file to the tokenizer's byte for
byte (the pipeline skips refinement without editing dvc.yaml)."""
from __future__ import annotations

import numpy as np
import torch

from pipeline import distributed
from pipeline.data import load_split
from pipeline.gan.refine import run_refine_gan
from pipeline.images import images_to_input
from pipeline.models.io import load_autoencoder, save_autoencoder
from stages.common import StageResult, require, run_stage, write_atomic, write_history_csv, write_report


def work(p, paths, run) -> StageResult:
    vq_model = require(paths.vq_model, "train_vq")
    out = run_refine_gan(p, paths.prepared, vq_model, paths.checkpoint("refine_gan"),
                         on_log=lambda s, m: run.log_metrics(m, s))
    if not distributed.is_main():
        return None
    if out.model is None:
        write_atomic(paths.tokenizer, vq_model.read_bytes())
    else:
        save_autoencoder(paths.tokenizer, out.model, out.blob["quantizer"],
                         meta={**out.blob["meta"], "refine_gan": {"steps": out.result.steps, "final": out.result.final}})
    write_atomic(paths.refine_gan_grid, out.grid_png)
    write_history_csv(paths.refine_gan_curve, out.history)
    write_report(paths.refine_gan_report, out.summary)
    tokenizer, _ = load_autoencoder(paths.tokenizer)
    example = images_to_input(torch.from_numpy(np.array(load_split(paths.prepared, "val")[:2]))).numpy()
    return StageResult(out.summary, artifacts=[paths.refine_gan_grid, paths.refine_gan_curve],
                       mlflow_models={"tokenizer": (tokenizer, example, paths.tokenizer)})


if __name__ == "__main__":
    run_stage("refine_gan", work, ranks=True)

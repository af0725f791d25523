"""DVC stage `evaluate`: validation metrics -> reports/metrics.json, figures -> reports/plots/."""
from __future__ import annotations

import numpy as np
from prefect import flow

from pipeline import plots
from pipeline.config import flatten, to_dict
from pipeline.data import load_split
from pipeline.evaluation import reconstruction_metrics
from pipeline.models.io import load_autoencoder
from pipeline.tracking import stage_run
from pipeline.training import pick_device
from stages.common import PLOTS, PREPARED, REPORTS, VQ_MODEL, load_params, main, require, stage_task, \
    write_atomic, write_json

LOSS_CSVS = {"pretrain": PLOTS / "loss_pretrain.csv", "train_vq": PLOTS / "loss_train_vq.csv"}


@stage_task
def evaluate(p) -> dict:
    ep = p.evaluate
    device = pick_device()
    model, blob = load_autoencoder(require(VQ_MODEL, "train_vq"), device)
    val = load_split(PREPARED, "val")
    if ep.max_images:
        val = val[:ep.max_images]
    val = np.ascontiguousarray(val)
    results, recon, tokens = reconstruction_metrics(model, val, device=device, batch_size=ep.batch_size,
                                                    lpips_net=ep.lpips_net)
    results["method"] = blob["quantizer"]["method"]
    results["codebook_size"] = model.quantizer.codebook_size
    write_json(REPORTS / "metrics.json", results)

    n = min(ep.grid_images, len(val))
    write_atomic(PLOTS / "reconstructions.png",
                 plots.image_grid([val[:n], recon[:n]], ["validation", "reconstruction"]))
    counts = np.bincount(tokens.reshape(-1), minlength=model.quantizer.codebook_size)
    write_atomic(PLOTS / "codebook_usage.png", plots.usage_histogram(counts))
    write_atomic(PLOTS / "codebook_usage.csv",
                 "rank,count\n" + "".join(f"{i},{c}\n" for i, c in enumerate(np.sort(counts)[::-1])))
    histories = {s: plots.read_history_csv(f) for s, f in LOSS_CSVS.items() if f.exists()}
    write_atomic(PLOTS / "loss_curves.png", plots.loss_curves(histories))
    return results


@flow(name="evaluate")
def evaluate_flow() -> None:
    p = load_params()
    with stage_run("evaluate") as run:
        run.log_params(to_dict(p.evaluate), "evaluate")
        results = evaluate(p)
        numeric = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        run.log_metrics(numeric)
        # The parent run gets the headline metrics and every param, for side-by-side comparison.
        run.log_metrics(numeric, parent=True)
        run.log_params(flatten(to_dict(p)), parent=True)
        for f in ("metrics.json", "plots/reconstructions.png", "plots/codebook_usage.png", "plots/loss_curves.png"):
            run.log_artifact(REPORTS / f)


if __name__ == "__main__":
    main(evaluate_flow)

"""DVC stage `evaluate`: validation metrics of the tokenizer and generation metrics of the
prior -> reports/metrics.json, figures -> reports/plots/."""
from __future__ import annotations

import json

import numpy as np
from prefect import flow

from pipeline import plots
from pipeline.config import flatten, to_dict
from pipeline.data import load_split
from pipeline.evaluation import generation_metrics, reconstruction_metrics
from pipeline.metrics import fid_features
from pipeline.models.io import load_autoencoder
from pipeline.tracking import stage_run
from pipeline.training import pick_device
from stages.common import PLOTS, PREPARED, REPORTS, SAMPLES, TOKENIZER, load_params, main, require, stage_task, \
    write_atomic, write_json

LOSS_CSVS = {"pretrain": PLOTS / "loss_pretrain.csv", "train_vq": PLOTS / "loss_train_vq.csv",
             "refine_gan": PLOTS / "loss_refine_gan.csv", "train_prior": PLOTS / "loss_train_prior.csv"}
LOSS_KEYS = {"refine_gan": ("nll_loss", "d_loss"), "train_prior": ("loss",)}
PRIOR_REPORT = REPORTS / "train_prior.json"
SAMPLE_GRID_COLUMNS = 8


@stage_task
def evaluate(p) -> dict:
    ep = p.evaluate
    device = pick_device()
    model, blob = load_autoencoder(require(TOKENIZER, "refine_gan"), device)
    prior_report = json.loads(require(PRIOR_REPORT, "train_prior").read_text())
    samples = np.load(require(SAMPLES / "samples.npy", "train_prior"), allow_pickle=False)
    val = load_split(PREPARED, "val")
    if ep.max_images:
        val = val[:ep.max_images]
    val = np.ascontiguousarray(val)
    reference = fid_features(val, device=device, batch_size=ep.batch_size)   # shared by rFID and gFID
    results, recon, tokens = reconstruction_metrics(model, val, device=device, batch_size=ep.batch_size,
                                                    lpips_net=ep.lpips_net, fid_reference=reference)
    results["method"] = blob["quantizer"]["method"]
    results["codebook_size"] = model.quantizer.codebook_size
    results.update(generation_metrics(samples, reference, prior_report, device=device, batch_size=ep.batch_size,
                                      max_samples=ep.gfid_samples))
    write_json(REPORTS / "metrics.json", results)

    n = min(ep.grid_images, len(val))
    write_atomic(PLOTS / "reconstructions.png",
                 plots.image_grid([val[:n], recon[:n]], ["validation", "reconstruction"]))
    counts = np.bincount(tokens.reshape(-1), minlength=model.quantizer.codebook_size)
    write_atomic(PLOTS / "codebook_usage.png", plots.usage_histogram(counts))
    write_atomic(PLOTS / "codebook_usage.csv",
                 "rank,count\n" + "".join(f"{i},{c}\n" for i, c in enumerate(np.sort(counts)[::-1])))
    if results["gfid"] is not None:
        shown = samples[:min(len(samples), 2 * SAMPLE_GRID_COLUMNS)]
        rows = [shown[i:i + SAMPLE_GRID_COLUMNS] for i in range(0, len(shown), SAMPLE_GRID_COLUMNS)]
        figure = plots.image_grid(rows, [f"prior samples (gFID {results['gfid']:.1f})"] + [""] * (len(rows) - 1))
    else:
        figure = plots.message(f"no prior samples: {results['prior_note']}")
    write_atomic(PLOTS / "samples.png", figure)
    histories = {s: h for s, f in LOSS_CSVS.items() if f.exists() and (h := plots.read_history_csv(f))}
    write_atomic(PLOTS / "loss_curves.png", plots.loss_curves(histories, LOSS_KEYS))
    return results


@flow(name="evaluate")
def evaluate_flow() -> None:
    p = load_params()
    with stage_run("evaluate") as run:
        run.log_params(to_dict(p.evaluate), "evaluate")
        results = evaluate(p)
        # The parent run gets the headline metrics and every param, for side-by-side comparison.
        run.log_summary(results)
        run.log_params(flatten(to_dict(p)), parent=True)
        for f in ("metrics.json", "plots/reconstructions.png", "plots/codebook_usage.png", "plots/loss_curves.png",
                  "plots/samples.png"):
            run.log_artifact(REPORTS / f)


if __name__ == "__main__":
    main(evaluate_flow)

"""The evaluate stage's work: the tokenizer's validation metrics, the prior's generation
metrics, and the figures of the report."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import distributed
from ..data import load_split
from ..models.io import load_autoencoder
from ..training.device import pick_device
from . import plots
from .reconstruction import generation_metrics, reconstruction_metrics
from .usage import training_set_usage

# The curves the loss figure shows per stage (default: the "loss" column).
LOSS_KEYS = {"refine_gan": ("nll_loss", "d_loss"), "train_prior": ("loss",)}
SAMPLE_GRID_COLUMNS = 8


@dataclass
class Evaluation:
    metrics: dict
    reconstructions_png: bytes
    usage_png: bytes
    usage_csv: str          # codes ranked by validation count: rank,count
    samples_png: bytes
    loss_curves_png: bytes


def run_evaluate(p, prepared: Path, tokenizer: Path, samples: Path, prior_report: Path,
                 curves: dict[str, Path]) -> Evaluation:
    """Metrics of ``tokenizer`` on the validation split (the first ``evaluate.max_images``; 0:
    all, read in chunks; keys ``val_*`` for its code statistics), its codebook usage on the
    training split (``train_*``: the first ``evaluate.train_usage_images``, 0: all), and the
    prior's decoded ``samples`` against the validation split; ``curves``: stage -> its loss CSV."""
    ep = p.evaluate
    device = distributed.local_device(pick_device())
    distributed.init(device)
    model, blob = load_autoencoder(tokenizer, device)
    report = json.loads(Path(prior_report).read_text())
    sample_images = np.load(samples, allow_pickle=False)
    val = load_split(prepared, "val")
    n = min(ep.grid_images, ep.max_images or len(val), len(val))
    results, recon, tokens, reference = reconstruction_metrics(
        model, val, device=device, batch_size=ep.batch_size, lpips_net=ep.lpips_net, limit=ep.max_images, keep=n,
        progress=True)
    # The papers count usage over the training data; the validation split alone understates it.
    train = training_set_usage(model, load_split(prepared, "train"), device=device, batch_size=ep.batch_size,
                               limit=ep.train_usage_images, progress=True)
    results.update({f"train_{k}": v for k, v in train.items()})
    results["method"] = blob["quantizer"]["method"]
    results["codebook_size"] = model.quantizer.codebook_size
    results.update(generation_metrics(sample_images, reference, report, device=device, batch_size=ep.batch_size,
                                      max_samples=ep.gfid_samples))
    counts = np.bincount(tokens.reshape(-1), minlength=model.quantizer.codebook_size)
    if results["gfid"] is not None:
        c = SAMPLE_GRID_COLUMNS
        shown = sample_images[:min(len(sample_images), 2 * c)]
        rows = [shown[i:i + c] for i in range(0, len(shown), c)]
        samples_png = plots.image_grid(rows, [f"prior samples (gFID {results['gfid']:.1f})"] + [""] * (len(rows) - 1))
    else:
        samples_png = plots.message(f"no prior samples: {results['prior_note']}")
    histories = {s: h for s, f in curves.items() if Path(f).exists() and (h := plots.read_history_csv(f))}
    return Evaluation(
        metrics=results,
        reconstructions_png=plots.image_grid([val[:n], recon], ["validation", "reconstruction"]),
        usage_png=plots.usage_histogram(counts),
        usage_csv="rank,count\n" + "".join(f"{i},{c}\n" for i, c in enumerate(np.sort(counts)[::-1])),
        samples_png=samples_png,
        loss_curves_png=plots.loss_curves(histories, LOSS_KEYS))

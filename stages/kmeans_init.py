"""DVC stage `kmeans_init`: k-means codes from pretrained-encoder latents -> models/codebook_init.pt."""
from __future__ import annotations

import torch
from prefect import flow

from pipeline.configbase import to_dict
from pipeline.data import load_split
from pipeline.kmeans import kmeans
from pipeline.models.io import load_autoencoder
from pipeline.pretraining import encode_images
from pipeline.quantizers.search import search_kwargs
from pipeline.tracking import stage_run
from pipeline.training import atomic_save, pick_device
from stages.common import CODEBOOK_INIT, PREPARED, PRETRAIN_MODEL, REPORTS, load_params, main, require, \
    stage_task, write_json


@stage_task
def fit_codebook(p, run) -> dict:
    require(PRETRAIN_MODEL, "pretrain")
    device = pick_device()
    model, _ = load_autoencoder(PRETRAIN_MODEL, device)
    latents = encode_images(model, load_split(PREPARED, "train"), device)
    kp, k = p.kmeans_init, p.quantizer.codebook_size
    if latents.shape[0] > kp.max_latents:
        g = torch.Generator().manual_seed(kp.seed)
        latents = latents[torch.randperm(latents.shape[0], generator=g)[:kp.max_latents].to(latents.device)]
    if latents.shape[0] < k:
        raise ValueError(f"quantizer.codebook_size: {k} codes need at least {k} training latents, "
                         f"the training set gives {latents.shape[0]}")
    result = kmeans(latents, k, iters=kp.iters, seed=kp.seed, search=search_kwargs(p.quantizer.search),
                    log=lambda it, inertia: run.log_metrics({"inertia": inertia}, it))
    atomic_save({"codes": result.centers.cpu(), "inertia": result.inertia,
                 "empty_fraction": result.empty_fraction}, CODEBOOK_INIT)
    summary = {"inertia": result.inertia, "empty_fraction": result.empty_fraction,
               "num_latents": latents.shape[0], "codebook_size": k}
    write_json(REPORTS / "kmeans_init.json", summary)
    return summary


@flow(name="kmeans_init")
def kmeans_init_flow() -> None:
    p = load_params()
    with stage_run("kmeans_init") as run:
        run.log_params({"kmeans_init": to_dict(p.kmeans_init), "quantizer.codebook_size": p.quantizer.codebook_size})
        summary = fit_codebook(p, run)
        run.log_metrics({f"final_{k}": v for k, v in summary.items()})
        run.log_model_reference(CODEBOOK_INIT, "codebook_init")


if __name__ == "__main__":
    main(kmeans_init_flow)

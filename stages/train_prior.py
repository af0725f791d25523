"""DVC stage `train_prior`: the data's token grids, a GPT-style prior over them, and images
decoded from its samples.

With ``train_prior.steps: 0`` no prior is trained: the tokens are still cached and their
entropy reported, the prior file records that there is no prior, the samples folder holds
empty arrays, and evaluate reports gfid and bits per token as null.
"""
from __future__ import annotations

import json

import numpy as np

from pipeline import distributed
from pipeline.prior.model import save_prior
from pipeline.prior.training import run_train_prior
from stages.common import StageResult, npy_bytes, require, run_stage, write_folder, write_history_csv, write_report


def work(p, paths, run) -> StageResult:
    out = run_train_prior(p, paths.prepared, require(paths.tokenizer, "refine_gan"), paths.checkpoint("train_prior"),
                          on_log=lambda s, m: run.log_metrics(m, s))
    if not distributed.is_main():
        return None
    write_folder(paths.tokens, {"train.npy": npy_bytes(out.tokens["train"]), "val.npy": npy_bytes(out.tokens["val"]),
                                "meta.json": json.dumps(out.tokens_meta, indent=2, sort_keys=True) + "\n"})
    save_prior(paths.prior_model, out.prior, meta=out.prior_meta)
    samples = {"samples.npy": npy_bytes(out.samples), "tokens.npy": npy_bytes(out.sample_tokens)}
    if out.samples_grid is not None:
        samples["grid.png"] = out.samples_grid
    write_folder(paths.samples, samples)
    write_history_csv(paths.train_prior_curve, out.history)
    write_report(paths.train_prior_report, out.summary)
    models = {}
    if out.prior is not None:
        train = out.tokens["train"]
        example = train[:2].reshape(min(2, len(train)), -1).astype(np.int64)   # raster-ordered sequences
        models["prior"] = (out.prior.cpu().eval(), example, paths.prior_model)
    return StageResult(out.summary, artifacts=[paths.train_prior_curve, paths.samples / "grid.png"],
                       mlflow_models=models)


if __name__ == "__main__":
    run_stage("train_prior", work, ranks=True)

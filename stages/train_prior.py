"""DVC stage `train_prior`: token grids of the data (data/tokens/), a GPT-style prior over
them (models/prior.pt), and images decoded from its samples (data/samples/).

With ``train_prior.steps: 0`` no prior is trained: the tokens are still cached and their
entropy reported, models/prior.pt records that there is no prior, data/samples/ holds
empty arrays, and evaluate reports gfid and bits per token as null.
"""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from prefect import flow

from pipeline import plots
from pipeline.atomic import atomic_dir
from pipeline.configbase import to_dict
from pipeline.data import load_manifest, load_split
from pipeline.models.io import load_autoencoder
from pipeline.models.prior import save_prior
from pipeline.prior_training import build_prior, encode_tokens, nll_bits_per_token, sample_images, sequences, \
    token_entropy_bits, train_prior
from pipeline.tracking import stage_run
from pipeline.training import Trainer, fingerprint, pick_device
from stages.common import CHECKPOINTS, PLOTS, PREPARED, PRIOR_MODEL, REPORTS, SAMPLES, TOKENIZER, TOKENS, \
    load_params, main, require, stage_task, write_history_csv, write_json

LOSS_CSV = PLOTS / "loss_train_prior.csv"
SAMPLE_GRID = SAMPLES / "grid.png"
GRID_COLUMNS = 8


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _token_dtype(codebook_size: int):
    return np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32


@stage_task
def tokenize(tokenizer, device) -> dict:
    """Encode both splits; write data/tokens/{train,val}.npy and meta.json."""
    k = tokenizer.quantizer.codebook_size
    out = {split: encode_tokens(tokenizer, load_split(PREPARED, split), device) for split in ("train", "val")}
    levels = out["train"].shape[3] if out["train"].ndim == 4 else 1
    meta = {"codebook_size": k, "levels": levels, "grid": list(out["train"].shape[1:3]),
            "counts": {s: len(t) for s, t in out.items()},
            "tokenizer_sha256": hashlib.sha256(TOKENIZER.read_bytes()).hexdigest(),
            "layout": "train.npy/val.npy: (N, h, w) or (N, h, w, levels) code indices"}
    with atomic_dir(TOKENS) as tmp:
        for split, tokens in out.items():
            (tmp / f"{split}.npy").write_bytes(_npy(tokens.astype(_token_dtype(k))))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {**out, "meta": meta}


@stage_task
def train(p, run, tokenizer, tokens, device) -> dict:
    pp = p.train_prior
    meta = tokens["meta"]
    k, levels, grid = meta["codebook_size"], meta["levels"], tuple(meta["grid"])
    summary = {"token_entropy_bits": token_entropy_bits(tokens["train"], k),
               "val_token_entropy_bits": token_entropy_bits(tokens["val"], k),
               "uniform_bits_per_token": float(np.log2(k)), "seq_len": grid[0] * grid[1] * levels}
    image_size = load_manifest(PREPARED)["image_size"]
    samples = np.zeros((0, image_size, image_size, 3), np.uint8)
    sample_tokens = np.zeros((0, *tokens["train"].shape[1:]), _token_dtype(k))
    history = []
    if pp.steps == 0:
        save_prior(PRIOR_MODEL, None, meta={"skipped": "train_prior.steps is 0"})
        summary.update(steps=0, val_bits_per_token=None, note="train_prior.steps is 0: no prior trained")
    else:
        train_seq, val_seq = sequences(tokens["train"]), sequences(tokens["val"])
        prior = build_prior(pp, k, train_seq.shape[1], levels)
        trainer = Trainer("train_prior", total_steps=pp.steps, checkpoint_path=CHECKPOINTS / "train_prior.pt",
                          run_fingerprint=fingerprint(to_dict(pp), meta), checkpoint_every=pp.checkpoint_every,
                          log_every=pp.log_every, precision=pp.precision, device=device)
        result = train_prior(prior, train_seq, pp, trainer, on_log=lambda s, m: run.log_metrics(m, s))
        history = result.history
        summary.update(steps=result.steps, train_seconds=result.seconds,
                       val_bits_per_token=nll_bits_per_token(prior, val_seq),
                       train_bits_per_token=nll_bits_per_token(prior, train_seq),
                       num_params=sum(p.numel() for p in prior.parameters()))
        if pp.num_samples:
            sample_tokens, samples = sample_images(prior, tokenizer, pp.num_samples, grid,
                                                   temperature=pp.temperature, top_k=pp.top_k, seed=pp.seed,
                                                   batch_size=max(pp.batch_size, 64))
            sample_tokens = sample_tokens.astype(_token_dtype(k))
        save_prior(PRIOR_MODEL, prior, meta={"steps": result.steps, "final": result.final,
                                             "val_bits_per_token": summary["val_bits_per_token"],
                                             "grid": list(grid), "tokenizer_sha256": meta["tokenizer_sha256"]})
    summary["num_samples"] = len(samples)
    with atomic_dir(SAMPLES) as tmp:
        (tmp / "samples.npy").write_bytes(_npy(samples))
        (tmp / "tokens.npy").write_bytes(_npy(sample_tokens))
        if len(samples):
            rows = [samples[i:i + GRID_COLUMNS] for i in range(0, min(len(samples), 4 * GRID_COLUMNS), GRID_COLUMNS)]
            (tmp / SAMPLE_GRID.name).write_bytes(plots.image_grid(rows))
    write_history_csv(LOSS_CSV, history)
    write_json(REPORTS / "train_prior.json", summary)
    return summary


@flow(name="train_prior")
def train_prior_flow() -> None:
    p = load_params()
    with stage_run("train_prior") as run:
        run.log_params({"train_prior": to_dict(p.train_prior)})
        device = pick_device()
        tokenizer, _ = load_autoencoder(require(TOKENIZER, "refine_gan"), device)
        tokens = tokenize(tokenizer, device)
        summary = train(p, run, tokenizer, tokens, device)
        run.log_summary(summary, parent_prefix="train_prior")
        run.log_model_reference(PRIOR_MODEL)
        run.log_artifact(LOSS_CSV)
        if SAMPLE_GRID.exists():
            run.log_artifact(SAMPLE_GRID)


if __name__ == "__main__":
    main(train_prior_flow)

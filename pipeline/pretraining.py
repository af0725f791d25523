"""pretrain: the encoder and decoder as a continuous autoencoder (no quantizer), MSE + Adam."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .configbase import to_dict
from .data import load_manifest, load_split
from .models.autoencoder import VQAutoencoder, model_config
from .training.checkpoint import fingerprint
from .training.device import compile_autoencoder
from .training.loop import TrainResult
from .training.optim import optimizer_step
from .training.setup import RunOptions, setup_training


def pretrain_autoencoder(model: VQAutoencoder, train_images: np.ndarray, pp, run: RunOptions = RunOptions(),
                         on_log=None) -> TrainResult:
    """Train ``model`` (quantizer None) on ``train_images`` for ``pp.steps`` steps."""
    if model.quantizer is not None:
        raise ValueError("pretrain trains the continuous autoencoder: build the model without a quantizer")
    t = setup_training("pretrain", pp, model, train_images, total_steps=pp.steps, run=run)
    compile_autoencoder(model, pp.compile)
    model.train()

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        x = t.batches.batch(step)
        with t.trainer.autocast():
            x_hat, _ = t.net(x)
        loss = F.mse_loss(x_hat.float(), x)
        optimizer_step(loss, t.optimizer, pp.grad_clip)
        return {"loss": loss}

    return t.fit(step_fn, {"model": model}, on_log=on_log)


def pretrain(p, prepared: Path, checkpoint: Path | None = None, on_log=None) -> tuple[VQAutoencoder, TrainResult]:
    """The pretrain stage: the model of ``p.model``, seeded by ``p.pretrain.seed``, trained on the
    prepared training split; a checkpoint resumes only a run of the same params and data."""
    manifest = load_manifest(prepared)
    pp = p.pretrain
    torch.manual_seed(pp.seed)            # the initial weights are part of what params fix
    model = VQAutoencoder.from_params(p.model, image_size=p.data.image_size)
    run = RunOptions(checkpoint, fingerprint(model_config(p.model), to_dict(pp), manifest["sha256"], p.data.augment),
                     augment=p.data.augment, workers=p.data.workers)
    return model, pretrain_autoencoder(model, load_split(prepared, "train"), pp, run, on_log)

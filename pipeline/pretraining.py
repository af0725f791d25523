"""pretrain: the encoder and decoder as a continuous autoencoder (no quantizer), MSE + Adam."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .images import input_batches
from .models.autoencoder import VQAutoencoder
from .training import BatchSource, Trainer, TrainResult, compile_autoencoder, make_adam, optimizer_step


def pretrain_autoencoder(model: VQAutoencoder, train_images: np.ndarray, pp, trainer: Trainer,
                         on_log=None) -> TrainResult:
    """Train ``model`` (quantizer None) on ``train_images`` for ``pp.steps`` steps."""
    if model.quantizer is not None:
        raise ValueError("pretrain trains the continuous autoencoder: build the model without a quantizer")
    model.to(trainer.device).train()
    if trainer.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = make_adam(model.parameters(), pp)
    source = BatchSource(train_images, pp.batch_size, pp.seed, trainer.device)
    compile_autoencoder(model, pp.compile)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        x = source.batch(step)
        with trainer.autocast():
            x_hat, _ = model(x)
        loss = F.mse_loss(x_hat.float(), x)
        optimizer_step(loss, opt, pp.grad_clip)
        return {"loss": loss}

    return trainer.fit(step_fn, {"model": model, "optimizer": opt}, on_log=on_log)


@torch.no_grad()
def encode_images(model: VQAutoencoder, images: np.ndarray, device, batch_size: int = 256) -> torch.Tensor:
    """Encoder latents of uint8 NHWC images as rows (N * h * w, D), on ``device``."""
    model.eval()
    rows = []
    for x in input_batches(images, device, batch_size):
        z = model.encode(x).float()
        rows.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(rows)

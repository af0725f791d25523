"""train_vq: drift-aware VQ training in two phases (the NSVQ schedule before refinement).

Phase 1, "track" (``track_steps``): encoder, decoder and codebook all train. The encoder's
latents drift; the quantizer's own loss (for ``nsvq`` the dense non-stationary loss that
moves every code) plus dead-code replacement keep the codebook on the moving distribution.
Phase 2, "freeze" (``freeze_steps``): the encoder is frozen so the latent geometry stops
moving; the codebook settles onto it and the decoder adapts. No replacement here (the
NSVQ paper replaces codes only while the encoder drifts).

Loss per step: MSE(x_hat, x) + quantizer loss. The tau schedule of NS-VQ is driven by
``quantizer.set_progress(step, epoch)`` with epoch = step / steps_per_epoch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .models.autoencoder import VQAutoencoder
from .quantizers.replacement import CodeReplacement
from .training import BatchSource, Trainer, TrainResult, compile_autoencoder, make_adam, optimizer_step


def steps_per_epoch(tp, num_train: int) -> int:
    return tp.steps_per_epoch or max(1, math.ceil(num_train / tp.batch_size))


def set_encoder_frozen(model: VQAutoencoder, frozen: bool) -> None:
    model.encoder.requires_grad_(not frozen)
    model.encoder.train(not frozen)


def make_vq_step(model: VQAutoencoder, opt: torch.optim.Optimizer, source: BatchSource, tp,
                 replacement: CodeReplacement, trainer: Trainer, per_epoch: int):
    """The train_vq step: ``step_fn(step) -> metrics`` (0-dim device tensors, no host sync)."""
    quantizer = model.quantizer

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        frozen = step >= tp.track_steps
        if frozen == model.encoder.training:   # phase boundary (also right after a resume)
            set_encoder_frozen(model, frozen)
        quantizer.set_progress(step, step / per_epoch)
        x = source.batch(step)
        with trainer.autocast():
            if frozen:
                with torch.no_grad():
                    z = model.encode(x)
            else:
                z = model.encode(x)
        out = quantizer(z)
        with trainer.autocast():
            x_hat = model.decode(out.z_q)
        rec = F.mse_loss(x_hat.float(), x)
        loss = rec + out.loss
        optimizer_step(loss, opt, tp.grad_clip)
        metrics = {"loss": loss, "rec_loss": rec, "vq_loss": out.loss, **out.stats}
        replaced = replacement(quantizer, step + 1)
        if replaced is not None:
            metrics["codes_replaced"] = replaced.float()
        return metrics

    return step_fn


def prepare_vq_training(model: VQAutoencoder, train_images: np.ndarray, tp, replacement: CodeReplacement,
                        trainer: Trainer):
    """Move the model to the device, build optimizer, batches and the step; returns (step_fn, opt)."""
    model.to(trainer.device).train()
    if trainer.device.type == "cuda":
        model.encoder.to(memory_format=torch.channels_last)
        model.decoder.to(memory_format=torch.channels_last)
    # One optimizer over everything; frozen encoder params simply get no gradient in phase 2.
    opt = make_adam(model.parameters(), tp)
    source = BatchSource(train_images, tp.batch_size, tp.seed, trainer.device)
    compile_autoencoder(model, tp.compile)
    if replacement.until_step < 0:
        replacement.until_step = tp.track_steps
    step_fn = make_vq_step(model, opt, source, tp, replacement, trainer, steps_per_epoch(tp, len(train_images)))
    return step_fn, opt


def train_vq(model: VQAutoencoder, train_images: np.ndarray, tp, replacement: CodeReplacement,
             trainer: Trainer, on_log=None) -> TrainResult:
    """Two-phase VQ training of ``model`` (encoder/decoder from pretrain, quantizer attached)."""
    step_fn, opt = prepare_vq_training(model, train_images, tp, replacement, trainer)
    return trainer.fit(step_fn, {"model": model, "optimizer": opt}, on_log=on_log)

"""refine_gan: adversarial refinement, the last phase of the NSVQ schedule (VQGAN's loss).

Per step (Esser et al. 2021, "Taming Transformers", sec. 3.1 and taming-transformers'
``VQLPIPSWithDiscriminator``):

    nll     = rec(x_hat, x) + perceptual_weight * LPIPS(x_hat, x)
    L_G     = nll + lambda * L_GAN(D(x_hat))  [+ quantizer loss when the codebook trains]
    lambda  = disc_weight * ||grad_W nll|| / (||grad_W L_GAN|| + 1e-4),  W the decoder's last layer
    L_D     = discriminator loss on D(x) and D(sg(x_hat))

``train`` picks what the generator updates:

- ``decoder`` (default): encoder and quantizer are frozen and run in eval mode, so every
  image keeps its token assignments; only the decoder (and the discriminator) learn. The
  codebook settled in train_vq's frozen-encoder phase stays exactly as it was.
- ``decoder_encoder_codebook``: encoder, quantizer and decoder all train (as in VQGAN's
  single-stage training); the quantizer's own loss joins L_G and its schedules (NS-VQ's tau,
  Gumbel's temperature) stay where train_vq left them. Tokens may change; the stage
  reports how many did on the validation set.

Discriminator warm-up: the discriminator trains from the first step, the generator's GAN
term switches on at ``disc_start`` (taming-transformers instead idles both until then; a
short refinement of an already trained decoder is better served by a discriminator that
has learned something when the generator starts listening to it).

Both optimizers are Adam with betas (0.5, 0.9), as in VQGAN. The loss terms and the
discriminator are pipeline/gan/adversarial.py's, which train_vq uses too.

Under torchrun the generator's forward and the discriminator's (real and fake together) run
under DDP, so both updates average the ranks' gradients; the adaptive weight is computed from
the last layer's gradients averaged over ranks (the global batch's). The discriminator's
BatchNorm normalises each rank's share of the batch (SyncBatchNorm has no CPU path), as DDP GAN
trainers without SyncBatchNorm do; its running statistics, unused in training mode, are rank 0's
(DDP copies them to every rank at each discriminator forward).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..models.autoencoder import VQAutoencoder
from ..training.device import compile_autoencoder
from ..training.loop import TrainResult
from ..training.optim import make_adam, optimizer_step
from ..training.setup import RunOptions, Training, setup_training
from .adversarial import GAN_BETAS, AdversarialLoss
from .discriminator import PatchDiscriminator


def generator_parameters(model: VQAutoencoder, train: str) -> list[torch.nn.Parameter]:
    if train == "decoder":
        return list(model.decoder.parameters())
    if train == "decoder_encoder_codebook":
        return list(model.parameters())
    raise ValueError(f"unknown refine_gan.train {train!r}; expected 'decoder' or 'decoder_encoder_codebook'")


def set_trainable(model: VQAutoencoder, train: str) -> None:
    """Train mode and gradients for what ``train`` updates; the rest frozen in eval mode."""
    everything = train == "decoder_encoder_codebook"
    model.requires_grad_(everything)
    model.decoder.requires_grad_(True)
    model.train(everything)
    model.decoder.train()


class _Generator(nn.Module):
    """The generator's forward as one module call (what DDP wraps): ``generator_forward``."""

    def __init__(self, model: VQAutoencoder, t: Training, train_all: bool):
        super().__init__()
        self.model, self.t, self.train_all = model, t, train_all   # t: a dataclass, not a submodule

    def forward(self, x):
        return generator_forward(self.model, x, self.t, self.train_all)


def generator_forward(model: VQAutoencoder, x: torch.Tensor, t: Training, train_all: bool):
    """(x_hat fp32, the quantizer's loss or None): the tokenizer's reconstruction of ``x``; with
    ``train_all`` the encoder and quantizer run with gradients (and the quantizer's loss joins)."""
    if train_all:
        with t.trainer.autocast():
            z = model.encode(x)
        out = model.quantizer(z)
        z_q, q_loss = out.z_q, out.loss
    else:
        with torch.no_grad():
            with t.trainer.autocast():
                z = model.encode(x)
            z_q, q_loss = model.quantizer(z).z_q, None
    with t.trainer.autocast():
        x_hat = model.decode(z_q)
    return x_hat.float(), q_loss


def make_refine_step(model: VQAutoencoder, t: Training, adv: AdversarialLoss, rp,
                     progress: tuple[int, float] = (0, 0.0)):
    """The refine_gan step: ``step_fn(step) -> metrics`` (0-dim device tensors, no host sync).

    ``adv``: the run's loss terms and discriminator. ``progress``: (step, epoch) where train_vq
    left the quantizer's schedules.
    """
    train_all = rp.train == "decoder_encoder_codebook"
    gen_params = [p for g in t.optimizer.param_groups for p in g["params"]]
    # find_unused: with the codebook training, a quantizer's parameters may get no gradient.
    generator = distributed.wrap(_Generator(model, t, train_all), t.device, find_unused=train_all)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        x = t.batches.batch(step)
        if train_all:
            # train_vq's schedules end at its last step; refinement stays at their end points
            model.quantizer.set_progress(progress[0] + step, progress[1], progress[0])
        x_hat, q_loss = generator(x)
        nll, metrics = adv.nll(x_hat, x)
        loss = nll
        if q_loss is not None:
            loss = nll + q_loss
            metrics["vq_loss"] = q_loss
        gan_term, gan_metrics = adv.generator_gan_term(nll, x_hat, step)
        if gan_term is not None:
            loss = loss + gan_term
            metrics.update(gan_metrics)
        optimizer_step(loss, t.optimizer, rp.grad_clip, gen_params)
        metrics["loss"] = loss
        metrics.update(adv.discriminator_update(x, x_hat, step))
        return metrics

    return step_fn


def refine_gan(model: VQAutoencoder, train_images: np.ndarray, rp, run: RunOptions = RunOptions(), *,
               progress: tuple[int, float] = (0, 0.0), on_log=None,
               disc: PatchDiscriminator | None = None) -> TrainResult:
    """Adversarially refine ``model`` (train_vq's tokenizer) in place for ``rp.steps`` steps.

    ``progress``: (step, epoch) at which train_vq left the quantizer's schedules (used when
    the codebook trains). Returns the Trainer's result; the discriminator is discarded.
    """
    if model.quantizer is None:
        raise ValueError("refine_gan refines a VQ tokenizer: the model needs a quantizer")
    set_trainable(model, rp.train)
    t = setup_training("refine_gan", rp, model, train_images, total_steps=rp.steps, run=run,
                       parameters=generator_parameters(model, rp.train),
                       optimizer=lambda params, lp: make_adam(params, lp, betas=GAN_BETAS),
                       ddp=False)    # the step wraps its generator and discriminator forwards itself
    adv = AdversarialLoss(rp, t, model.decoder.last_layer, disc_from=0, always_discriminator=True, disc=disc)
    compile_autoencoder(model, rp.compile)
    step_fn = make_refine_step(model, t, adv, rp, progress)
    torch.manual_seed(rp.seed)   # the quantizer's noise when it trains (a resume restores the RNG state)
    result = t.fit(step_fn, {"model": model, **adv.state()}, on_log=on_log)
    model.requires_grad_(True)
    model.eval()
    return result


def token_changes(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """How many token assignments differ between two tokenizations of the same images.

    Residual tokens (N, h, w, L) count each level's code separately."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"token arrays differ in shape: {before.shape} vs {after.shape}")
    changed = int(np.count_nonzero(before != after))
    return {"val_tokens_changed": changed, "val_tokens_changed_fraction": changed / max(1, before.size)}

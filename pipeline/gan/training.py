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

Both optimizers are Adam with betas (0.5, 0.9), as in VQGAN.

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
from .discriminator import PatchDiscriminator
from .losses import adaptive_weight, discriminator_loss, generator_loss, reconstruction_loss

GAN_BETAS = (0.5, 0.9)


def build_discriminator(rp, seed: int | None = None) -> PatchDiscriminator:
    """The patch discriminator of a RefineGANParams section (seeded init when ``seed`` given)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return PatchDiscriminator(3, rp.disc_channels, rp.disc_layers)
    return PatchDiscriminator(3, rp.disc_channels, rp.disc_layers)


def perceptual_loss_fn(net: str, device: torch.device):
    """LPIPS(x_hat, x) averaged over the batch, differentiable in x_hat (offline weights).

    Images smaller than the backbone accepts are upsampled first, as the LPIPS metric does."""
    import torch.nn.functional as F

    from ..evaluation.metrics import LPIPS_MIN_SIDE
    from ..evaluation.nets import load_lpips

    lpips_model = load_lpips(net, device)
    min_side = LPIPS_MIN_SIDE[net]

    def loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        side = min(x.shape[-2:])
        if side < min_side:
            x_hat = F.interpolate(x_hat, scale_factor=min_side / side, mode="bilinear", align_corners=False)
            x = F.interpolate(x, scale_factor=min_side / side, mode="bilinear", align_corners=False)
        return lpips_model(x_hat, x).mean()

    return loss


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


class _RealFake(nn.Module):
    """D(real), D(fake) as one module call, so DDP sees one forward per discriminator update."""

    def __init__(self, disc: PatchDiscriminator):
        super().__init__()
        self.disc = disc

    def forward(self, real, fake):
        return self.disc(real), self.disc(fake)


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


def nll_loss(x_hat: torch.Tensor, x: torch.Tensor, rp, t: Training, perceptual=None):
    """(rec + perceptual_weight * LPIPS, its terms as metrics)."""
    rec = reconstruction_loss(x_hat, x, rp.rec_loss)
    metrics = {"rec_loss": rec}
    nll = rec
    if perceptual is not None:
        with t.trainer.autocast():
            p_loss = perceptual(x_hat, x).float()
        nll = rec + rp.perceptual_weight * p_loss
        metrics["perceptual_loss"] = p_loss
    metrics["nll_loss"] = nll
    return nll, metrics


def discriminator_step(disc, opt_d, x: torch.Tensor, x_hat: torch.Tensor, rp, t: Training,
                       params: list) -> dict[str, torch.Tensor]:
    """One discriminator update: real images against the (detached) reconstructions. ``disc``:
    a module giving (D(real), D(fake)) (``_RealFake``, under DDP when several ranks run)."""
    with t.trainer.autocast():
        logits_real, logits_fake = disc(x, x_hat.detach())
        logits_real, logits_fake = logits_real.float(), logits_fake.float()
    d_loss = discriminator_loss(logits_real, logits_fake, rp.gan_loss)
    optimizer_step(d_loss, opt_d, rp.grad_clip, params)
    return {"d_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}


def make_refine_step(model: VQAutoencoder, disc: PatchDiscriminator, t: Training, opt_d, rp, perceptual=None,
                     progress: tuple[int, float] = (0, 0.0)):
    """The refine_gan step: ``step_fn(step) -> metrics`` (0-dim device tensors, no host sync).

    ``perceptual(x_hat, x)``: the LPIPS term (None when perceptual_weight is 0).
    ``progress``: (step, epoch) where train_vq left the quantizer's schedules.
    """
    train_all = rp.train == "decoder_encoder_codebook"
    last_layer = model.decoder.last_layer
    gen_params = [p for g in t.optimizer.param_groups for p in g["params"]]
    disc_params = list(disc.parameters())
    # find_unused: with the codebook training, a quantizer's parameters may get no gradient.
    generator = distributed.wrap(_Generator(model, t, train_all), t.device, find_unused=train_all)
    real_fake = distributed.wrap(_RealFake(disc), t.device, broadcast_buffers=True)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        x = t.batches.batch(step)
        if train_all:
            model.quantizer.set_progress(progress[0] + step, progress[1])
        x_hat, q_loss = generator(x)
        nll, metrics = nll_loss(x_hat, x, rp, t, perceptual)
        loss = nll
        if q_loss is not None:
            loss = nll + q_loss
            metrics["vq_loss"] = q_loss
        # Generator: the GAN term (with its adaptive weight) once the warm-up is over.
        if step >= rp.disc_start and rp.disc_weight > 0:
            disc.requires_grad_(False)            # D's weights get no gradient from L_G
            with t.trainer.autocast():
                g_logits = disc(x_hat)
            g_loss = generator_loss(g_logits.float(), rp.gan_loss)
            weight = adaptive_weight(nll, g_loss, last_layer, rp.disc_weight)
            loss = loss + weight * g_loss
            disc.requires_grad_(True)
            metrics.update(g_loss=g_loss, adaptive_weight=weight)
        optimizer_step(loss, t.optimizer, rp.grad_clip, gen_params)
        metrics["loss"] = loss
        metrics.update(discriminator_step(real_fake, opt_d, x, x_hat, rp, t, disc_params))
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
    disc = (disc if disc is not None else build_discriminator(rp, seed=rp.seed)).to(t.device).train()
    opt_d = make_adam(disc.parameters(), rp, lr=rp.disc_lr or rp.lr, betas=GAN_BETAS)
    compile_autoencoder(model, rp.compile)
    perceptual = perceptual_loss_fn(rp.perceptual_net, t.device) if rp.perceptual_weight > 0 else None
    step_fn = make_refine_step(model, disc, t, opt_d, rp, perceptual, progress)
    torch.manual_seed(rp.seed)   # the quantizer's noise when it trains (a resume restores the RNG state)
    result = t.fit(step_fn, {"model": model, "discriminator": disc, "opt_d": opt_d}, on_log=on_log)
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

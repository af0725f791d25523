"""The VQGAN loss terms as one object (taming-transformers' ``VQLPIPSWithDiscriminator``):
the reconstruction + perceptual term, the generator's GAN term with its weight, and the
discriminator's update. Built from an ``AdversarialParams`` section (pipeline/config.py, where
the formulas are written); train_vq and refine_gan step through it.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..training.optim import make_adam, optimizer_step
from ..training.setup import Training
from .discriminator import PatchDiscriminator
from .losses import adaptive_weight, discriminator_loss, generator_loss, reconstruction_loss

GAN_BETAS = (0.5, 0.9)      # both of VQGAN's optimizers (taming-transformers, SimVQ)


def build_discriminator(ap, seed: int | None = None) -> PatchDiscriminator:
    """The patch discriminator of an AdversarialParams section (seeded init when ``seed`` given)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return PatchDiscriminator(3, ap.disc_channels, ap.disc_layers)
    return PatchDiscriminator(3, ap.disc_channels, ap.disc_layers)


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


class _RealFake(nn.Module):
    """D(real), D(fake) as one module call, so DDP sees one forward per discriminator update."""

    def __init__(self, disc: PatchDiscriminator):
        super().__init__()
        self.disc = disc

    def forward(self, real, fake):
        return self.disc(real), self.disc(fake)


class AdversarialLoss:
    """The loss terms of one run: ``nll`` (rec + perceptual), ``generator_gan_term`` and
    ``discriminator_update``.

    ``ap``: an AdversarialParams section (with a LoopParams' lr, grad_clip, seed). The
    discriminator exists when ``ap.disc_weight > 0`` or ``always_discriminator`` (refine_gan
    trains it even with the GAN term off); it updates from step ``disc_from`` on.
    ``state()``: what a checkpoint must hold besides the model and its optimizer.
    """

    def __init__(self, ap, t: Training, last_layer: torch.Tensor, *, disc_from: int = 0,
                 always_discriminator: bool = False, disc: PatchDiscriminator | None = None):
        self.ap, self.t, self.last_layer, self.disc_from = ap, t, last_layer, disc_from
        self.perceptual = perceptual_loss_fn(ap.perceptual_net, t.device) if ap.perceptual_weight > 0 else None
        self.disc = None
        if ap.disc_weight > 0 or always_discriminator:
            self.disc = (disc if disc is not None else build_discriminator(ap, seed=ap.seed)).to(t.device).train()
            self.opt_d = make_adam(self.disc.parameters(), ap, lr=ap.disc_lr or ap.lr, betas=GAN_BETAS)
            self.disc_params = list(self.disc.parameters())
            self.real_fake = distributed.wrap(_RealFake(self.disc), t.device, broadcast_buffers=True)

    def state(self) -> dict:
        return {} if self.disc is None else {"discriminator": self.disc, "opt_d": self.opt_d}

    def nll(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(rec + perceptual_weight * LPIPS, its terms as metrics)."""
        rec = reconstruction_loss(x_hat, x, self.ap.rec_loss)
        metrics = {"rec_loss": rec}
        nll = rec
        if self.perceptual is not None:
            with self.t.trainer.autocast():
                p_loss = self.perceptual(x_hat, x).float()
            nll = rec + self.ap.perceptual_weight * p_loss
            metrics["perceptual_loss"] = p_loss
        metrics["nll_loss"] = nll
        return nll, metrics

    def gan_on(self, step: int) -> bool:
        return self.ap.disc_weight > 0 and step >= self.ap.disc_start

    def generator_gan_term(self, nll: torch.Tensor, x_hat: torch.Tensor, step: int
                           ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """lambda * L_GAN(D(x_hat)) once the GAN term is on (None before), and its metrics."""
        if not self.gan_on(step):
            return None, {}
        self.disc.requires_grad_(False)            # D's weights get no gradient from L_G
        with self.t.trainer.autocast():
            g_logits = self.disc(x_hat)
        g_loss = generator_loss(g_logits.float(), self.ap.gan_loss)
        if self.ap.adaptive_weight:
            weight = adaptive_weight(nll, g_loss, self.last_layer, self.ap.disc_weight)
        else:
            weight = torch.tensor(self.ap.disc_weight, device=g_loss.device)
        self.disc.requires_grad_(True)
        return weight * g_loss, {"g_loss": g_loss, "adaptive_weight": weight}

    def discriminator_update(self, x: torch.Tensor, x_hat: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One discriminator update on real images against the (detached) reconstructions."""
        if self.disc is None or step < self.disc_from:
            return {}
        with self.t.trainer.autocast():
            logits_real, logits_fake = self.real_fake(x, x_hat.detach())
            logits_real, logits_fake = logits_real.float(), logits_fake.float()
        d_loss = discriminator_loss(logits_real, logits_fake, self.ap.gan_loss)
        optimizer_step(d_loss, self.opt_d, self.ap.grad_clip, self.disc_params)
        return {"d_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}

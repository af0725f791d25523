"""Losses of the adversarial refinement (VQGAN, Esser et al. 2021, "Taming Transformers").

- :func:`reconstruction_loss` - L1 (VQGAN) or MSE on pixels in [-1, 1].
- :func:`discriminator_loss` / :func:`generator_loss` - the hinge GAN (Lim & Ye 2017, as in
  VQGAN's ``hinge_d_loss``) or the non-saturating GAN (Goodfellow et al. 2014):

  | gan_loss         | discriminator                                      | generator                |
  |------------------|----------------------------------------------------|--------------------------|
  | hinge            | 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])    | -E[D(x_hat)]             |
  | non_saturating   | 0.5 (E[softplus(-D(x))] + E[softplus(D(x_hat))])   | E[softplus(-D(x_hat))]   |

  (softplus(-l) = -log sigmoid(l): the usual cross-entropy on logits.)
- :func:`adaptive_weight` - VQGAN eq. 7: lambda = ||grad_{G_L}[L_rec]|| / (||grad_{G_L}[L_GAN]|| + delta),
  delta = 1e-4, G_L the decoder's last layer; clamped to [0, 1e4], detached, then scaled
  by ``disc_weight`` (taming-transformers' ``calculate_adaptive_weight``).

The perceptual (LPIPS) term comes from :func:`pipeline.evaluation.nets.load_lpips`, imported
lazily by the training recipe: this module needs torch alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed

GAN_LOSSES = ("hinge", "non_saturating")

#: delta of VQGAN eq. 7 and the clamp of taming-transformers' implementation.
ADAPTIVE_EPS = 1e-4
ADAPTIVE_MAX = 1e4


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``mse``) pixel error."""
    if kind == "l1":
        return (x_hat.float() - x.float()).abs().mean()
    if kind == "mse":
        return F.mse_loss(x_hat.float(), x.float())
    raise ValueError(f"unknown reconstruction loss {kind!r}; expected 'l1' or 'mse'")


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; expected one of {', '.join(GAN_LOSSES)}")


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The discriminator's loss on patch logits of real and generated images (see table above)."""
    _check_kind(kind)
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The generator's adversarial loss on the patch logits of its images (see table above)."""
    _check_kind(kind)
    if kind == "hinge":
        return -logits_fake.mean()
    return F.softplus(-logits_fake).mean()


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 1.0) -> torch.Tensor:
    """VQGAN's adaptive weight (Esser et al. 2021, eq. 7), a detached 0-dim tensor:

        disc_weight * clamp(||d rec_loss / d W|| / (||d gan_loss / d W|| + 1e-4), 0, 1e4)

    ``W = last_layer`` (the decoder's output conv weight). Both losses must depend on it;
    their graphs are kept (``retain_graph``) for the backward pass that follows.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    if distributed.active():   # the global batch's gradients (each rank's loss is its share's mean)
        g_rec, g_gan = distributed.all_reduce_mean(g_rec.clone()), distributed.all_reduce_mean(g_gan.clone())
    weight = torch.linalg.vector_norm(g_rec.float()) / (torch.linalg.vector_norm(g_gan.float()) + ADAPTIVE_EPS)
    return weight.clamp(0.0, ADAPTIVE_MAX).detach() * disc_weight

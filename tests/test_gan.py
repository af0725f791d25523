"""Adversarial refinement: GAN losses and the adaptive weight pinned on hand-checkable cases,
the patch discriminator's output grid, and what each `refine_gan.train` mode updates."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, Params, RefineGANParams
from pipeline.configbase import build
from pipeline.gan.discriminator import PatchDiscriminator, patch_grid
from pipeline.gan.losses import adaptive_weight, discriminator_loss, generator_loss, reconstruction_loss
from pipeline.gan.training import refine_gan, token_changes
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.models.inference import reconstruct
from pipeline.quantizers.vq import VQ
from pipeline.training.setup import RunOptions


def test_hinge_loss_hand_case():
    real = torch.tensor([2.0, 0.5])        # relu(1 - real) = (0, 0.5): mean 0.25
    fake = torch.tensor([-2.0, 0.5])       # relu(1 + fake) = (0, 1.5): mean 0.75
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (0.25 + 0.75))
    assert generator_loss(fake, "hinge").item() == pytest.approx(0.75)        # -mean(fake)
    # A discriminator beyond the margins (real >= 1, fake <= -1) has zero loss and no gradient.
    real, fake = torch.tensor([1.0, 3.0], requires_grad=True), torch.tensor([-1.0, -4.0], requires_grad=True)
    loss = discriminator_loss(real, fake, "hinge")
    loss.backward()
    assert loss.item() == 0 and not real.grad.any() and not fake.grad.any()
    # Inside the margins: d/d real_i = -0.5 / n, d/d fake_i = +0.5 / n.
    real, fake = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    discriminator_loss(real, fake, "hinge").backward()
    assert torch.allclose(real.grad, torch.full((4,), -0.125)) and torch.allclose(fake.grad, torch.full((4,), 0.125))


def test_non_saturating_loss_hand_case():
    zero = torch.zeros(3)
    assert discriminator_loss(zero, zero, "non_saturating").item() == pytest.approx(math.log(2))
    assert generator_loss(zero, "non_saturating").item() == pytest.approx(math.log(2))
    # -log sigmoid(l): l = log 3 gives sigmoid 3/4
    fake = torch.tensor([math.log(3.0)])
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(-math.log(0.75))
    assert discriminator_loss(torch.tensor([math.log(3.0)]), torch.tensor([-math.log(3.0)]),
                              "non_saturating").item() == pytest.approx(-math.log(0.75))
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss(zero, "wasserstein")


def test_reconstruction_losses():
    a, b = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.0])
    assert reconstruction_loss(a, b, "l1").item() == pytest.approx(1.5)
    assert reconstruction_loss(a, b, "mse").item() == pytest.approx(2.5)


def test_adaptive_weight_hand_case():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    rec = w @ torch.tensor([3.0, 4.0])            # grad (3, 4): norm 5
    gan = w @ torch.tensor([0.0, 2.0])            # grad (0, 2): norm 2
    lam = adaptive_weight(rec, gan, w, disc_weight=0.5)
    assert lam.item() == pytest.approx(0.5 * 5 / (2 + 1e-4))
    assert not lam.requires_grad and lam.dim() == 0
    # The graphs survive for the backward pass that follows.
    (rec + lam * gan).backward()
    assert torch.allclose(w.grad, torch.tensor([3.0, 4.0 + 2 * lam.item()]))
    # Quadratic case: rec = |w|^2 -> grad 2w, norm 2 sqrt(5); gan = 10 w_0 -> norm 10.
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    lam = adaptive_weight((w ** 2).sum(), 10 * w[0], w)
    assert lam.item() == pytest.approx(2 * math.sqrt(5) / (10 + 1e-4))
    # A GAN loss with no gradient at the layer: 5 / 1e-4 = 5e4, clamped to 1e4.
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    lam = adaptive_weight(w @ torch.tensor([3.0, 4.0]), 0 * w.sum(), w, disc_weight=2.0)
    assert lam.item() == pytest.approx(2.0 * 1e4)


def test_adaptive_weight_balances_gradients_at_decoder_last_layer():
    torch.manual_seed(0)
    model = _model()
    disc = PatchDiscriminator(3, 8, 1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    x_hat = model.decode(model.encode(x))
    rec = reconstruction_loss(x_hat, x)
    gan = generator_loss(disc(x_hat))
    lam = adaptive_weight(rec, gan, model.decoder.last_layer, disc_weight=0.8)
    g_rec = torch.autograd.grad(rec, model.decoder.last_layer, retain_graph=True)[0].norm().item()
    g_gan = torch.autograd.grad(gan, model.decoder.last_layer)[0].norm().item()
    # After weighting, the GAN gradient at the last layer is disc_weight times the rec gradient
    # (up to the 1e-4 in the denominator).
    assert lam.item() * g_gan == pytest.approx(0.8 * g_rec * g_gan / (g_gan + 1e-4), rel=1e-5)


@pytest.mark.parametrize("size, layers, grid", [(32, 2, 6), (32, 3, 2), (64, 3, 6), (16, 1, 6)])
def test_patch_discriminator_gives_one_logit_per_patch(size, layers, grid):
    disc = PatchDiscriminator(3, 8, layers)
    assert patch_grid(size, layers) == grid
    assert disc(torch.zeros(2, 3, size, size)).shape == (2, 1, grid, grid)


def test_discriminator_too_deep_for_images_is_a_config_error():
    with pytest.raises(ConfigError, match="refine_gan.disc_layers: 4 is too deep for data.image_size 32"):
        build(Params, {"refine_gan": {"disc_layers": 4}})
    build(Params, {"refine_gan": {"disc_layers": 3}})


def _model(k: int = 8) -> VQAutoencoder:
    torch.manual_seed(0)
    return VQAutoencoder(hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=4, code_dim=4,
                         quantizer=VQ(k, 4))


def _images(n=16, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _refine(model, tmp_path=None, stop_after=None, **over):
    rp = build(RefineGANParams, {"steps": 6, "batch_size": 4, "disc_start": 2, "disc_layers": 1, "disc_channels": 8,
                                 "perceptual_weight": 0.0, "log_every": 2, "checkpoint_every": 2, "lr": 1e-3,
                                 **over})
    run = RunOptions(tmp_path and tmp_path / "ck.pt", "f", "cpu", progress=False, stop_after=stop_after)
    return refine_gan(model, _images(), rp, run)


def test_decoder_mode_keeps_encoder_codebook_and_tokens():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, tokens_before = reconstruct(model, _images(), "cpu")
    result = _refine(model)
    for k, v in model.state_dict().items():
        if k.startswith("decoder."):
            continue
        assert torch.equal(v, before[k]), k                   # encoder, codebook, usage counts
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith("decoder."))
    _, tokens_after = reconstruct(model, _images(), "cpu")
    assert token_changes(tokens_before, tokens_after) == {"val_tokens_changed": 0, "val_tokens_changed_fraction": 0.0}
    logged = set().union(*result.history)
    assert {"d_loss", "g_loss", "adaptive_weight", "logits_real", "logits_fake", "rec_loss", "loss"} <= logged
    # The GAN term is off during the warm-up (steps 0, 1) and on afterwards.
    assert "g_loss" not in result.history[0] and "g_loss" in result.history[1]
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_full_mode_trains_encoder_and_codebook():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _refine(model, train="decoder_encoder_codebook", gan_loss="non_saturating")
    assert not torch.equal(model.state_dict()["encoder.net.0.weight"], before["encoder.net.0.weight"])
    assert not torch.equal(model.quantizer.embedding, before["quantizer.embedding"])
    assert "vq_loss" in result.final


def test_zero_steps_changes_nothing():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _refine(model, steps=0)
    assert result.steps == 0 and result.history == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_perceptual_term_and_resume(tmp_path):
    ref = _model()
    ref_result = _refine(ref, perceptual_weight=1.0)
    assert "perceptual_loss" in ref_result.final and ref_result.final["perceptual_loss"] > 0
    part = _model()
    _refine(part, tmp_path, stop_after=3, perceptual_weight=1.0)
    model = _model()
    result = _refine(model, tmp_path, perceptual_weight=1.0)
    assert result.resumed_from == 3 and result.history == ref_result.history
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_token_changes_counts_levels():
    a = np.zeros((2, 2, 2, 3), np.int64)
    b = a.copy()
    b[0, 0, 0, 2] = 1
    b[1, 1, 1] = 5
    assert token_changes(a, b) == {"val_tokens_changed": 4, "val_tokens_changed_fraction": 4 / 24}


def test_core_modules_import_with_torch_alone():
    """The GAN and prior recipes are core: they import where lpips, MLflow, Prefect, ... are absent."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = """
import importlib.abc, sys
BLOCK = {"lpips", "mlflow", "prefect", "skimage", "cleanfid", "dvc", "yaml", "matplotlib", "scipy", "torchvision"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Blocker())
import pipeline.gan.losses, pipeline.gan.discriminator, pipeline.gan.training
import pipeline.prior.model, pipeline.prior.training, pipeline.pretraining, pipeline.vq_training
import pipeline.training.setup, pipeline.models.io, pipeline.models.inference, pipeline.quantizers.registry
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_validation_pass_streams_to_the_one_pass_numbers(monkeypatch):
    """refine_gan's before/after check reads the validation split in chunks (ImageNet's 50,000
    images need not fit in memory) and gives the numbers of one pass."""
    from pipeline.evaluation.metrics import lpips_distance, mse
    from pipeline.gan import refine as refine_mod
    from pipeline.models.inference import reconstruct

    model = _model()
    val = _images()[:7]
    recon, tokens = reconstruct(model, val, "cpu")
    monkeypatch.setattr(refine_mod, "VAL_CHUNK", 3)
    quality, got_tokens, kept = refine_mod.validation_pass(model, val, "alex", "cpu", keep=4)
    assert np.array_equal(got_tokens, tokens) and np.array_equal(kept, recon[:4])
    assert quality["mse"] == pytest.approx(mse(val, recon), rel=1e-12)
    assert quality["lpips"] == pytest.approx(float(np.mean(lpips_distance(val, recon, net="alex"))), rel=1e-6)

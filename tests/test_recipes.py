"""train_vq's VQGAN recipe (reconstruction kind, LPIPS, the patch GAN from disc_start, the adaptive
or fixed weight) and the EMA of the weights: formulas on hand cases, the terms switching on where
the params say, the freezing phase and replacement with them on, and an exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import QuantizerParams, TrainVQParams
from pipeline.configbase import build
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.quantizers import build_quantizer
from pipeline.quantizers.replacement import CodeReplacement
from pipeline.training.setup import RunOptions
from pipeline.training.weight_ema import WeightEMA
from pipeline.vq_training import train_vq

RECIPE = {"track_steps": 6, "freeze_steps": 4, "batch_size": 4, "lr": 1e-3, "log_every": 1, "checkpoint_every": 3,
          "rec_loss": "l1", "perceptual_weight": 0.5, "disc_weight": 0.8, "disc_start": 3, "disc_layers": 1,
          "disc_channels": 8, "ema_decay": 0.9, "betas": [0.5, 0.9]}


def _images(n=16, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _model(method="nsvq"):
    torch.manual_seed(0)
    qp = build(QuantizerParams, {"method": method, "codebook_size": 8,
                                 "replacement": {"period": 2, "dense_until": 0, "threshold": 2.0}}, "quantizer")
    model = VQAutoencoder(hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=4, code_dim=4,
                          quantizer=build_quantizer(qp, 4))
    return model, CodeReplacement.from_params(qp.replacement)


def _train(tmp_path, stop_after=None, **over):
    tp = build(TrainVQParams, {**RECIPE, **over}, "train_vq")
    model, replacement = _model()
    run = RunOptions(tmp_path / "ck.pt", "fp", "cpu", progress=False, stop_after=stop_after)
    return model, train_vq(model, _images(), tp, replacement, run)


def test_weight_ema_is_the_moving_average_of_the_weights():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = WeightEMA(lin, 0.5)
    for w in (3.0, 5.0):
        with torch.no_grad():
            lin.weight.fill_(w)
        ema.update()
    # 1 -> 0.5 * 1 + 0.5 * 3 = 2 -> 0.5 * 2 + 0.5 * 5 = 3.5
    assert ema.averaged_state_dict(lin)["weight"].item() == 3.5
    assert lin.weight.item() == 5.0                      # the live weights are left alone


def test_the_recipe_terms_switch_on_where_the_params_say(tmp_path):
    model, result = _train(tmp_path)
    rows = {h["step"]: h for h in result.history}
    assert all("perceptual_loss" in rows[s] and "nll_loss" in rows[s] for s in rows)
    # taming's schedule: neither the discriminator nor the generator's GAN term before disc_start
    # (steps are 0-based: logged step s is step s - 1)
    assert [s for s in rows if "d_loss" in rows[s]] == list(range(4, 11))
    assert [s for s in rows if "g_loss" in rows[s]] == list(range(4, 11))
    assert "codes_replaced" in rows[2]                                      # replacement in phase 1
    for s in rows:
        r = rows[s]
        assert r["nll_loss"] == pytest.approx(r["rec_loss"] + 0.5 * r["perceptual_loss"], rel=1e-5)
    assert result.ema_state_dict is not None
    live = model.state_dict()
    assert any(not torch.equal(live[k].cpu(), v) for k, v in result.ema_state_dict.items() if torch.is_tensor(v))


def test_a_fixed_gan_weight_is_disc_weight(tmp_path):
    _, result = _train(tmp_path, adaptive_weight=False)
    weights = [h["adaptive_weight"] for h in result.history if "adaptive_weight" in h]
    assert len(weights) == 7 and weights == pytest.approx([0.8] * 7)


def test_the_encoder_stays_frozen_in_phase_two_with_the_gan_on(tmp_path):
    tp = build(TrainVQParams, {**RECIPE, "track_steps": 3, "freeze_steps": 3, "disc_start": 1}, "train_vq")
    model, replacement = _model()
    snapshots = {}
    from pipeline.vq_training import prepare_vq_training

    step_fn, t, state = prepare_vq_training(model, _images(), tp, replacement, RunOptions(progress=False, device="cpu"))
    for step in range(6):          # steps 0-2 train the encoder, 3-5 do not
        metrics = step_fn(step)
        snapshots[step] = [p.detach().clone() for p in model.encoder.parameters()]
    assert "discriminator" in state and "weight_ema" in state and "g_loss" in metrics
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(snapshots[a], snapshots[b]))  # noqa: E731
    assert not same(0, 2) and same(2, 5)


def test_resume_with_every_term_on_equals_an_uninterrupted_run(tmp_path):
    ref_model, ref = _train(tmp_path / "a")
    _train(tmp_path / "b", stop_after=4)
    model, res = _train(tmp_path / "b")
    assert res.resumed_from == 4 and res.history == ref.history
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    for k, v in ref.ema_state_dict.items():
        if torch.is_tensor(v):
            assert torch.equal(v, res.ema_state_dict[k]), k


def test_the_default_train_vq_builds_no_extra_term(tmp_path):
    tp = build(TrainVQParams, {"track_steps": 2, "freeze_steps": 1, "batch_size": 4, "log_every": 1}, "train_vq")
    model, replacement = _model()
    result = train_vq(model, _images(), tp, replacement, RunOptions(device="cpu", progress=False))
    keys = set().union(*result.history)
    assert not keys & {"perceptual_loss", "nll_loss", "d_loss", "g_loss"} and result.ema_state_dict is None

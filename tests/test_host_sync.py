"""No host syncs in the hot loop: every stage's training step, for every quantizer
method, runs only ops that leave the host free to queue the next step's work on a GPU.

The check (tools/host_sync.py) records the ATen ops that would make the host wait for the
device; it runs here on the CPU, where CI runs. The trainer's one read per log interval is
outside the step and not counted. On the GPU, bench/bench_train.py counts the real syncs with
torch's sync debug mode.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import PretrainParams, PriorParams, QuantizerParams, RefineGANParams, TrainVQParams
from pipeline.configbase import build
from pipeline.gan.training import refine_gan
from tools.host_sync import HostSyncRecorder
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.pretraining import pretrain_autoencoder
from pipeline.prior.training import build_prior, train_prior
from pipeline.quantizers import METHODS, CodeReplacement, build_quantizer
from pipeline.training.loop import Trainer
from pipeline.training.setup import RunOptions
from pipeline.vq_training import train_vq

STEPS = 4


@pytest.fixture(autouse=True)
def optimizers_as_on_cuda(monkeypatch):
    """The stages build fused Adam/AdamW on CUDA, whose step counters stay on the device. On the
    CPU they build torch's default Adam, which reads its step counter with .item(): check the
    optimizer the GPU runs."""
    for name in ("Adam", "AdamW"):
        cls = getattr(torch.optim, name)
        monkeypatch.setattr(torch.optim, name, lambda *a, _cls=cls, **kw: _cls(*a, **{**kw, "fused": True}))


def test_recorder_flags_host_reads_and_data_dependent_shapes():
    x = torch.randn(10)
    with HostSyncRecorder() as rec:
        x.sum().item()
        bool(x[0] > 0)
        x[x > 0]
        torch.unique(x)
        torch.multinomial(x.abs(), 1)
        torch.multinomial(x.abs(), 3, replacement=False)
        y = x.clone()
        y[x > 0] = 1.0
    assert rec.syncs == ["aten._local_scalar_dense.default"] * 2 + [
        "aten.index.Tensor", "aten._unique2.default", "aten.multinomial.default", "aten.multinomial.default",
        "aten.index_put_.default"]


def test_recorder_passes_fixed_shape_device_ops():
    x = torch.randn(10)
    with HostSyncRecorder() as rec:
        torch.where(x > 0, x, 0.0)
        x.masked_fill(x > 0, 0.0)
        x[torch.tensor([1, 3])]
        torch.multinomial(x.abs(), 5, replacement=True)
        x.argmin()
        torch.bincount(torch.tensor([0, 2]), minlength=4)[:0]   # listed: its size is max(input) + 1
    assert rec.syncs == ["aten.bincount.default"]


@pytest.fixture
def recorded(monkeypatch) -> dict:
    """Every training step run under a recorder: {"syncs": the ops that would sync, "steps": the
    number of steps recorded per trainer name}."""
    seen = {"syncs": [], "steps": {}}
    fit = Trainer.fit

    def recorded_fit(self, step_fn, state, on_log=None, stop_after=None):
        def step(s):
            with HostSyncRecorder() as rec:
                out = step_fn(s)
            seen["syncs"].extend(f"{self.name} step {s}: {op}" for op in rec.syncs)
            seen["steps"][self.name] = seen["steps"].get(self.name, 0) + 1
            return out
        return fit(self, step, state, on_log, stop_after)

    monkeypatch.setattr(Trainer, "fit", recorded_fit)
    return seen


RUN = RunOptions(device="cpu", progress=False)


def _images(n=16, size=16):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _model(quantizer=None) -> VQAutoencoder:
    torch.manual_seed(0)
    return VQAutoencoder(hidden_channels=8, res_channels=8, num_res_blocks=1, downsample=4, code_dim=4,
                         quantizer=quantizer)


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_vq_step_has_no_host_syncs(method, levels, recorded):
    """Both phases (tracking, then the frozen encoder) and a code-replacement round each step."""
    extra = {"transvq": {"model_dim": 16}} if method == "transvq" else {}
    qp = build(QuantizerParams, {"method": method, "codebook_size": 16, "levels": levels, **extra})
    model = _model(build_quantizer(qp, 4))
    tp = build(TrainVQParams, {"track_steps": STEPS // 2, "freeze_steps": STEPS // 2, "batch_size": 4})
    replacement = CodeReplacement("importance", period=1, until_step=STEPS)
    result = train_vq(model, _images(), tp, replacement, RUN)
    assert result.steps == STEPS and recorded["steps"] == {"train_vq": STEPS}
    assert not recorded["syncs"], recorded["syncs"]


def test_pretrain_refine_gan_and_prior_steps_have_no_host_syncs(recorded):
    images = _images()
    model = _model()
    pretrain_autoencoder(model, images, build(PretrainParams, {"steps": STEPS, "batch_size": 4}), RUN)

    model = _model(build_quantizer(build(QuantizerParams, {"codebook_size": 16}), 4))
    rp = build(RefineGANParams, {"steps": STEPS, "batch_size": 4, "disc_start": 1, "disc_layers": 1,
                                 "disc_channels": 8, "perceptual_weight": 0.0, "train": "decoder_encoder_codebook"})
    refine_gan(model, images, rp, RUN)

    pp = build(PriorParams, {"steps": STEPS, "batch_size": 4, "layers": 1, "heads": 2, "width": 16,
                             "warmup_steps": 1})
    seqs = np.random.default_rng(0).integers(0, 16, (8, 6))
    train_prior(build_prior(pp, 16, 6), seqs, pp, RUN)
    assert recorded["steps"] == {"pretrain": STEPS, "refine_gan": STEPS, "train_prior": STEPS}
    assert not recorded["syncs"], recorded["syncs"]

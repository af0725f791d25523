"""Model files: every quantizer method survives save_autoencoder -> load_autoencoder, including
host state kept outside tensors (SF-DiVeQ's warm-up flag travels as module extra state)."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelParams, QuantizerParams
from pipeline.configbase import build
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.models.io import load_autoencoder, save_autoencoder
from pipeline.quantizers import build_quantizer
from pipeline.quantizers.registry import METHODS

TINY_MODEL = {"hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1, "downsample": 2, "code_dim": 4}


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_round_trips_through_a_model_file(tmp_path, method, levels):
    torch.manual_seed(0)
    mp = build(ModelParams, TINY_MODEL, "model")
    qp = build(QuantizerParams, {"method": method, "codebook_size": 8, "levels": levels,
                                 "sf_diveq": {"skip_steps": 2, "avg_steps": 1},
                                 "sf_diveq_detach": {"skip_steps": 2, "avg_steps": 1}}, "quantizer")
    model = VQAutoencoder.from_params(mp, build_quantizer(qp, mp.code_dim))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    model.train()
    for step in range(3):   # past SF-DiVeQ's warm-up: its codebook is initialised from latents
        model.quantizer.set_progress(step, 0.0)
        model(x)

    path = tmp_path / "model.pt"
    save_autoencoder(path, model, mp, qp, meta={"method": method})
    loaded, blob = load_autoencoder(path)

    assert blob["meta"] == {"method": method}
    model.eval()
    with torch.no_grad():
        want, want_out = model(x)
        got, got_out = loaded(x)
    torch.testing.assert_close(got, want)
    assert torch.equal(got_out.indices, want_out.indices)
    if method.startswith("sf_diveq"):
        flags = [m.initialized for m in loaded.modules() if hasattr(m, "initialized")]
        assert flags and all(flags), "a loaded SF-DiVeQ must not redo its warm-up"

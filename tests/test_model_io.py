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

TINY_MODEL = {"code_dim": 4, "ns_vqvae": {"hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1, "downsample": 2}}


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
    save_autoencoder(path, model, qp, meta={"method": method})
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


def test_a_model_file_in_the_older_params_layout_still_loads(tmp_path):
    """Files written before quantizer.search existed (search_chunk / kernel_precision at the top of
    the quantizer section, sf_diveq_detach reading sf_diveq's options) rebuild the same model."""
    from pipeline.configbase import to_dict
    from pipeline.torchio import atomic_save, cpu_state_dict

    torch.manual_seed(0)
    mp = build(ModelParams, TINY_MODEL, "model")
    qp = build(QuantizerParams, {"method": "sf_diveq_detach", "codebook_size": 8,
                                 "sf_diveq_detach": {"skip_steps": 0, "avg_steps": 0}}, "quantizer")
    model = VQAutoencoder.from_params(mp, build_quantizer(qp, mp.code_dim)).eval()
    old = {k: v for k, v in to_dict(qp).items() if k not in METHODS and k != "search"}
    old.update(method="sf_diveq_detach", search_chunk=64, kernel_precision="fp32",
               sf_diveq={"sigma": 0.001, "skip_steps": 0, "avg_steps": 0, "inference": "codes"})   # sigma: an old file's key
    atomic_save({"model": to_dict(mp), "quantizer": old, "state_dict": cpu_state_dict(model), "meta": {}},
                tmp_path / "old.pt")
    loaded, _ = load_autoencoder(tmp_path / "old.pt")
    assert loaded.quantizer.search_params.chunk == 64
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])

"""model.arch: the three architectures' structure, the VQGAN's parameter count against the reference
model, every architecture with every quantizer method (and residual levels), their shape checks at
params load, and model files of each."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, QuantizerParams, load_params
from pipeline.configbase import build
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.models.io import load_autoencoder, save_autoencoder
from pipeline.models.registry import ARCHS
from pipeline.models.vqgan import AttnBlock
from pipeline.quantizers import build_quantizer
from pipeline.quantizers.registry import METHODS
from tests.conftest import REPO

#: tiny options of every architecture (GroupNorm groups that divide the small widths)
TINY = {
    "ns_vqvae": {"hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1, "downsample": 4},
    "ns_imagenet": {"channels": [8, 8, 16], "num_res_blocks": 1, "norm_groups": 4},
    "vqgan": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "norm_groups": 4},
}


def test_every_registered_architecture_has_a_tiny_case_a_params_section_and_a_readme_row():
    import yaml

    from pipeline.models.registry import markdown_table, readme_with_table

    assert set(TINY) == set(ARCHS)
    assert set(ARCHS) <= set(yaml.safe_load((REPO / "params.yaml").read_text())["model"])   # DVC reads model.<arch>
    readme = (REPO / "README.md").read_text()
    assert readme_with_table(readme) == readme and markdown_table() in readme, \
        "README's architecture table is out of date: run `python -m pipeline.models.registry --readme`"


def test_vqgan_at_tamings_imagenet_f16_setting_has_the_reference_parameter_count():
    # taming-transformers (CompVis, commit 3ba01b2), configs/imagenet_vqgan.yaml: ch 128,
    # ch_mult [1,1,2,2,4], 2 res blocks, attention at 16, z_channels = embed_dim = 256, 256 px.
    # Its Encoder + Decoder + quant_conv + post_quant_conv (no codebook), counted by
    # instantiating taming's own modules: 29,298,176 + 42,449,795 + 2 * 65,792 = 71,879,555.
    model = VQAutoencoder("vqgan", 256, image_size=256, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                          attn_resolutions=[16])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.encoder) == 29_298_176 + 65_792
    assert count(model.decoder) == 42_449_795 + 65_792
    assert count(model) == 71_879_555
    attn = [n for n, m in model.encoder.named_modules() if isinstance(m, AttnBlock)]
    assert attn == ["down.4.attn.0", "down.4.attn.1", "mid.attn_1"]    # the 16 x 16 level and the middle


def test_vqgan_attention_is_softmax_qk_over_sqrt_c_times_v():
    torch.manual_seed(0)
    block = AttnBlock(4, groups=2)
    x = torch.randn(1, 4, 2, 3)
    h = block.norm(x)
    q, k, v = (m(h).reshape(4, 6) for m in (block.q, block.k, block.v))     # (C, positions)
    w = torch.softmax(q.T @ k / 2.0, dim=-1)                                  # sqrt(C) = 2
    expected = x + block.proj_out((v @ w.T).reshape(1, 4, 2, 3))
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_ns_imagenet_is_the_supplementary_network():
    model = VQAutoencoder("ns_imagenet", 64, image_size=32)
    strided = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in strided] == [
        (3, 128, (4, 4)), (128, 256, (4, 4)), (256, 512, (4, 4))]
    up = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in up] == [(512, 256), (256, 128), (128, 128)]
    assert model.encoder.quant_conv.kernel_size == (1, 1) and model.decoder.post_quant_conv.kernel_size == (1, 1)
    assert model.encoder.net[-1].kernel_size == (3, 3) and model.encoder.net[-1].out_channels == 64
    assert isinstance(model.decoder.net[-1], nn.Tanh) and model.decoder.net[-2].kernel_size == (3, 3)
    assert model.encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 64, 4, 4)


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", list(TINY))
def test_every_architecture_trains_with_every_method(arch, method, levels):
    torch.manual_seed(0)
    qp = build(QuantizerParams, {"method": method, "codebook_size": 8, "levels": levels,
                                 "sf_diveq": {"skip_steps": 1, "avg_steps": 1},
                                 "sf_diveq_detach": {"skip_steps": 1, "avg_steps": 1}}, "quantizer")
    model = VQAutoencoder(arch, 4, quantizer=build_quantizer(qp, 4), image_size=16, **TINY[arch]).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for step in range(3):           # past SF-DiVeQ's warm-up
        model.quantizer.set_progress(step, 0.0)
        x_hat, out = model(x)
        ((x_hat - x) ** 2).mean().add(out.loss).backward()
    side = 16 // model.factor
    assert x_hat.shape == x.shape and out.indices.shape[:3] == (2, side, side)
    assert model.decoder.last_layer.grad is not None and model.decoder.last_layer.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", list(TINY))
def test_every_architecture_runs_under_bf16_autocast_in_channels_last(arch):
    """The GPU path's layout and precision (here on the CPU: autocast bf16, channels-last)."""
    qp = build(QuantizerParams, {"method": "vq", "codebook_size": 8}, "quantizer")
    model = VQAutoencoder(arch, 4, quantizer=build_quantizer(qp, 4), image_size=16, **TINY[arch])
    model.to(memory_format=torch.channels_last)
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat, out = model(x)
    x_hat.float().mean().add(out.loss).backward()
    assert torch.isfinite(x_hat.float()).all()


@pytest.mark.parametrize("arch", list(TINY))
def test_a_model_file_of_every_architecture_rebuilds_it(tmp_path, arch):
    torch.manual_seed(0)
    qp = build(QuantizerParams, {"method": "vq", "codebook_size": 8}, "quantizer")
    model = VQAutoencoder(arch, 4, quantizer=build_quantizer(qp, 4), image_size=16, **TINY[arch]).eval()
    save_autoencoder(tmp_path / "m.pt", model, qp)
    loaded, blob = load_autoencoder(tmp_path / "m.pt")
    assert blob["model"] == {"arch": arch, "code_dim": 4, arch: loaded.config[arch]} and blob["image_size"] == 16
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_a_model_file_from_before_model_arch_loads_as_ns_vqvae(tmp_path):
    model = VQAutoencoder(code_dim=4, **TINY["ns_vqvae"])
    torch.save({"model": {**TINY["ns_vqvae"], "code_dim": 4}, "quantizer": None,
                "state_dict": model.state_dict(), "meta": {}}, tmp_path / "old.pt")
    loaded, _ = load_autoencoder(tmp_path / "old.pt")
    assert loaded.config == model.config


def _raw():
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["model"].update(arch="ns_imagenet") or r["data"].update(image_size=36), "data.image_size"),
    (lambda r: r["model"].update(arch="vqgan") or r["data"].update(image_size=48), "model.vqgan.attn_resolutions"),
    (lambda r: r["model"].update(arch="vqgan") or r["model"]["vqgan"].update(ch=48), "model.vqgan.norm_groups"),
    (lambda r: r["model"].update(arch="ns_imagenet") or r["model"]["ns_imagenet"].update(channels=[]),
     "model.ns_imagenet.channels"),
    (lambda r: r["model"].update(arch="resnet"), "model.arch"),
])
def test_shapes_are_checked_when_params_load(tmp_path, edit, key):
    raw = copy.deepcopy(_raw())
    edit(raw)
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(path)


def test_vqgan_at_256_px_with_attention_at_16_loads():
    raw = copy.deepcopy(_raw())
    raw["model"]["arch"] = "vqgan"
    raw["data"]["image_size"] = 256
    import yaml
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert load_params(path).model.vqgan.factor == 16


def test_dvc_reads_only_the_selected_architectures_section():
    from stages.common import stage_param_keys

    raw = _raw()
    keys = stage_param_keys("pretrain", raw)
    assert {"model.arch", "model.code_dim", "model.ns_vqvae"} <= set(keys)
    assert not {"model", "model.vqgan", "model.ns_imagenet"} & set(keys)
    raw["model"]["arch"] = "vqgan"
    assert "model.vqgan" in stage_param_keys("pretrain", raw)

"""One start for every method (train_vq ``init: kmeans``), and the defaults resolved against the
papers and the reference code: DiVeQ's noise variance, SF-DiVeQ's averaging count, Gumbel's
annealing end point, FC's code dimension, TransVQ's positions, the reference residual DiVeQ."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import QuantizerParams
from pipeline.configbase import build
from pipeline.models.io import upgrade_quantizer_params
from pipeline.quantizers import build_quantizer
from pipeline.quantizers.diveq import DiVeQ, SummedResidualDiVeQ
from pipeline.quantizers.fc import FactorizedVQ
from pipeline.quantizers.gumbel import GumbelVQ
from pipeline.quantizers.registry import METHODS
from pipeline.quantizers.sf_diveq import SFDiVeQ
from pipeline.quantizers.transvq import TransVQ

K, D = 16, 8
#: the TransVQ start is the identity up to ~|c|^2 / (4 a^2) relative, a = 100 max|c| (transvq.py)
TRANSVQ_TOLERANCE = 1e-4


def _codes(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, D, generator=g) * 0.7 + 0.3      # k-means-like codes off the origin


def _quantizer(method, levels=1):
    torch.manual_seed(1)
    return build_quantizer(build(QuantizerParams, {"method": method, "codebook_size": K, "levels": levels},
                                 "quantizer"), D)


@pytest.mark.parametrize("method", list(METHODS))
def test_the_kmeans_start_gives_every_method_the_same_codebook(method):
    codes = _codes()
    q = _quantizer(method)
    q.init_codebook(codes)
    with torch.no_grad():
        if method == "fc":     # its codes live in its l2-normalized code space: the codes mapped there
            assert torch.allclose(q.raw_codebook, q.code_space(codes), atol=1e-6)
            return
        tol = TRANSVQ_TOLERANCE if method == "transvq" else 1e-6
        err = (q.codebook - codes).norm(dim=1) / codes.norm(dim=1)
        assert err.max().item() < tol, (method, err.max().item())
        # and so the first assignment is the nearest k-means code, for every method
        z = torch.randn(64, D) * 0.7 + 0.3
        q.eval()
        nearest = torch.cdist(z, codes).argmin(1)
        assert torch.equal(q(z).indices, nearest), method


def test_the_kmeans_start_of_a_residual_stack_is_its_first_level():
    codes = _codes()
    q = _quantizer("vq", levels=2)
    q.init_codebook(codes)
    assert torch.equal(q.layers[0].codebook, codes) and not torch.equal(q.layers[1].codebook, codes)


def test_simvq_kmeans_start_is_c_times_identity():
    codes = _codes()
    q = _quantizer("simvq")
    q.init_codebook(codes)
    assert torch.equal(q.frozen_codebook, codes) and torch.equal(q.transform.weight, torch.eye(D))


def test_transvq_start_needs_room_for_the_offset():
    q = TransVQ(K, D, model_dim=D + 1)
    with pytest.raises(ValueError, match="model_dim >= code_dim \\+ 2"):
        q.init_codebook(_codes())
    with pytest.raises(ValueError, match="learned_pos"):
        TransVQ(K, D, learned_pos=False).init_codebook(_codes())


def test_transvq_position_init_scale():
    torch.manual_seed(0)
    assert torch.equal(TransVQ(K, D, pos_std=0.0).transform.pos.weight, torch.zeros(K, 256))
    std = TransVQ(512, D).transform.pos.weight.std().item()
    assert std == pytest.approx(1.0, abs=0.02)            # nn.Embedding's N(0, 1), the reference's


def test_gumbel_kmeans_logits_pick_the_nearest_code():
    codes = _codes()
    q = GumbelVQ(K, D)
    q.init_codebook(codes)
    z = torch.randn(5, D)
    # l_k = 2 z.c_k - |c_k|^2 = |z|^2 - |z - c_k|^2
    expected = (z.pow(2).sum(1, keepdim=True) - torch.cdist(z, codes).pow(2))
    assert torch.allclose(q.proj(z), expected, atol=1e-4)


def test_sf_diveq_kmeans_start_skips_the_warm_up():
    codes = _codes()
    q = SFDiVeQ(K, D, skip_steps=100, avg_steps=10)
    q.init_codebook(codes)
    q.train()
    q.set_progress(0, 0.0)
    z = torch.randn(32, D)
    out = q(z)
    assert not torch.equal(out.z_q, z) and torch.equal(q.embedding.detach(), codes)


# -- defaults resolved against the papers -----------------------------------------------------
def test_diveq_noise_is_the_papers_variance():
    assert DiVeQ(K, D).sigma == pytest.approx(math.sqrt(1e-3))       # paper: variance 1e-3, std 0.0316
    assert DiVeQ(K, D, noise_var=1e-6).sigma == pytest.approx(1e-3)  # the reference code's std 1e-3
    assert SFDiVeQ(K, D, noise_var=0.04).sigma == pytest.approx(0.2)
    # an old file's std sigma becomes the variance sigma^2
    assert upgrade_quantizer_params({"method": "diveq", "diveq": {"sigma": 0.1}})["diveq"] == {
        "noise_var": pytest.approx(0.01)}


def test_gumbel_anneals_to_tau_min_at_the_last_step():
    q = GumbelVQ(K, D, tau0=1.0, tau_min=0.1)
    total = 401
    q.set_progress(0, 0.0, total)
    assert q.tau == 1.0
    q.set_progress(200, 0.0, total)
    assert q.tau == pytest.approx(math.sqrt(0.1))                   # geometric: halfway is sqrt(tau_min / tau0)
    q.set_progress(total - 1, 0.0, total)
    assert q.tau == pytest.approx(0.1)
    q.set_progress(total + 50, 0.0, total)                          # refine_gan continues at the end point
    assert q.tau == pytest.approx(0.1)


def test_sf_diveq_averages_latents_per_code_from_the_end_of_the_pool():
    torch.manual_seed(0)
    q = SFDiVeQ(2, 2, skip_steps=3, avg_steps=3, latents_per_code=2)
    batches = [torch.randn(2, 2) for _ in range(3)]
    for step, zb in enumerate(batches):
        q.set_progress(step, 0.0)
        q(zb)
    q.set_progress(3, 0.0)
    q(torch.randn(4, 2))
    # pool: 6 latents of steps 0-2; 2 per code: the last 4 (steps 1 and 2), in chunks of 2
    assert torch.allclose(q.embedding, torch.stack([batches[1].mean(0), batches[2].mean(0)]))


def test_fc_code_dim_defaults_to_the_latent_dim():
    assert FactorizedVQ(K, D).embedding.shape == (K, D)
    assert FactorizedVQ(K, D, code_dim=3).embedding.shape == (K, 3)


def test_reference_residual_diveq_is_one_diveq_on_the_summed_hard_levels():
    qp = build(QuantizerParams, {"method": "diveq", "codebook_size": 2, "levels": 2,
                                 "diveq": {"noise_var": 0.0, "residual": "sum"}}, "quantizer")
    q = build_quantizer(qp, 2)
    assert isinstance(q, SummedResidualDiVeQ)
    with torch.no_grad():
        q.layers[0].embedding.copy_(torch.tensor([[2.0, 0.0], [-2.0, 0.0]]))
        q.layers[1].embedding.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    z = torch.tensor([[1.5, 0.4]], requires_grad=True)
    out = q(z)
    # level 1: code 0 (2, 0); residual (-0.5, 0.4): level 2 code 0 (0, 1); h = (2, 1)
    assert out.indices.tolist() == [[0, 0]]
    assert torch.allclose(out.z_q, torch.tensor([[2.0, 1.0]])) and torch.equal(out.hard, torch.tensor([[2.0, 1.0]]))
    # z_q = z + |h - z| u (u constant): d z_q[0] / d h = u u[0], reaching both levels' chosen codes
    out.z_q[:, 0].sum().backward()
    u = F.normalize(torch.tensor([0.5, 0.6]), dim=0)
    for layer in q.layers:
        assert torch.allclose(layer.embedding.grad[0], u * u[0], atol=1e-6)
        assert torch.equal(layer.embedding.grad[1], torch.zeros(2))
    assert q.layers[0].usage_counts.tolist() == [1, 0] and q.layers[1].usage_counts.tolist() == [1, 0]


def test_scratch_loads_the_architecture_without_its_weights(tmp_path):
    from pipeline.models.autoencoder import VQAutoencoder
    from pipeline.models.io import load_autoencoder, save_autoencoder

    torch.manual_seed(0)
    model = VQAutoencoder(hidden_channels=8, res_channels=4, num_res_blocks=1, downsample=4, code_dim=4)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)                                          # "pretrained" weights
    save_autoencoder(tmp_path / "pretrain.pt", model)
    trained, _ = load_autoencoder(tmp_path / "pretrain.pt")
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in trained.parameters())
    torch.manual_seed(3)
    fresh, _ = load_autoencoder(tmp_path / "pretrain.pt", weights=False)
    torch.manual_seed(3)
    again, _ = load_autoencoder(tmp_path / "pretrain.pt", weights=False)
    assert fresh.config == model.config                              # the same architecture ...
    weights = [p for p in fresh.parameters() if p.dim() > 1]
    assert not any(torch.equal(p, torch.full_like(p, 0.5)) for p in weights)   # ... freshly initialised
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), again.parameters()))   # by the seed

"""Formulas of the backbone quantizers pinned on hand-checkable cases.

VQ (STE):  z_q = z + sg(q - z);  loss = ||sg(z) - q||^2 + beta ||z - sg(q)||^2   (means)
NS-VQ:     w_ik = 1 for the winner else min(1, lambda K softmax_k(-d_ik / tau))
           L = (1/N) sum_ik w_ik ||sg(z_i) - e_k||^2 / D;  modified STE z + a q + sg((1 - a) q - z)
"""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.quantizers import CodeReplacement, build_quantizer, nearest_code
from pipeline.quantizers.ns_loss import ns_search_and_loss, ns_search_stats, ns_weights
from pipeline.quantizers.nsvq import NSVQ
from pipeline.quantizers.search import nearest_code_torch
from pipeline.quantizers.vq import VQ
from tests.reference import modified_straight_through, ns_embedding_loss_dense


def test_nearest_code_chunked_equals_dense_and_bounds_memory():
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(101, 7, generator=g), torch.randn(53, 7, generator=g)
    ref = torch.cdist(z.double(), c.double()).argmin(1)
    for chunk in (1, 8, 1000):
        idx, dist = nearest_code_torch(z, c, chunk_size=chunk)
        assert torch.equal(idx, ref)
        assert torch.allclose(dist, ((z - c[idx]) ** 2).sum(1))
    # A block cap smaller than K forces one row per chunk and still gives the same answer.
    idx, _ = nearest_code_torch(z, c, max_block_elems=10)
    assert torch.equal(idx, ref)


def test_nearest_code_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        nearest_code(torch.randn(4, 3), torch.randn(5, 2))


def test_vq_forward_value_loss_and_gradients():
    q = VQ(2, 2, beta=0.25)
    with torch.no_grad():
        q.embedding.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    z = torch.tensor([[0.5, 0.0], [1.5, 1.0]], requires_grad=True)
    out = q(z)
    assert out.indices.tolist() == [0, 1]
    assert torch.equal(out.z_q, torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    # squared errors: (0.25 + 0) and (0.25 + 1) over 4 elements -> mean 0.375; total (1 + beta) * mean
    assert out.loss.item() == pytest.approx(1.25 * 0.375)
    (out.z_q.sum() + out.loss).backward()
    # STE: dz_q/dz = 1; commitment: beta * 2 (z - q) / numel
    expected_z = 1 + 0.25 * 2 * (z.detach() - torch.tensor([[0.0, 0.0], [2.0, 0.0]])) / 4
    assert torch.allclose(z.grad, expected_z)
    # codebook term: 2 (q - z) / numel, only on the chosen codes
    expected_e = 2 * (torch.tensor([[0.0, 0.0], [2.0, 0.0]]) - z.detach()) / 4
    assert torch.allclose(q.embedding.grad, expected_e)


def test_ns_weights_hand_case():
    # two codes at squared distances 0 and 2, tau 1: softmax = (1/(1+e^-2), e^-2/(1+e^-2))
    d = torch.tensor([[0.0, 2.0]])
    w = ns_weights(d, torch.tensor([0]), tau=1.0, lam=0.5)
    p1 = math.exp(-2) / (1 + math.exp(-2))
    assert w[0, 0].item() == 1.0                       # winner
    assert w[0, 1].item() == pytest.approx(0.5 * 2 * p1)  # lambda K softmax (< 1, not clamped)
    w = ns_weights(d, torch.tensor([0]), tau=1.0, lam=50.0)
    assert w[0, 1].item() == 1.0                       # clamped at 1


def test_ns_loss_hand_case_value_and_gradient():
    # one latent z = (0, 0), codes e0 = (1, 0) winner, e1 = (0, 2); D = 2, N = 1
    z = torch.zeros(1, 2)
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    tau, lam = 1.0, 0.5
    p1 = math.exp(-4) / (math.exp(-1) + math.exp(-4))
    w1 = lam * 2 * p1
    idx, _, loss = ns_search_and_loss(z, e, tau, lam, backend="torch")
    assert idx.tolist() == [0]
    assert loss.item() == pytest.approx((1.0 * 1 + w1 * 4) / 2, rel=1e-6)
    loss.backward()
    # dL/de_k = (2 / (N D)) w_k (e_k - z)
    assert torch.allclose(e.grad, torch.tensor([[1.0, 0.0], [0.0, 2.0 * w1]]), rtol=1e-5)


def test_ns_loss_chunked_equals_dense():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(67, 6, generator=g)
    e = torch.randn(29, 6, generator=g, requires_grad=True)
    for chunk in (1, 7, 100):
        _, _, l1 = ns_search_and_loss(z, e, 0.5, 0.03, chunk_size=chunk, backend="torch")
        g1, = torch.autograd.grad(l1, e)
        l2 = ns_embedding_loss_dense(z, e, 0.5, 0.03)
        g2, = torch.autograd.grad(l2, e)
        assert l1.item() == pytest.approx(l2.item(), rel=1e-6)
        assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-7)
    _, _, total, s, m = ns_search_stats(z, e.detach(), 0.5, 0.03, chunk_size=5)
    assert s.shape == (29,) and m.shape == (29, 6)


def test_ns_search_and_loss_is_search_plus_loss_in_one_pass():
    """NSVQ's fused entry point: the nearest_code_torch result bit for bit (same scores, same
    chunks) and the NS loss / gradient for those winners, from one sweep over the scores."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(53, 5, generator=g, requires_grad=True)
    e = torch.randn(31, 5, generator=g, requires_grad=True)
    for chunk in (1, 8, 100):
        idx, dist, loss = ns_search_and_loss(z, e, 0.4, 0.05, chunk_size=chunk, backend="torch")
        ridx, rdist = nearest_code_torch(z.detach(), e.detach(), chunk_size=chunk)
        assert torch.equal(idx, ridx) and torch.equal(dist, rdist)
        ge, = torch.autograd.grad(loss, e)
        ref = ns_embedding_loss_dense(z, e, 0.4, 0.05)
        gr, = torch.autograd.grad(ref, e)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        assert torch.allclose(ge, gr, rtol=1e-5, atol=1e-7)
    assert z.grad is None   # sg(z): the embedding loss never reaches the encoder
    with pytest.raises(ValueError, match="ns_search_and_loss"):
        ns_search_and_loss(z, e[:, :4], 0.4, 0.05, backend="torch")


def test_ns_loss_moves_non_selected_codes():
    z = torch.randn(32, 4)
    e = torch.randn(16, 4, requires_grad=True)
    with torch.no_grad():
        e[3] += 0.01  # make sure at least one code is a loser
    idx, _, loss = ns_search_and_loss(z, e, 1.0, 0.01, backend="torch")
    loss.backward()
    unused = torch.ones(16, dtype=torch.bool)
    unused[idx] = False
    assert unused.any()
    assert (e.grad[unused].abs().sum(1) > 0).all()   # the plain VQ loss would leave these at 0


def test_modified_ste_value_and_gradients():
    z = torch.tensor([[0.3, -0.2]], requires_grad=True)
    q = torch.tensor([[1.0, 1.0]], requires_grad=True)
    a = 0.25
    zq = modified_straight_through(z, q, a)
    assert torch.allclose(zq, q.detach())
    zq.backward(torch.tensor([[2.0, -4.0]]))
    assert torch.allclose(z.grad, torch.tensor([[2.0, -4.0]]))
    assert torch.allclose(q.grad, a * torch.tensor([[2.0, -4.0]]))


def test_nsvq_quantizer_end_to_end_and_tau_schedule():
    q = NSVQ(8, 3, lam=0.01, tau0=1.0, tau_decay=0.5, alpha=1.0)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 4, 4)
    assert torch.allclose(out.z_q, q.lookup(out.indices).permute(0, 3, 1, 2), atol=1e-6)
    out.z_q.sum().backward()
    # the decoder gradient reaches the chosen codes scaled by a = 2 alpha / numel(z)
    a = 2.0 / z.numel()
    counts = torch.bincount(out.indices.reshape(-1), minlength=8).float()
    assert torch.allclose(q.embedding.grad, a * counts[:, None].expand(8, 3), atol=1e-7)
    q.set_progress(step=10, epoch=2.7)
    assert q.tau == pytest.approx(0.25)
    assert set(out.stats) >= {"usage", "perplexity", "distortion"}


def test_build_quantizer_from_params():
    from pipeline.config import QuantizerParams
    from pipeline.configbase import build

    qp = build(QuantizerParams, {"method": "nsvq", "codebook_size": 16, "nsvq": {"lam": 0.02}}, "quantizer")
    q = build_quantizer(qp, 5)
    assert isinstance(q, NSVQ) and q.options.lam == 0.02 and q.codebook.shape == (16, 5)
    assert isinstance(build_quantizer(build(QuantizerParams, {"method": "vq"}), 5), VQ)


def test_importance_replacement_reseeds_only_dead_codes():
    torch.manual_seed(0)
    q = VQ(6, 2)
    with torch.no_grad():
        q.embedding.copy_(torch.arange(12.0).reshape(6, 2))
    q.usage_counts.copy_(torch.tensor([5.0, 0.0, 3.0, 0.0, 0.0, 1.0]))
    before = q.embedding.detach().clone()
    rep = CodeReplacement("importance", period=10, threshold=1.0, perturb=0.0)
    assert rep(q, 5) is None                      # not due
    n = rep(q, 10)
    assert n.item() == 3
    alive = torch.tensor([0, 2, 5])
    assert torch.equal(q.embedding[alive], before[alive])
    for k in (1, 3, 4):   # dead codes now copy a used code (perturb 0)
        assert any(torch.equal(q.embedding[k], before[j]) for j in alive)
    assert q.usage_counts.sum().item() == 0       # counts reset for the next round


@pytest.mark.parametrize("w_cb, beta, a", [(1.0, 0.25, 0.0), (0.0, 0.25, 0.01), (0.5, 1.0, 0.3)])
def test_table_lookup_equals_composed_ops(w_cb, beta, a):
    """The fused node equals gather + MSE terms + (modified) STE, values and gradients."""
    from pipeline.quantizers.table_lookup import table_lookup

    g = torch.Generator().manual_seed(7)
    z0, e0 = torch.randn(40, 5, generator=g), torch.randn(9, 5, generator=g)
    gz = torch.randn(40, 5, generator=g)
    idx, dist = nearest_code_torch(z0, e0)

    z1, e1 = z0.clone().requires_grad_(), e0.clone().requires_grad_()
    zq1, loss1 = table_lookup(z1, e1, idx, dist, codebook_weight=w_cb, beta=beta, ste_scale=a)
    ((zq1 * gz).sum() + 3.0 * loss1).backward()

    z2, e2 = z0.clone().requires_grad_(), e0.clone().requires_grad_()
    q = e2[idx]
    loss2 = w_cb * (q - z2.detach()).pow(2).mean() + beta * (z2 - q.detach()).pow(2).mean()
    zq2 = modified_straight_through(z2, q, a)
    ((zq2 * gz).sum() + 3.0 * loss2).backward()

    assert torch.allclose(zq1, zq2, atol=1e-6) and loss1.item() == pytest.approx(loss2.item(), rel=1e-5)
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)
    assert torch.allclose(e1.grad, e2.grad, atol=1e-6)

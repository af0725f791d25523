"""The transformer prior: causal masking, learning a known pattern, sampling, resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import PriorParams
from pipeline.configbase import build
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.prior.model import TokenPrior, grid_to_sequence, load_prior, sample_logits, save_prior, \
    sequence_to_grid
from pipeline.prior.training import WarmupCosine, build_prior, nll_bits_per_token, sample_images, \
    token_entropy_bits, train_prior
from pipeline.training.setup import RunOptions

K = 8


def _pattern(n: int, seq_len: int = 16, seed: int = 0) -> np.ndarray:
    """s_0 uniform in [0, K), then s_i = (s_0 + i) mod K: only the first token is uncertain."""
    start = np.random.default_rng(seed).integers(0, K, n)
    return (start[:, None] + np.arange(seq_len)[None]) % K


def _params(**over) -> PriorParams:
    base = {"steps": 200, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0, "layers": 2, "heads": 2, "width": 32,
            "dropout": 0.0, "warmup_steps": 20, "log_every": 50, "checkpoint_every": 50, "num_samples": 4}
    return build(PriorParams, {**base, **over})


def _run(path=None, fp="x", stop_after=None) -> RunOptions:
    return RunOptions(path, fp, "cpu", progress=False, stop_after=stop_after)


def test_causal_mask_change_at_t_leaves_logits_up_to_t():
    torch.manual_seed(0)
    prior = TokenPrior(K, 12, width=32, layers=2, heads=4, dropout=0.0).eval()
    seq = torch.randint(0, K, (3, 12))
    base = prior(seq)
    for t in (0, 5, 11):
        changed = seq.clone()
        changed[:, t] = (changed[:, t] + 1) % K
        out = prior(changed)
        # logits[:, i] predicts s_i from s_<i: positions <= t do not see s_t ...
        assert torch.equal(out[:, :t + 1], base[:, :t + 1]), t
        # ... and the next one does.
        if t + 1 < 12:
            assert not torch.allclose(out[:, t + 1], base[:, t + 1]), t
    # A prefix gives the same logits as the full sequence on its positions.
    assert torch.allclose(prior(seq[:, :5]), base[:, :5], atol=1e-6)


def test_learns_a_deterministic_pattern():
    seq = _pattern(512)
    pp = _params()
    prior = build_prior(pp, K, seq.shape[1])
    val = _pattern(128, seed=1)
    assert nll_bits_per_token(prior, val) == pytest.approx(3.0, abs=0.1)   # untrained: ~log2(8)
    result = train_prior(prior, seq, pp, _run())
    assert result.history[-1]["bits_per_token"] < result.history[0]["bits_per_token"]
    # Everything after the first token is determined: the conditional NLL falls close to 0,
    # and the first token costs its entropy, log2(8) = 3 bits.
    with torch.no_grad():
        logits = prior(torch.as_tensor(val))
        nll = F.cross_entropy(logits.transpose(1, 2), torch.as_tensor(val), reduction="none").mean(0) / math.log(2)
    assert nll[1:].max().item() < 0.05, nll
    assert nll[0].item() == pytest.approx(3.0, abs=0.1)
    assert nll_bits_per_token(prior, val) == pytest.approx(nll.mean().item(), rel=1e-4)
    # Samples follow the pattern (a temperature below 1 sharpens the ~0.5% leftover error away).
    samples = prior.sample(16, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, (samples[:, :1] + torch.arange(16)) % K)


def test_residual_levels_are_consecutive_and_learnable():
    # (N, h, w, L) grids with L = 2: level 1 is a function of level 0 at the same position.
    rng = np.random.default_rng(0)
    lvl0 = rng.integers(0, K, (256, 2, 2))
    grids = np.stack([lvl0, (lvl0 * 3 + 1) % K], axis=-1)
    seq = grid_to_sequence(torch.as_tensor(grids))
    assert seq.shape == (256, 8) and torch.equal(seq[:, 1], torch.as_tensor((lvl0[:, 0, 0] * 3 + 1) % K))
    assert torch.equal(sequence_to_grid(seq, (2, 2), 2), torch.as_tensor(grids))
    pp = _params(steps=150)
    prior = build_prior(pp, K, 8, levels=2)
    train_prior(prior, seq.numpy(), pp, _run())
    with torch.no_grad():
        nll = F.cross_entropy(prior(seq).transpose(1, 2), seq, reduction="none").mean(0) / math.log(2)
    assert nll[1::2].max().item() < 0.1, nll          # level-1 codes are determined


def test_sampling_respects_top_k_and_temperature():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    draws = sample_logits(logits, top_k=2, generator=g)
    assert set(draws.tolist()) == {2, 3}
    assert set(sample_logits(logits, top_k=1, generator=g).tolist()) == {3}
    assert len(set(sample_logits(logits, top_k=0, generator=g).tolist())) == 5
    # A low temperature concentrates the draws on the argmax.
    torch.manual_seed(0)
    prior = TokenPrior(K, 6, width=16, layers=1, heads=2, dropout=0.0).eval()
    with torch.no_grad():
        prior.head.weight.normal_(0, 1.0)
    cold = prior.sample(64, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    greedy = torch.zeros(1, 6, dtype=torch.long)
    for i in range(6):
        greedy[0, i] = prior(greedy[:, :i + 1])[0, -1].argmax()
    assert torch.equal(cold, greedy.expand(64, 6))
    top2 = prior.sample(64, top_k=2, generator=torch.Generator().manual_seed(1))
    for i in range(6):
        allowed = torch.topk(prior(top2[:, :i + 1])[:, -1], 2).indices
        assert (allowed == top2[:, i:i + 1]).any(1).all()
    # Same seed, same samples.
    assert torch.equal(prior.sample(8, generator=torch.Generator().manual_seed(3)),
                       prior.sample(8, generator=torch.Generator().manual_seed(3)))


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_resume_equals_uninterrupted(tmp_path):
    seq = _pattern(64, seq_len=8)
    pp = _params(steps=40, log_every=5, checkpoint_every=10, dropout=0.1)

    def run(path, stop_after=None):
        prior = build_prior(pp, K, 8)
        return prior, train_prior(prior, seq, pp, _run(path, stop_after=stop_after))

    ref_prior, ref = run(tmp_path / "a.pt")
    _, part = run(tmp_path / "b.pt", stop_after=17)
    assert part.steps == 17 and (tmp_path / "b.pt").exists()
    prior, res = run(tmp_path / "b.pt")
    assert res.resumed_from == 17 and res.history == ref.history       # lr schedule included
    for (k, a), b in zip(ref_prior.state_dict().items(), prior.state_dict().values()):
        assert torch.equal(a, b), k


def test_token_entropy_and_sample_images_and_save_load(tmp_path):
    assert token_entropy_bits(np.array([[[0, 1], [2, 3]]]), 4) == pytest.approx(2.0)
    assert token_entropy_bits(np.zeros((2, 2, 2), np.int64), 4) == 0.0
    # residual: mean of the per-level entropies (1 bit and 0 bits)
    assert token_entropy_bits(np.array([[[[0, 5], [1, 5]]]]), 8) == pytest.approx(0.5)

    from pipeline.quantizers.vq import VQ

    torch.manual_seed(0)
    tok = VQAutoencoder(hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=4, code_dim=4,
                        quantizer=VQ(K, 4)).eval()
    prior = TokenPrior(K, 4, width=16, layers=1, heads=2, dropout=0.0).eval()
    tokens, images = sample_images(prior, tok, 5, (2, 2), seed=0, batch_size=2)
    assert tokens.shape == (5, 2, 2) and images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    again, _ = sample_images(prior, tok, 5, (2, 2), seed=0, batch_size=2)
    assert np.array_equal(tokens, again)

    # A residual tokenizer (levels 2): samples come back as (n, h, w, L) grids and decode.
    from pipeline.quantizers.residual import ResidualVQ

    rtok = VQAutoencoder(hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=4, code_dim=4,
                         quantizer=ResidualVQ([VQ(K, 4), VQ(K, 4)])).eval()
    rprior = TokenPrior(K, 8, levels=2, width=16, layers=1, heads=2, dropout=0.0).eval()
    rtokens, rimages = sample_images(rprior, rtok, 3, (2, 2), seed=0)
    assert rtokens.shape == (3, 2, 2, 2) and rimages.shape == (3, 8, 8, 3)

    save_prior(tmp_path / "p.pt", prior, meta={"a": 1})
    loaded, blob = load_prior(tmp_path / "p.pt")
    assert blob["meta"] == {"a": 1}
    seq = torch.randint(0, K, (2, 4))
    assert torch.equal(loaded(seq), prior(seq))
    save_prior(tmp_path / "none.pt", None, meta={"skipped": "steps 0"})
    assert load_prior(tmp_path / "none.pt")[0] is None


def test_params_validation():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="width: 30 must be divisible by heads"):
        build(PriorParams, {"width": 30, "heads": 4}, "train_prior")
    with pytest.raises(ConfigError, match="num_samples"):
        build(PriorParams, {"num_samples": 1}, "train_prior")
    assert build(PriorParams, {"steps": 0}).steps == 0

"""Codebook usage on the training set (pipeline/evaluation/usage.py): the counts on hand cases,
every token of the sample counted, the per-epoch figure of train_vq and its exact resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import QuantizerParams, TrainVQParams
from pipeline.configbase import build
from pipeline.evaluation.usage import EpochUsage, token_usage, training_set_usage
from pipeline.models.autoencoder import VQAutoencoder
from pipeline.models.inference import encode_tokens
from pipeline.quantizers import build_quantizer
from pipeline.quantizers.replacement import CodeReplacement
from pipeline.training.setup import RunOptions
from pipeline.vq_training import train_vq


def test_token_usage_on_a_hand_case():
    # 6 tokens of K = 4: code 0 twice, 1 once, 2 three times, 3 never
    tokens = np.array([[[0, 0, 1]], [[2, 2, 2]]])            # (N=2, h=1, w=3)
    u = token_usage(tokens, 4)
    p = np.array([2, 1, 3]) / 6
    assert u == {"codebook_usage": 0.75, "perplexity": pytest.approx(math.exp(-(p * np.log(p)).sum())),
                 "dead_codes": 1, "usage_tokens": 6}
    # residual tokens (N, h, w, L): usage and perplexity are the means over levels, dead codes their sum
    res = np.stack([tokens, np.zeros_like(tokens)], axis=-1)   # level 2 uses code 0 only
    r = token_usage(res, 4)
    assert r["codebook_usage"] == pytest.approx((0.75 + 0.25) / 2) and r["dead_codes"] == 1 + 3
    assert r["perplexity"] == pytest.approx((u["perplexity"] + 1.0) / 2) and r["usage_tokens"] == 6
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        token_usage(np.array([[[4]]]), 4)


def test_epoch_usage_counts_every_token_of_the_epoch_and_resets():
    eu = EpochUsage(4, 1, "cpu")
    eu.add(torch.tensor([[[0, 1]]]))
    eu.add(torch.tensor([[[1, 1]]]))
    saved = eu.state_dict()
    out = eu.take()          # counts 1, 3, 0, 0
    p = np.array([1, 3]) / 4
    assert out["epoch_usage"].item() == 0.5 and out["epoch_dead_codes"].item() == 2
    assert out["epoch_perplexity"].item() == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert eu.take()["epoch_usage"].item() == 0.0           # a new epoch starts from zero counts
    eu.load_state_dict(saved)
    assert eu.take()["epoch_usage"].item() == 0.5
    levels = EpochUsage(4, 2, "cpu")
    levels.add(torch.tensor([[[[0, 3], [1, 3]]]]))          # (B, h, w, L)
    assert levels.take()["epoch_usage"].item() == pytest.approx((0.5 + 0.25) / 2)


def _model(k=8):
    torch.manual_seed(0)
    qp = build(QuantizerParams, {"method": "vq", "codebook_size": k}, "quantizer")
    return VQAutoencoder(hidden_channels=8, res_channels=4, num_res_blocks=1, downsample=4, code_dim=4,
                         quantizer=build_quantizer(qp, 4)), qp


def test_training_set_usage_counts_every_token_of_the_sample():
    model, _ = _model()
    images = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    tokens = encode_tokens(model, images, "cpu", 4)
    whole = training_set_usage(model, images, device="cpu", batch_size=3, chunk=2)
    assert whole == token_usage(tokens, 8) and whole["usage_tokens"] == 7 * 4 * 4
    first = training_set_usage(model, images, device="cpu", limit=3)
    assert first == token_usage(tokens[:3], 8) and first["usage_tokens"] == 3 * 16


def test_train_vq_logs_the_usage_of_every_epoch_and_resumes_it(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    tp = build(TrainVQParams, {"track_steps": 4, "freeze_steps": 2, "batch_size": 4, "steps_per_epoch": 2,
                               "log_every": 1, "checkpoint_every": 3}, "train_vq")

    def run(path, stop_after=None):
        model, qp = _model()
        return train_vq(model, images, tp, CodeReplacement.from_params(qp.replacement),
                        RunOptions(path, "fp", "cpu", progress=False, stop_after=stop_after))

    full = run(tmp_path / "a.pt")
    epochs = {h["step"]: h for h in full.history if "epoch_usage" in h}
    assert list(epochs) == [2, 4, 6]                          # each epoch's last step
    for h in epochs.values():
        # 2 steps x 4 images x 16 tokens = 128 tokens of K = 8 codes
        assert 0 < h["epoch_usage"] <= 1 and h["epoch_dead_codes"] == round(8 * (1 - h["epoch_usage"]))
        assert 1 <= h["epoch_perplexity"] <= 8
    run(tmp_path / "b.pt", stop_after=3)                     # interrupted mid-epoch 2 (checkpoint at step 3)
    resumed = run(tmp_path / "b.pt")
    assert [{k: v for k, v in h.items() if k.startswith("epoch_")} for h in resumed.history] == \
           [{k: v for k, v in h.items() if k.startswith("epoch_")} for h in full.history]
